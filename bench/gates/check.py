"""Regression gate against a committed baseline: compare each case's ratio to base between a
baseline run and a current one, and each impl's peak memory.

A case regresses only when its ratio grew by more than the runs' own spread (the median moved
past the half-IQRs of both runs added together), significantly (Mann-Whitney's U test on the
per-pair log ratios of the two runs, and, for runs over several setups, a 95% CI of the
quotient of the two ratios that leaves out 1), past half the threshold, and with a CI that
reaches the threshold (bench.stats.verdicts); and not at a case whose A/A control, in either
run, reads past half the threshold. Runs taken at
different times drift with the machine, so this gate is for large changes over many commits;
`lora-bench ab` judges one change in one run.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from bench.harness.processes import die_with_parent
from bench.report.figures import time_index
from bench.schema.ab import AbMemory
from bench.schema.entries import TimeEntry, quartiles
from bench.schema.io import ResultError
from bench.schema.run import Run, load_run
from bench.stats.ranks import mann_whitney, shift_ci
from bench.stats.setups import SetupSummary, quotient, summarize
from bench.stats.verdicts import SAME, control_off, time_status

COPY_DRIFT = 0.20  # warn when the runs' copy bandwidths differ by more than this
RECHECK_SECONDS = 4.0  # paired rounds per rechecked benchmark: longer than a profile's budget


@dataclass(frozen=True)
class Verdict:
    """One (case, impl, mode) in both runs: the per-pair ratios to base of each, and the
    setup each pair ran on (empty: one setup)."""

    case: str
    impl: str
    mode: str
    fullname: str
    base_ratios: tuple[float, ...]
    cur_ratios: tuple[float, ...]
    base_setups: tuple[int, ...] = ()
    cur_setups: tuple[int, ...] = ()

    @property
    def base_summary(self) -> SetupSummary:
        return summarize(self.base_ratios, self.base_setups)

    @property
    def cur_summary(self) -> SetupSummary:
        return summarize(self.cur_ratios, self.cur_setups)

    @property
    def base_ratio(self) -> float:
        return self.base_summary.ratio

    @property
    def cur_ratio(self) -> float:
        return self.cur_summary.ratio

    @property
    def base_iqr(self) -> float:
        q1, _, q3 = quartiles(list(self.base_ratios))
        return q3 - q1

    @property
    def cur_iqr(self) -> float:
        q1, _, q3 = quartiles(list(self.cur_ratios))
        return q3 - q1

    @property
    def change(self) -> float:
        """Relative growth of the ratio to base: +0.10 is 10% slower against base."""
        return self.cur_ratio / self.base_ratio - 1

    @property
    def noise(self) -> float:
        return (self.base_iqr + self.cur_iqr) / 2

    @property
    def over_setups(self) -> bool:
        """Whether either run spread its pairs over several setups."""
        return self.base_summary.setups > 1 or self.cur_summary.setups > 1

    @property
    def change_ci(self) -> tuple[float, float]:
        """95% CI of `change`: over setups, the CI of the quotient of the two ratios (what
        changes between setups included); else the shift of the log per-pair ratios from the
        baseline run to the current one, the interval that goes with Mann-Whitney's test."""
        if self.over_setups:
            _, lo, hi = quotient(self.cur_summary, self.base_summary)
            return lo - 1, hi - 1
        lo, hi = shift_ci(_logs(self.base_ratios), _logs(self.cur_ratios))
        return math.exp(lo) - 1, math.exp(hi) - 1

    @property
    def base_ci(self) -> tuple[float, float]:
        """95% CI of the baseline run's ratio."""
        return self.base_summary.ci

    @property
    def cur_ci(self) -> tuple[float, float]:
        return self.cur_summary.ci

    @property
    def p_value(self) -> float:
        """Mann-Whitney's two-sided p on the log per-pair ratios of the two runs."""
        return mann_whitney(_logs(self.base_ratios), _logs(self.cur_ratios))

    def status(self, threshold: float, alpha: float) -> str:
        if abs(self.cur_ratio - self.base_ratio) <= self.noise:
            return SAME
        lo, hi = self.change_ci
        if self.over_setups and lo <= 0 <= hi:
            return SAME  # the setups of either run move the ratio as far
        return time_status(self.change, self.change_ci, self.p_value, threshold, alpha)


def _logs(values: tuple[float, ...]) -> list[float]:
    return [math.log(v) for v in values]


def verdicts(baseline: Run, current: Run) -> list[Verdict]:
    """Every timed (case, impl, mode) present in both runs, except base against itself."""
    old, new = time_index(baseline), time_index(current)
    out = []
    for ident in (i for i in old.keys() & new.keys() if i[1] != "base"):
        b, c = old[ident], new[ident]
        out.append(
            Verdict(c.case, c.impl, c.mode, c.fullname, tuple(b.rounds.ratios),
                    tuple(c.rounds.ratios), tuple(b.rounds.setups), tuple(c.rounds.setups))
        )  # fmt: skip
    return sorted(out, key=lambda v: (v.case, v.impl, v.mode))


