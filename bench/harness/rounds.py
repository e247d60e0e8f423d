"""How many ops a timed round runs, and when paired rounds stop: once the 95% confidence
interval of the ratio (over the setups, when there are several) is within the target, or when
the budget ends. Torch-free, so that the `lora-bench ab` coordinator sizes and stops its rounds
exactly as the bench does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bench.stats.setups import by_setup, summarize

MIN_ROUND_S = 1e-3  # a round runs the op `inner` times and lasts at least this long
SURE, BUDGET, PAIRS = "sure", "budget", "pairs"  # why paired rounds stopped
STOPS = (SURE, BUDGET, PAIRS)
TARGET = 0.01  # default: stop once the ratio's 95% CI is within ±1% of its median


@dataclass(frozen=True)
class Budget:
    """When paired rounds stop: after `min_pairs` pairs, as soon as the ratio's 95% CI lies
    within ±`target` of its median (SURE), or once `seconds` of rounds have passed (BUDGET),
    or at `max_pairs` pairs (PAIRS), whichever comes first; with several `setups`, only after
    a whole sweep over them (every setup has as many pairs)."""

    seconds: float
    min_pairs: int
    max_pairs: int
    target: float = TARGET
    setups: int = 1  # independent allocations the pairs go round robin over

    def __post_init__(self) -> None:
        for name in ("seconds", "target"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"budget {name} must be a finite number > 0, got {value!r}")
        if not 1 <= self.min_pairs <= self.max_pairs:
            raise ValueError(
                f"budget pairs need 1 <= min_pairs <= max_pairs, got {self.min_pairs} "
                f"and {self.max_pairs}"
            )
        if not 1 <= self.setups <= self.min_pairs:
            raise ValueError(
                f"budget setups need 1 <= setups <= min_pairs, got {self.setups} and "
                f"{self.min_pairs}"
            )


def choose_inner(seconds_per_call: float, min_round_s: float = MIN_ROUND_S) -> int:
    """Calls per round so that a round lasts at least `min_round_s`."""
    return max(1, math.ceil(round(min_round_s / max(seconds_per_call, 1e-9), 6)))


def ci_halfwidth(ratios: Sequence[float], setups: Sequence[int] = ()) -> float:
    """How far the 95% CI of the ratio reaches from it, relative to it: the larger of
    hi / ratio - 1 and 1 - lo / ratio. Positive ratios, each with its setup (none: one setup).
    inf for fewer than 6 pairs, or a setup with fewer than 3, whose CI says nothing."""
    groups = by_setup(ratios, setups or [0] * len(ratios))
    if len(ratios) < 6 or min(len(g) for g in groups.values()) < 3:
        return math.inf
    return summarize(ratios, setups).reach


def stop_reason(
    ratios: Sequence[float], elapsed_s: float, budget: Budget, setups: Sequence[int] = ()
) -> str | None:
    """Why paired rounds with these per-pair ratios (each pair's setup in `setups`, none for
    one setup), after `elapsed_s` of rounds, stop now; None while they go on. Rounds stop only
    after whole sweeps over the setups. Sure wins when several hold."""
    n = len(ratios)
    if n < budget.min_pairs or n % budget.setups:
        return None
    if ci_halfwidth(ratios, setups) <= budget.target:
        return SURE
    if n >= budget.max_pairs:
        return PAIRS
    if elapsed_s >= budget.seconds:
        return BUDGET
    return None
