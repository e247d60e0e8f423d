"""Export a run for other tools. github-action-benchmark: each (case, impl, mode)'s ratio to
the base GEMM of the same run as a `customSmallerIsBetter` entry, so that its chart over
commits follows the ratio, which holds across runs far better than seconds do."""

from __future__ import annotations

from bench.report.base import MODES_ORDER, fmt_ci
from bench.schema.run import Run

FORMATS = ("github-action-benchmark",)


def github_action_benchmark(run: Run) -> list[dict[str, object]]:
    """[{name, unit, value, range (half the 95% CI), extra}], base left out (against itself
    it is the run's A/A control, not a kernel's figure); a `lora-bench model` variant's ratio
    to the frozen model per phase."""
    m = run.meta
    out = []
    for mode in MODES_ORDER:
        entries = [e for e in run.times(mode) if e.impl != "base"]
        entries.sort(
            key=lambda e: (run.shape_rank(e.shape), e.tokens, e.rank, run.impl_rank(e.impl))
        )
        for e in entries:
            lo, hi = e.rounds.ratio_ci
            setups = e.rounds.setup_count
            how = (f"over {setups} setups, {len(e.rounds.impl_s)} paired rounds" if setups > 1
                   else f"median of {len(e.rounds.impl_s)} paired rounds")  # fmt: skip
            out.append(
                {
                    "name": f"{e.case} · {e.impl} {mode}",
                    "unit": "x base GEMM",
                    "value": round(e.ratio_to_base, 4),
                    "range": f"± {(hi - lo) / 2:.4f}",
                    "extra": f"{how}, 95% CI {fmt_ci((lo, hi))}; {m.device_name}; "
                    f"{m.threads} threads; {m.cache} cache; torch {m.torch}",
                }
            )
    for u in run.user_model():
        lo, hi = u.rounds.ratio_ci
        out.append(
            {
                "name": f"{u.case} · {u.label} {u.phase}",
                "unit": "x frozen model",
                "value": round(u.ratio_to_base, 4),
                "range": f"± {(hi - lo) / 2:.4f}",
                "extra": f"median of {len(u.rounds.impl_s)} paired rounds, 95% CI "
                f"{fmt_ci((lo, hi))}; {m.device_name}; {m.threads} threads; torch {m.torch}",
            }
        )
    return out
