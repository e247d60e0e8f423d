"""Typed dataclasses from JSON data, checked field by field: the reader of every entry kind.

Every number of a results file is >= 0 and finite: times, bytes, counts, shares and
thresholds alike. The one exception is an error against the oracle, which is +inf for an impl
that does not compute the function (`base` drops the adapter, so has no gradient of A or B).
A field that could be negative would have to say so here; none can."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar, cast

T = TypeVar("T")
MAY_BE_INFINITE = ("rel_error", "base_rel_error", "current_rel_error")
CHOICES = {
    "mode": ("infer", "train"),
    "cache": ("cold", "warm"),
    "stopped": ("sure", "budget", "pairs"),  # bench.harness.rounds.STOPS
    "order": ("ab", "abba"),
}  # by field name, everywhere


def _check_value(where: str, value: object, typ: Any) -> object:
    """Value converted to `typ` (dataclasses built from dicts), or ValueError saying why not."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        return None if value is None else _check_value(where, value, inner)
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
        if not args or args[1] is object:
            return value  # free-form: pytest-benchmark's machine and commit info
        return {k: _check_value(f"{where}[{k!r}]", v, args[1]) for k, v in value.items()}
    allowed = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}[typ]
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, allowed):
        raise ValueError(f"{where} must be {typ.__name__}, got {value!r}")
    field_name = where.rpartition(".")[2]
    if isinstance(value, str) and value not in CHOICES.get(field_name, (value,)):
        raise ValueError(f"{where} must be one of {', '.join(CHOICES[field_name])}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        infinite_ok = field_name in MAY_BE_INFINITE and value == math.inf
        if not (value >= 0 and (math.isfinite(value) or infinite_ok)):
            raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    return float(value) if typ is float else value


def positive(where: str, values: list[float], unit: str = "") -> None:
    """ValueError unless every value is > 0: what the tables divide by."""
    bad = [v for v in values if not v > 0]
    if bad:
        raise ValueError(f"{where} must be {unit + ' ' if unit else ''}> 0, got {bad[0]!r}")


def positive_seconds(where: str, seconds: list[float]) -> None:
    """ValueError unless every time is > 0: a round cannot take no time."""
    positive(where, seconds, "seconds")


def from_dict(cls: type[T], data: dict, where: str) -> T:
    """Build dataclass `cls` from JSON data; extra keys (summaries, kind) are ignored."""
    return cast(T, _from_dict(cls, data, where))


def _from_dict(cls: Any, data: dict, where: str) -> object:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = [f for f in fields if dataclasses.MISSING is f.default is f.default_factory]
    missing = [f.name for f in required if f.name not in data]
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
        if not isinstance(kind, str) or kind not in kinds:
            raise ValueError(f"entry {i} has kind {kind!r}; known: {', '.join(kinds)}")
        parsed.append(from_dict(kinds[kind], e, f"entry {i} ({kind})"))
    return parsed
