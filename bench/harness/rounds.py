"""How many ops a timed round runs and how many paired rounds fit a budget. Torch-free, so
that the `lora-bench ab` coordinator sizes rounds exactly as the bench does."""

from __future__ import annotations

import math

MIN_ROUND_S = 1e-3  # a round runs the op `inner` times and lasts at least this long


def choose_inner(seconds_per_call: float, min_round_s: float = MIN_ROUND_S) -> int:
    """Calls per round so that a round lasts at least `min_round_s`."""
    return max(1, math.ceil(round(min_round_s / max(seconds_per_call, 1e-9), 6)))


def choose_rounds(round_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """Paired rounds that fit `budget_s` (each pair costs about 2 rounds), clamped."""
    return max(min_rounds, min(max_rounds, int(budget_s / max(2 * round_s, 1e-9))))
