"""What `lora-bench ab` compares: the profile's cases narrowed by `--cases`, and the
(case, impl, mode) items both sides can run, with what only one side has."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from bench.schema.ab import AbProblem
from bench.schema.entries import CONTROL
from bench.schema.io import ResultError

MODES = ("infer", "train")


@dataclass(frozen=True)
class Item:
    case: dict  # a plan entry of the current side: id, key, fields, copies, flops, memory
    impl: str
    mode: str

    def label(self) -> str:
        return f"{self.case['id']} · {self.impl} {self.mode}"

    @property
    def cost(self) -> float:
        """Relative time to compare it: a fixed part (processes, oracle, settling) and a part
        that grows with the op's FLOPs; only the ratios between items matter."""
        return 1 + self.case["flops"][self.mode] / 2e9


@dataclass
class Selection:
    items: list[Item] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_current: list[str] = field(default_factory=list)
    skipped: list[AbProblem] = field(default_factory=list)


def match_cases(cases: list[dict], patterns: tuple[str, ...]) -> list[dict]:
    """Cases whose id matches a pattern: a shell glob, or without * ? [ a prefix of the id."""
    if not patterns:
        return cases

    def hit(pattern: str, case_id: str) -> bool:
        if any(ch in pattern for ch in "*?["):
            return fnmatch.fnmatchcase(case_id, pattern)
        return case_id.startswith(pattern)

    out = [c for c in cases if any(hit(p, c["id"]) for p in patterns)]
    if not out:
        ids = ", ".join(c["id"] for c in cases)
        raise ResultError(f"--cases {', '.join(patterns)} matches none of the profile's: {ids}")
    return out


def select(
    cases: list[dict], impls: dict[str, dict[str, dict]], device: str, wanted: tuple[str, ...]
) -> Selection:
    """The (case, impl, mode) items both sides can run on the device, and what only one side
    has. `impls` maps each side to its impls by name, as their hello listed them; `wanted`
    names impls (none: ours); base comes always, the A/A control of every case."""
    base, cur = impls["base"], impls["current"]
    names = list(dict.fromkeys([*cur, *base]))
    if wanted:
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ResultError(
                f"--impls {', '.join(unknown)}: on neither side; known: {', '.join(names)}"
            )
        names = [n for n in names if n in wanted or n == CONTROL]
    else:
        names = [n for n in names if (cur.get(n) or base[n])["origin"] == "ours"]
    sel = Selection()
    for name in names:
        if name not in base or name not in cur:
            (sel.only_current if name in cur else sel.only_base).append(name)
            continue
        for mode in MODES:
            here = [device in s[name]["devices"] and mode in s[name]["modes"] for s in (base, cur)]
            if here == [True, False]:
                sel.only_base.append(f"{name} {mode}")
            elif here == [False, True]:
                sel.only_current.append(f"{name} {mode}")
            if here != [True, True]:
                continue
            why = cur[name]["unavailable"] or base[name]["unavailable"]
            if why:
                sel.skipped.append(AbProblem("*", name, mode, "current", "skipped", why))
                continue
            variant = cur[name].get("variant", "lora")
            for c in cases:
                dtype = c["fields"]["dtype"]
                if variant not in c.get("variants", ["lora"]):
                    continue
                if c["skip"]:
                    sel.skipped.append(
                        AbProblem(c["id"], name, mode, "current", "skipped", c["skip"])
                    )
                elif dtype in base[name]["dtypes"] and dtype in cur[name]["dtypes"]:
                    sel.items.append(Item(c, name, mode))
    sel.items.sort(key=lambda i: [c["id"] for c in cases].index(i.case["id"]))
    return sel
