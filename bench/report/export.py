"""Export a run for other tools. github-action-benchmark: each (case, impl, mode)'s ratio to
the base GEMM of the same run as a `customSmallerIsBetter` entry, so that its chart over
commits follows the ratio, which holds across runs far better than seconds do."""

from __future__ import annotations

from bench.report.base import MODES_ORDER, fmt_ci
from bench.schema.entries import Paired
from bench.schema.run import Run

FORMATS = ("github-action-benchmark",)


def _item(name: str, unit: str, rounds: Paired, machine: str) -> dict[str, object]:
    """One chart entry: the paired ratio, half its 95% CI as the range, and what it rests on."""
    lo, hi = rounds.ratio_ci
    setups = rounds.setup_count
    how = (f"over {setups} setups, {len(rounds.impl_s)} paired rounds" if setups > 1
           else f"median of {len(rounds.impl_s)} paired rounds")  # fmt: skip
    return {
        "name": name,
        "unit": unit,
        "value": round(rounds.ratio, 4),
        "range": f"± {(hi - lo) / 2:.4f}",
        "extra": f"{how}, 95% CI {fmt_ci((lo, hi))}; {machine}",
    }


def github_action_benchmark(run: Run) -> list[dict[str, object]]:
    """[{name, unit, value, range (half the 95% CI), extra}], base left out (against itself
    it is the run's A/A control, not a kernel's figure); a `lora-bench model` variant's ratio
    to the frozen model per phase."""
    m = run.meta
    machine = f"{m.device_name}; {m.threads} threads"
    out = []
    for mode in MODES_ORDER:
        entries = [e for e in run.times(mode) if e.impl != "base"]
        entries.sort(
            key=lambda e: (run.shape_rank(e.shape), e.tokens, e.rank, run.impl_rank(e.impl))
        )
        out += [_item(f"{e.case} · {e.impl} {mode}", "x base GEMM", e.rounds,
                      f"{machine}; {m.cache} cache; torch {m.torch}") for e in entries]  # fmt: skip
    out += [_item(f"{u.case} · {u.label} {u.phase}", "x frozen model", u.rounds,
                  f"{machine}; torch {m.torch}") for u in run.user_model()]  # fmt: skip
    return out
