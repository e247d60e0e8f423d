"""report, compare, check, plot, baseline and export read results with torch and the registry
unimportable: a results file outlives the code and the machine that wrote it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from runs import make_run, run_json

ROOT = Path(__file__).resolve().parents[1]
# torch and lora_kernels set to None in sys.modules: importing either raises ImportError.
RUN_CLI = (
    "import sys; sys.modules['torch'] = None; sys.modules['lora_kernels'] = None; "
    "from bench.cli.main import main; code = main(sys.argv[1:]); "
    "assert 'torch' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]; "
    "sys.exit(code)"
)


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", RUN_CLI, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "cpu.json", tmp_path / "cuda.json"
    a.write_text(run_json(make_run("cpu", seconds=1e-2)))
    b.write_text(run_json(make_run("cuda", seconds=1e-3)))
    return a, b


def test_the_guard_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None; import lora_kernels"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "import of torch halted" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["report", "{a}"],
        ["report", "{a}", "--format", "csv", "--group-by", "rank"],
        ["compare", "{a}", "{b}"],
        ["check", "{a}", "{a}"],
        ["baseline", "{a}", "--dir", "{tmp}"],
        ["export", "{a}", "--format", "github-action-benchmark"],
    ],
)
def test_readers_run_without_torch(runs: tuple[Path, Path], args: list[str]) -> None:
    a, b = runs
    argv = [x.format(a=a, b=b, tmp=a.parent / "base") for x in args]
    proc = cli(*argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_plot_runs_without_torch(runs: tuple[Path, Path]) -> None:
    pytest.importorskip("matplotlib", reason="plot needs the 'plot' extra (matplotlib)")
    a, b = runs
    proc = cli("plot", str(a), str(b), "-o", str(a.parent / "plots"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cpu-vs-cuda.png" in proc.stdout


def test_the_ab_coordinator_imports_no_torch() -> None:
    """ab's coordinator refuses a bad ref before starting its sides, without torch."""
    proc = cli("ab", "no-such-ref", "--project", str(ROOT))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown git ref 'no-such-ref'" in proc.stderr
