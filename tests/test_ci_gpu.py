"""`.ci/gpu --dry-run`: the GPU run's steps on the CPU with the tiny profile, so that a typo or
a missing file shows before any GPU time is spent."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from bench.schema.run import load_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"
STEPS = ("1-versions", "2-cuda-tests", "3-bench", "4-compare", "5-plot", "6-report", "7-profile")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@pytest.mark.slow
def test_dry_run_makes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run("--dry-run", str(out))
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in STEPS:
        assert f"| {step} |" in summary and "passed" in summary.split(f"| {step} |")[1]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size < 16 * 2**20 for f in files)
    assert {"cpu-tiny.json", "cpu-tiny.md", "cpu-vs-cpu.md", "summary.md",
            "logs.tar.gz"} <= set(files)  # fmt: skip
    assert load_run(out / "cpu-tiny.json").times(), "the bench step timed something"
    assert "| case" in (out / "cpu-vs-cpu.md").read_text()
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
        assert {f"logs/{s}.log" for s in STEPS} <= names
        assert "logs/profile/two_step-infer.trace.json.gz" in names
        versions = tar.extractfile("logs/1-versions.log")
        assert versions is not None and b"torch 2." in versions.read()


def test_refuses_a_folder_with_files_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    proc = run("--dry-run", str(tmp_path))
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_usage() -> None:
    proc = run()
    assert proc.returncode == 2 and "usage: .ci/gpu [--dry-run] OUT_DIR" in proc.stderr
