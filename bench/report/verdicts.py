"""Verdicts between two variants each timed against its own base (ours against PEFT, DoRA
against LoRA, a mixed batch against PEFT's): stated only where the 95% CI of the quotient of
their ratios leaves out 1, and shown as unresolved otherwise, so that no ordering a run
states can flip in the next run without one of the two saying it could not tell.

Each family's report lists the verdicts its tables state under labels that are the same from
run to run (`lora-bench agree` checks that none flips)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.schema.entries import Paired
from bench.stats.setups import quotient

UNRESOLVED = "unresolved"


@dataclass(frozen=True)
class Comparison:
    """a's time over b's (each a paired ratio to its own base), with its 95% CI: below 1, a
    is faster."""

    label: str
    quotient: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        return self.high < 1 or self.low > 1

    def cell(self) -> str:
        """ "0.931 [0.905, 0.958]", or with " unresolved" where the CI holds 1."""
        text = f"{self.quotient:.3f} [{self.low:.3f}, {self.high:.3f}]"
        return text if self.resolved else f"{text} {UNRESOLVED}"

    def speed_cell(self) -> str:
        """The same as a speed-up of a over b (b's time over a's): "x1.07 [1.04, 1.10]"."""
        text = f"x{1 / self.quotient:.2f} [{1 / self.high:.2f}, {1 / self.low:.2f}]"
        return text if self.resolved else f"{text} {UNRESOLVED}"


def versus(label: str, a: Paired, b: Paired) -> Comparison:
    """a's ratio over b's: how many times b's time a takes, each against its own base."""
    return Comparison(label, *quotient(a.summary, b.summary))
