"""Typed dataclasses from JSON data, checked field by field: the reader of every entry kind."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar, cast

T = TypeVar("T")


def _check_value(where: str, value: object, typ: Any) -> object:
    """Value converted to `typ` (dataclasses built from dicts), or ValueError saying why not."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {type(value).__name__}")
        return _from_dict(typ, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {type(value).__name__}")
        return [_check_value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {type(value).__name__}")
        return value
    allowed = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}[typ]
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, allowed):
        raise ValueError(f"{where} must be {typ.__name__}, got {value!r}")
    return float(value) if typ is float else value


def from_dict(cls: type[T], data: dict, where: str) -> T:
    """Build dataclass `cls` from JSON data; extra keys (summaries, kind) are ignored."""
    return cast(T, _from_dict(cls, data, where))


def _from_dict(cls: Any, data: dict, where: str) -> object:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    values = {
        f.name: _check_value(f"{where}.{f.name}", data[f.name], hints[f.name])
        for f in fields
        if f.name in data
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def parse_entries(entries: object, kinds: dict[str, type]) -> list:
    """Typed entries from a JSON list of objects tagged by "kind"; ValueError says which entry
    is wrong and why."""
    if not isinstance(entries, list):
        raise ValueError("no 'entries' list")
    parsed: list[Any] = []
    for i, e in enumerate(entries):
        kind = e.get("kind") if isinstance(e, dict) else None
        if kind not in kinds:
            raise ValueError(f"entry {i} has kind {kind!r}; known: {', '.join(kinds)}")
        parsed.append(from_dict(kinds[kind], e, f"entry {i} ({kind})"))
    return parsed
