"""Strict dataclass <-> dict conversion for recipes.

Every recipe section is a plain dataclass owned by the module that uses it
(e.g. `ovss_cli.decoder.config.DecoderConfig`). This module turns nested dicts
(parsed YAML) into those dataclasses, rejecting unknown keys with a close-match
suggestion and values of the wrong type, and turns them back into dicts for saving.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from ovss_cli.errors import UsageError
from ovss_cli.textutil import did_you_mean


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, converting ints to floats and lists to tuples."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except UsageError as err:
                errors.append(err)
        raise errors[0] if len(errors) == 1 else UsageError(
            f"{where}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}"
        )
    if origin is Literal:
        if value not in get_args(tp):
            hint = did_you_mean(value, get_args(tp))
            raise UsageError(f"{where}: {value!r} is not one of {_type_name(tp)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return list(items) if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string; users write it that way
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # nan or inf never makes sense in a recipe and poisons training silently
            raise UsageError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UsageError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict, where: str = "recipe") -> Any:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise UsageError."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            hint = did_you_mean(key, fields) or f"; valid keys: {', '.join(fields)}"
            raise UsageError(f"unknown key '{where}.{key}'{hint}".replace("recipe.", "", 1))
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise UsageError(f"{where}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list (tuples become lists), suitable for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply dotted `a.b.c=value` overrides to a nested dict (values parsed as YAML)."""

    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override '{item}' must look like key.subkey=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data
