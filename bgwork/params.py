"""Params files -> the typed `bgwork.config.Params`, validated before any heavy work.

    params = load_params("params/smoke.yaml", overrides=["train.learning_rate=1e-6"])
    params = load_params(env=env, smoke=smoke)   # in a notebook: the sections papermill injected

Any problem raises ParamsError with ONE message naming where (file or -p), the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from bgwork.config import Params


class ParamsError(ValueError):
    """A params file or override that does not fit bgwork.config."""


def load_params(source: str | Path | dict | None = None, overrides=(), **sections) -> Params:
    """Defaults <- source (a YAML file or a dict) <- sections (keyword dicts) <- overrides ("a.b=value")."""
    where = str(source) if isinstance(source, (str, Path)) else "parameters"
    raw = read_yaml(source) if isinstance(source, (str, Path)) else copy.deepcopy(source or {})
    _merge(raw, copy.deepcopy({k: v for k, v in sections.items() if v is not None}))
    params = _build(Params, raw, where, "")
    for item in overrides:
        params = apply_override(params, item)
    return params


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
    """`key.sub=value`; the value is read as YAML (numbers, true/false, null, [a, b]) unless the field is a string."""
    where = f"-p {item}"
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"{where}: expected KEY=VALUE, e.g. -p train.learning_rate=1e-6")
    path = key.strip().split(".")
    tp = _field_type(Params, path, where)
    value = text if _is_plain_str(tp) and text not in ("null", "~") else _yaml_scalar(text, where)
    raw = to_dict(params)
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return _build(Params, raw, where, "")


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
    values = {}
    for name, value in raw.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, value, where, key + ".")
        else:
            values[name] = _check(value, tp, fields[name].metadata, where, key)
    return cls(**values)


def _check(value, tp, meta, where, key):
    """The value converted to `tp`, or ParamsError saying what is allowed."""
    def fail(allowed):
        raise ParamsError(f"{where}: {key} = {value!r} is not allowed: expected {allowed}")

    args = typing.get_args(tp)
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _check(value, inner, meta, where, key)
        except ParamsError:
            fail(f"{_describe(inner, meta)} or null")
    if typing.get_origin(tp) is Literal:
        return value if value in args else fail("one of " + ", ".join(map(repr, args)))
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            fail(f"a list, e.g. [a, b], whose items are each {_describe(args[0], {})}")
        return [_check(v, args[0], {}, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        return value if isinstance(value, bool) else fail("true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(_describe(tp, meta))
    elif tp is float:
        # YAML 1.1 reads `1e-6` (no dot) as a string: accept any text float() reads as a finite number.
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not math.isfinite(number):
            fail(_describe(tp, meta))
        value = number
    elif tp is str:
        return value if isinstance(value, str) else fail("a string (quote it in YAML)")
    elif tp is dict:
        return value if isinstance(value, dict) else fail("a mapping")
    if ("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"]):
        fail(_describe(tp, meta))
    return value


def _describe(tp, meta) -> str:
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{name} in [{lo}, {hi}]"
    if lo is not None:
        return f"{name} >= {lo}"
    if hi is not None:
        return f"{name} <= {hi}"
    return name


def _is_union(tp) -> bool:
    return isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union


def _is_plain_str(tp) -> bool:
    return tp is str or (_is_union(tp) and str in typing.get_args(tp))


def _field_type(cls, path: list[str], where: str):
    tp = cls
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            raise ParamsError(f"{where}: '{'.'.join(path[:i])}' has no sub-keys")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            near = difflib.get_close_matches(part, hints, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            key = ".".join(path[:i + 1])
            raise ParamsError(f"{where}: unknown key '{key}'{hint}; allowed keys: {', '.join(hints)}")
        tp = hints[part]
    return tp


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
