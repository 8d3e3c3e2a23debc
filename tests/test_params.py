"""bgwork.params: YAML / dict / -p overrides -> typed Params, and one clear message for each kind of mistake."""

from pathlib import Path

import pytest

from bgwork.config import EnvParams, Params
from bgwork.params import ParamsError, apply_override, dump_yaml, load_params, read_yaml


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
    ("env:\n  max_sessions: 100\n", r"p.yaml: env.max_sessions = 100 is not allowed: expected an integer in \[1, 64\]"),
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


def test_debug_yaml_spells_out_the_defaults_the_main_job_runs_on():
    assert load_params(Path(__file__).resolve().parents[1] / "params/debug.yaml") == Params()


def test_embedded_server_defaults_are_the_servers_own():
    from envserver.session import SessionSettings

    from envserver import __main__ as cli

    env, server = EnvParams(), SessionSettings()
    assert (env.pre_observation_delay, env.action_timeout_ms) == (server.pre_observation_delay, server.action_timeout_ms)
    # the CLI writes them out so that a replay server never imports the browser stack
    assert (cli.PRE_OBSERVATION_DELAY, cli.CALL_TIMEOUT, cli.ACTION_TIMEOUT_MS) == (
        server.pre_observation_delay, server.call_timeout, server.action_timeout_ms)
