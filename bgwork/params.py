"""Params files -> the typed `bgwork.config.Params`, validated before any heavy work.

    params = load_params("params/smoke.yaml", overrides=["train.learning_rate=1e-6"])
    params = load_params(env=env, smoke=smoke)   # in a notebook: the sections papermill injected

Any problem raises ParamsError with ONE message naming where (file or -p), the key, the value and what is allowed.
The values and their rules are checked by the config types themselves (bgwork.config); this module reads
YAML, merges layers, finds unknown keys ("did you mean") and says where a mistake came from.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from bgwork.config import ConfigError, Params, check_value, is_union


class ParamsError(ValueError):
    """A params file or override that does not fit bgwork.config; the message starts with where it came from."""


def load_params(source: str | Path | dict | None = None, overrides=(), **sections) -> Params:
    """Defaults <- source (a YAML file or a dict) <- sections (keyword dicts) <- overrides ("a.b=value").

    The layers are merged first and checked once, so overrides may change values that only fit together
    (e.g. train.num_generations and train.per_device_train_batch_size)."""
    where = str(source) if isinstance(source, (str, Path)) else "parameters"
    raw = read_yaml(source) if isinstance(source, (str, Path)) else copy.deepcopy(source or {})
    _merge(raw, copy.deepcopy({k: v for k, v in sections.items() if v is not None}))
    for item in overrides:
        _set_override(raw, item)
    if overrides:
        where += " with " + " ".join(f"-p {item}" for item in overrides)
    return _build(Params, raw, where, "")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top, got {type(data).__name__}")
    return data


def apply_override(params: Params, item: str) -> Params:
    """`params` with one `key.sub=value` override applied (see `_set_override`)."""
    raw = to_dict(params)
    _set_override(raw, item)
    return _build(Params, raw, f"-p {item}", "")


def _set_override(raw: dict, item: str) -> None:
    """Write `key.sub=value` into the raw dict; the value is read as YAML (numbers, true/false, null, [a, b])
    unless the field is a string, and checked against its field at once, so a mistake names its -p."""
    where = f"-p {item}"
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"{where}: expected KEY=VALUE, e.g. -p train.learning_rate=1e-6")
    path = key.strip().split(".")
    tp, meta = _field(Params, path, where)
    value = text if _is_plain_str(tp) and text not in ("null", "~") else _yaml_scalar(text, where)
    if not dataclasses.is_dataclass(tp):
        try:
            value = check_value(value, tp, meta, key.strip())
        except ConfigError as e:
            raise ParamsError(f"{where}: {e}") from None
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return  # the source's own mistake at this key is reported when the whole is checked
    node[path[-1]] = value


def to_dict(params) -> dict:
    return dataclasses.asdict(params)


def dump_yaml(params, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(params), sort_keys=False))


# --- validation -------------------------------------------------------------------------------------------------

def _build(cls, raw: Any, where: str, prefix: str):
    if dataclasses.is_dataclass(raw):
        raw = dataclasses.asdict(raw)
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: {prefix.rstrip('.') or 'the top level'} = {raw!r}: expected a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            raise ParamsError(f"{where}: unknown key '{prefix}{key}'{hint}; allowed keys: {', '.join(fields)}")
    values = {name: _build(hints[name], value, where, f"{prefix}{name}.") if dataclasses.is_dataclass(hints[name])
              else value for name, value in raw.items()}
    try:
        return cls(**values)  # the config type checks its values and their rules (bgwork.config)
    except ConfigError as e:
        raise ParamsError(f"{where}: {e}") from None


def _is_plain_str(tp) -> bool:
    return tp is str or (is_union(tp) and str in typing.get_args(tp))


def _field(cls, path: list[str], where: str):
    """(type, metadata) of the field at `path` below `cls`, or ParamsError naming the unknown key."""
    tp, meta = cls, {}
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            raise ParamsError(f"{where}: '{'.'.join(path[:i])}' has no sub-keys")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            near = difflib.get_close_matches(part, hints, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            key = ".".join(path[:i + 1])
            raise ParamsError(f"{where}: unknown key '{key}'{hint}; allowed keys: {', '.join(hints)}")
        meta = next(f.metadata for f in dataclasses.fields(tp) if f.name == part)
        tp = hints[part]
    return tp, meta


def _yaml_scalar(text: str, where: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{where}: the value is not valid YAML ({getattr(e, 'problem', e)})") from None


def _merge(base: dict, extra: dict) -> None:
    """Deep-merge `extra` into `base`, so a section dict may set only some of its keys."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
