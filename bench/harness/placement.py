"""Where the tensors a benchmark reads sit in memory, and which copy each call reads.

A setup is one allocation of a case's weights and input with the copies a cold cache rotates
over (`CopyPool`). Calls take the copies round robin with one counter shared by the impl and
its base (`Rotation`), so each call reads the least recently used copy, and both sides read the
same copies: a layout cannot favour one side. The setups of the latest (case, mode, variant)
are held (`held_setups`) so that every impl of a case reads the same allocations as the others
and as its base; each benchmark builds only its own ops on them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from bench.harness.kernels import copy_weights

Call = Callable[[], object]


def rotation_size(copies: int, inner: int) -> int:
    """How many copies to rotate over, at least `copies`, when rounds run `inner` calls: one
    copy stays one; otherwise an odd count with no factor in common with `inner`. Rounds then
    alternate sides in blocks of `inner` calls with a period of 4·inner calls, and a count
    coprime to that period gives each side every copy equally often (a count such as 2 with
    one call a round would give one side copy 0 and the other copy 1, for ever)."""
    if copies < 1 or inner < 1:
        raise ValueError(f"copies and inner must be >= 1, got {copies} and {inner}")
    if copies == 1:
        return 1
    n = copies
    while n % 2 == 0 or math.gcd(n, inner) != 1:
        n += 1
    return n


class CopyPool:
    """Sets of (weights, input) with the same values, each in fresh memory; the first is the
    one given, the others are made when first asked for."""

    def __init__(self, w: Any, x: Tensor) -> None:
        self.sets: list[tuple[Any, Tensor]] = [(w, x)]

    def _fresh(self) -> tuple[Any, Tensor]:
        w, x = self.sets[0]
        return copy_weights(w), x.detach().clone().requires_grad_(x.requires_grad)

    def get(self, i: int) -> tuple[Any, Tensor]:
        while len(self.sets) <= i:
            self.sets.append(self._fresh())
        return self.sets[i]

    def copy(self) -> CopyPool:
        """A pool of the same values, all in memory of its own."""
        return CopyPool(*self._fresh())


def share_of(copies: int, setups: int) -> int:
    """Copies one of `setups` setups holds when the setups take turns pair by pair and a
    round is one call: its part of the `copies` a cold cache needs, odd sizes aside, and at
    least 2, so that a pair's second round never reads what its first just read (1 warm)."""
    return 1 if copies == 1 else max(2, math.ceil(copies / setups))


class Rotation:
    """The calls of an impl and of its base on the copies of one setup, taken round robin with
    one counter shared by both: whichever side runs, each call gets the least recently used
    copy, and both sides read the same copies. `make(i)` gives the two calls on copy i.

    With rounds of one call and setups taking turns pair by pair, the other setups' calls
    come between two calls of this one, so it needs only its `share` of the `copies` a cold
    cache needs; with longer rounds, a round's calls follow one another on this setup alone,
    which then needs them all. `fit(inner)` sizes the rotation once rounds are known."""

    def __init__(self, make: Callable[[int], tuple[Call, Call]], copies: int, share: int) -> None:
        self.make, self.wanted, self.share = make, copies, share
        self.calls = [make(i) for i in range(share)]
        self.copies = share
        self._counter = itertools.count()

    def fit(self, inner: int) -> None:
        self.copies = rotation_size(self.share if inner == 1 else self.wanted, inner)
        while len(self.calls) < self.copies:
            self.calls.append(self.make(len(self.calls)))

    def _call(self, side: int) -> Call:
        if self.copies == 1:
            return self.calls[0][side]
        return lambda: self.calls[next(self._counter) % self.copies][side]()

    def sides(self) -> tuple[Call, Call]:
        """(the impl's work, base's work)."""
        return self._call(0), self._call(1)


_HELD: dict[tuple[object, ...], list[CopyPool]] = {}


def held_setups(
    key: tuple[object, ...], count: int, make: Callable[[], CopyPool]
) -> list[CopyPool]:
    """`count` setups of `key` (a case, mode and variant), made by `make` and held until
    another key is asked for: the benchmarks of one case run one after another."""
    pools = _HELD.get(key)
    if pools is None:
        _HELD.clear()  # the previous case's memory goes before this one's is allocated
        pools = _HELD[key] = []
    while len(pools) < count:
        pools.append(make())
    return pools[:count]


def release_setups() -> None:
    """Drop the held setups (at the end of a session, or before a measurement that needs
    the memory)."""
    _HELD.clear()
