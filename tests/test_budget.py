"""The quick profile's time budget: a case list that grows without a measured budget fails."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.families.budget import LIMIT_S, QUICK, STARTUP_S

ROOT = Path(__file__).resolve().parents[1]


def quick_benchmarks() -> Counter[str]:
    """How many benchmarks each bench file collects on the quick profile, CPU only."""
    cmd = [sys.executable, "-m", "pytest", "bench", "--collect-only", "-q", "-p",
           "no:cacheprovider", "--lora-profile", "quick", "--lora-device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    return Counter(line.split("::")[0] for line in ids)


def test_the_budgets_fit_the_quick_profile_s_promise() -> None:
    assert STARTUP_S + sum(b.seconds for b in QUICK.values()) <= LIMIT_S


def test_no_file_runs_more_quick_benchmarks_than_its_budget() -> None:
    counts = quick_benchmarks()
    assert counts, "the quick profile collected nothing"
    for path, n in counts.items():
        assert path in QUICK, (
            f"{path} runs {n} quick benchmarks and has no budget: time the profile "
            "(pytest bench --benchmark-only --lora-device cpu --durations=0) and add it to "
            "bench/families/budget.py, or run its cases in `full`"
        )
        assert n <= QUICK[path].benchmarks, (
            f"{path} runs {n} quick benchmarks, its budget {QUICK[path].benchmarks}: time the "
            "profile again and update bench/families/budget.py within its "
            f"{LIMIT_S:g} s, or move cases to `full`"
        )
