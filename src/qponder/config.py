"""Typed configuration: dataclasses loaded from YAML recipes, with dotted ``key=value`` overrides.

Every stage's settings are a dataclass (defaults = the embedded tiny CPU setting). ``load_config(Cls, path,
overrides)`` merges recipe then overrides, rejects unknown keys by their full dotted name, and checks types, so a
typo in a recipe fails at start-up instead of after hours of training.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from qponder.errors import QponderError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise QponderError(f"config key {key!r}: null is not allowed (expected {getattr(tp, '__name__', tp)})")
    if tp is Any:
        return value
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise QponderError(f"config key {key!r}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise QponderError(f"config key {key!r}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise QponderError(f"config key {key!r}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise QponderError(f"config key {key!r}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise QponderError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
                isinstance(value, str) and not value.lstrip("+-").isdigit()):
            raise QponderError(f"config key {key!r}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise QponderError(f"config key {key!r}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise QponderError(f"config key {key!r}: expected a string, got {type(value).__name__}")
        return str(value)
    return value


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise QponderError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise QponderError(f"config {prefix.rstrip('.') or cls.__name__}: {e}") from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise QponderError(f"override {dotted!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.lr=1e-4", "model=/x"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise QponderError(f"override {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        _set_dotted(out, k.strip(), yaml.safe_load(v) if v.strip() else "")
    return out


def cli_overrides(sets: list[str] | None, fields: dict[str, Any]) -> dict:
    """``--set KEY=VALUE`` strings (values parsed as YAML) plus typed CLI flag values keyed by dotted field name.

    Flag values are taken as they are (a ``--out 2024_01`` stays the string ``"2024_01"``), never re-parsed;
    ``None`` means the flag was not given. Flags win over ``--set``.
    """
    out = parse_overrides(sets)
    for key, value in fields.items():
        if value is not None:
            _set_dotted(out, key, str(value) if isinstance(value, Path) else value)
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise QponderError(f"{p}: config file does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise QponderError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise QponderError(f"{p}: the top level must be a mapping of config keys")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | list[str] | None = None) -> T:
    """Defaults <- YAML recipe <- overrides (a nested dict or ``KEY=VALUE`` strings)."""
    data = read_yaml(path) if path else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    data = _merge(data, overrides or {})
    return _build(cls, data)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
