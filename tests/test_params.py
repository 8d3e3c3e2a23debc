"""bgwork.params: YAML / dict / -p overrides -> typed Params, and one clear message for each kind of mistake;
bgwork.config: a Params that exists is valid."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bgwork.config import ConfigError, EnvParams, Params, RolloutParams, TrainParams
from bgwork.params import ParamsError, apply_override, dump_yaml, load_params, read_yaml

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_defaults_file_and_overrides_layer_in_order(tmp_path):
    path = write(tmp_path, "name: mine\nenv:\n  max_sessions: 2\nsmoke:\n  tasks: [click-test]\n")
    p = load_params(path, overrides=["env.max_sessions=3", "smoke.tasks=[a, b]", "env.request_timeout=1e3"])
    assert isinstance(p, Params)
    assert (p.name, p.env.max_sessions, p.smoke.tasks) == ("mine", 3, ["a", "b"])
    assert p.env.request_timeout == 1000.0  # "1e3" is a string to YAML 1.1; float fields accept it
    assert p.env.pre_observation_delay == Params().env.pre_observation_delay  # untouched keys keep defaults


def test_notebook_sections_validate_like_a_file():
    p = load_params(name="nb", env={"max_sessions": 1}, smoke={"seed": 3})
    assert (p.name, p.env.max_sessions, p.smoke.seed) == ("nb", 1, 3)
    with pytest.raises(ParamsError, match=r"parameters: unknown key 'smoke.sed' \(did you mean 'smoke.seed'\?\)"):
        load_params(smoke={"sed": 3})


@pytest.mark.parametrize("text, expected", [
    ("env:\n  max_sesions: 2\n", r"p.yaml: unknown key 'env.max_sesions' \(did you mean 'env.max_sessions'\?\); "
                                 r"allowed keys: url, token, max_sessions"),
    ("env:\n  max_sessions: 2000\n",
     r"p.yaml: env.max_sessions = 2000 is not allowed: expected an integer in \[1, 1024\]"),
    ("env:\n  max_sessions: two\n", r"env.max_sessions = 'two' is not allowed: expected an integer"),
    ("env:\n  url: 5\n", r"env.url = 5 is not allowed: expected a string or null"),
    ("smoke:\n  tasks: click-test\n", r"smoke.tasks = 'click-test' is not allowed: expected a list"),
    ("smoke:\n  tasks: [a, 3]\n", r"smoke.tasks\[1\] = 3 is not allowed: expected a string"),
    ("seed: true\n", r"seed = True is not allowed: expected an integer >= 0"),
    ("env: 3\n", r"env = 3: expected a mapping"),
    ("- a\n- b\n", r"p.yaml: expected a mapping of sections"),
    ("env: [\n", r"p.yaml: not valid YAML"),
])
def test_bad_file_names_file_key_value_and_what_is_allowed(tmp_path, text, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("item, expected", [
    ("env.max_sessions", r"-p env.max_sessions: expected KEY=VALUE"),
    ("env.nope=1", r"-p env.nope=1: unknown key 'env.nope'"),
    ("name.sub=1", r"'name' has no sub-keys"),
    ("smoke.seed=-1", r"-p smoke.seed=-1: smoke.seed = -1 is not allowed: expected an integer >= 0"),
    ("smoke.tasks=[a", r"not valid YAML"),
    ("env.request_timeout=fast", r"env.request_timeout = 'fast' is not allowed: expected a number >= 1.0"),
])
def test_bad_override(item, expected):
    with pytest.raises(ParamsError, match=expected):
        apply_override(Params(), item)


def test_string_fields_keep_override_text_verbatim():
    p = load_params(overrides=["name=123", "env.url=http://h:1", "env.token=null"])
    assert (p.name, p.env.url, p.env.token) == ("123", "http://h:1", None)


def test_resolved_yaml_round_trips(tmp_path):
    p = load_params(overrides=["smoke.tasks=[x]", "env.max_sessions=2"])
    dump_yaml(p, tmp_path / "params.yaml")
    assert load_params(tmp_path / "params.yaml") == p
    assert read_yaml(tmp_path / "params.yaml")["smoke"]["tasks"] == ["x"]


@pytest.mark.parametrize("sections, message", [
    ({"rollout": {"train_seeds": [0, 100], "eval_seeds": [50, 200]}}, r"rollout.train_seeds \[0, 100\] and "
                                                                      r"rollout.eval_seeds \[50, 200\] overlap"),
    ({"rollout": {"train_seeds": [10, 5]}}, r"rollout.train_seeds = \[10, 5\] is not allowed"),
    ({"rollout": {"tasks": []}}, "rollout.tasks is empty"),
    ({"rollout": {"task_weights": [0]}}, "rollout.task_weights = .* weight > 0"),
    ({"rollout": {"tasks": ["click-test", "click-button"], "task_weights": [1]}}, "one weight"),
    ({"rollout": {"tasks": ["click-test", "click-test"]}}, "listed twice"),
    ({"train": {"num_generations": 3, "per_device_train_batch_size": 4}}, "train.generation_batch_size = 4 must be "
                                                                          "a multiple of train.num_generations = 3"),
    ({"train": {"max_completion_length": 8}, "rollout": {"max_action_tokens": 32}},
     "max_completion_length = 8 leaves no room"),
    ({"evaluation": {"episodes_per_task": 20}, "rollout": {"eval_seeds": [2_000_000, 2_000_010]}},
     "exceeds the 10 seeds"),
])
def test_values_that_do_not_fit_together_fail_on_load_naming_the_keys(sections, message):
    with pytest.raises(ParamsError, match="^parameters: .*" + message):
        load_params(**sections)


def test_a_params_that_exists_is_valid():
    """Built directly, without bgwork.params, the config types still refuse bad values and combinations."""
    with pytest.raises(ConfigError, match=r"env.max_sessions = 0 is not allowed: expected an integer in \[1, 1024\]"):
        EnvParams(max_sessions=0)
    with pytest.raises(ConfigError, match="rollout.tasks is empty"):
        RolloutParams(tasks=[])
    with pytest.raises(ConfigError, match="multiple of train.num_generations"):
        dataclasses.replace(TrainParams(), num_generations=3)
    with pytest.raises(ConfigError, match="leaves no room"):
        Params(train=TrainParams(max_completion_length=8), rollout=RolloutParams(max_action_tokens=16))
    assert TrainParams(learning_rate="1e-6").learning_rate == 1e-6  # values are normalised as YAML gives them


def test_overrides_are_checked_together_so_they_may_change_values_that_only_fit_together():
    p = load_params(overrides=["train.num_generations=3", "train.per_device_train_batch_size=6"])
    assert (p.train.num_generations, p.train.per_device_train_batch_size) == (3, 6)
    with pytest.raises(ParamsError, match="parameters with -p train.num_generations=3: .*multiple of"):
        load_params(overrides=["train.num_generations=3"])


def test_the_defaults_are_written_once_and_printed_by_bgwork_params(tmp_path):
    """No params file restates the defaults: `bgwork params` prints them, and they load back unchanged."""
    out = subprocess.run([sys.executable, "-m", "bgwork", "params"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (tmp_path / "defaults.yaml").write_text(out.stdout)
    assert load_params(tmp_path / "defaults.yaml") == Params()
    for path in (ROOT / "params").glob("*.yaml"):
        assert yaml.safe_load(path.read_text()) != dataclasses.asdict(Params()), f"{path} only repeats the defaults"


def test_embedded_server_defaults_are_the_servers_own():
    from envserver import __main__ as cli
    from envserver.session import SessionSettings

    env, server = EnvParams(), SessionSettings()
    assert (env.pre_observation_delay, env.action_timeout_ms) == (server.pre_observation_delay,
                                                                  server.action_timeout_ms)
    # the CLI writes them out so that a replay server never imports the browser stack
    assert (cli.PRE_OBSERVATION_DELAY, cli.CALL_TIMEOUT, cli.ACTION_TIMEOUT_MS) == (
        server.pre_observation_delay, server.call_timeout, server.action_timeout_ms)
    defaults = cli.parse_args([])
    assert (env.step_deadline_s, env.evict_idle_s) == (defaults.step_deadline_s, defaults.evict_idle_s)