def controls_off(baseline: Run, current: Run, threshold: float) -> dict[tuple[str, str], str]:
    """(case, mode) -> why its comparisons cannot be judged: a run whose A/A control there
    reads past half the threshold (bench.stats.verdicts.control_off)."""
    out: dict[tuple[str, str], str] = {}
    for label, run in (("baseline", baseline), ("current", current)):
        for ident, e in run.controls().items():
            if control_off(e.ratio_to_base, threshold) and ident not in out:
                lo, hi = e.rounds.ratio_ci
                out[ident] = (f"the {label} run's A/A control reads {e.ratio_to_base:.3f} "
                              f"[{lo:.3f}, {hi:.3f}]")  # fmt: skip
    return out


def control_notes(baseline: Run, current: Run) -> list[str]:
    """One line per run on its A/A control: the largest setup bias it measured, or that it
    has none (a run from before the control)."""
    lines = []
    for label, run in (("baseline", baseline), ("current", current)):
        controls = run.controls()
        if not run.times():
            continue  # `lora-bench model` times against the frozen model, no layer's base
        if not controls:
            lines.append(f"note: the {label} run has no A/A control (an older run): its setup "
                         "bias is not known")  # fmt: skip
            continue
        (case, mode), worst = max(controls.items(), key=lambda kv: abs(kv[1].ratio_to_base - 1))
        lines.append(f"A/A control, {label}: {len(controls)} cases, the farthest from 1 "
                     f"{worst.ratio_to_base:.3f} at {case} {mode}")  # fmt: skip
    return lines


def memory_changes(baseline: Run, current: Run) -> list[AbMemory]:
    """Every (case, impl, mode) whose peak memory both runs measured."""
    old = {(e.key, e.impl, e.mode): e for e in baseline.memory()}
    out = []
    for e in current.memory():
        b = old.get((e.key, e.impl, e.mode))
        if b is not None:
            out.append(
                AbMemory(e.case, e.key, e.impl, e.mode, e.method, b.peak_bytes, e.peak_bytes)
            )
    return out


def copy_drift(baseline: Run, current: Run) -> list[str]:
    """Warnings for calibrated copy bandwidths that differ by more than COPY_DRIFT."""
    old, new = baseline.meta.peaks_start, current.meta.peaks_start
    warnings = []
    for key in sorted(old.keys() & new.keys()):
        a, b = old[key]["copy_gbs"], new[key]["copy_gbs"]
        if abs(b / a - 1) > COPY_DRIFT:
            warnings.append(
                f"warning: copy bandwidth {key} was {a:.1f} GB/s in the baseline and {b:.1f} "
                f"GB/s now ({100 * (b / a - 1):+.0f}%): not the same machine, or a loaded one; "
                "memory-bound ratios move with it"
            )
    return warnings


def check_comparable(baseline: Run, current: Run) -> None:
    """Refuse runs of two devices or two cache modes: their ratios measure different things."""
    a, b = baseline.meta, current.meta
    if a.device != b.device:
        raise ResultError(
            f"the baseline is a {a.device} run and the current one a {b.device} run; use compare"
        )
    if a.cache != b.cache:
        raise ResultError(
            f"the baseline ran with a {a.cache} cache and the current run with a {b.cache} one; "
            "rerun one of them with --lora-cache to match"
        )


def find_project(start: Path, why: str = "--recheck runs `pytest bench`") -> Path:
    """The lora-bench source checkout at or above `start`: a folder with bench/conftest.py
    and a pyproject.toml naming the lora-bench project. ResultError when there is none."""
    for folder in (start.resolve(), *start.resolve().parents):
        pyproject = folder / "pyproject.toml"
        if (
            (folder / "bench" / "conftest.py").is_file()
            and pyproject.is_file()
            and 'name = "lora-bench"' in pyproject.read_text(encoding="utf-8")
        ):
            return folder
    raise ResultError(
        f"{why} in a lora-bench source checkout, and none is at or "
        f"above {start.resolve()}; run it from the checkout or pass --project DIR"
    )


def recheck(flagged: list[Verdict], current: Run, project: Path) -> dict[str, TimeEntry]:
    """Measure each flagged benchmark again with pytest in the checkout `project`, with more
    rounds than the run had; returns the new entries by fullname (pytest node id)."""
    meta = current.meta
    if not (project / "bench" / "conftest.py").is_file():
        raise ResultError(f"--project {project}: not a lora-bench checkout (no bench/conftest.py)")
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable, "-m", "pytest", *sorted({v.fullname for v in flagged}),
            "--benchmark-only", "-q", "-p", "no:cacheprovider", "--lora-results", out,
            "--lora-profile", meta.profile, "--lora-device", meta.device,
            "--lora-threads", str(meta.threads), "--lora-seconds", str(RECHECK_SECONDS),
            "--lora-cache", meta.cache,
            *(f"--lora-impl={spec}" for spec in meta.impl_specs),
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True,
                              preexec_fn=die_with_parent)  # fmt: skip
        path = Path(out) / f"{meta.device}-{meta.profile}.json"
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise ResultError(f"the recheck run failed (exit {proc.returncode}):\n{tail}")
        rerun = load_run(path)
    return {e.fullname: e for e in rerun.times()}


def better_of(v: Verdict, rerun: dict[str, TimeEntry]) -> Verdict:
    """Keep the lower of the two measured ratios of a flagged case, with its own rounds."""
    e = rerun.get(v.fullname)
    if e is None or e.ratio_to_base >= v.cur_ratio:
        return v
    return replace(v, cur_ratios=tuple(e.rounds.ratios), cur_setups=tuple(e.rounds.setups))
