"""Bad input refused in one line with exit 2, before any work, and nothing written over an
input: the defects found by trying the commands as a demanding user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from runs import make_run, run_json

from bench.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    path = tmp_path / "cpu-quick.json"
    path.write_text(run_json(make_run("cpu")))
    return path


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A path whose folder cannot exist: its parent is a file."""
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "out.json"


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "args",
    [
        ["export", "{run}", "--format", "github-action-benchmark", "-o", "{run}"],
        ["compare", "{run}", "{run}", "-o", "{run}"],
        ["agree", "{run}", "{run}", "-o", "{run}"],
        ["baseline", "{run}", "--dir", "{folder}", "--force"],
    ],
)
def test_no_command_writes_over_its_input(
    run_file: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = run_file.read_bytes()
    argv = [a.format(run=run_file, folder=run_file.parent) for a in args]
    if args[0] == "baseline":  # the run itself named baseline-cpu.json
        run_file = run_file.rename(run_file.parent / "baseline-cpu.json")
        argv = [a.replace("cpu-quick.json", "baseline-cpu.json") for a in argv]
    assert main(argv) == 2
    assert str(run_file) in one_line(capsys)
    assert run_file.read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        ["export", "{run}", "--format", "github-action-benchmark", "-o", "{out}"],
        ["compare", "{run}", "{run}", "-o", "{out}"],
        ["agree", "{run}", "{run}", "-o", "{out}"],
        ["plot", "{run}", "-o", "{out}"],
    ],
)
def test_an_unwritable_output_names_the_path_asked_for(
    run_file: Path, blocked: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.format(run=run_file, out=blocked) for a in args]) == 2
    err = one_line(capsys)
    assert str(blocked) in err and ".tmp" not in err


def test_ab_checks_its_outputs_before_measuring(
    blocked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ab", "HEAD", "--project", str(ROOT), "--json", str(blocked)]) == 2
    err = one_line(capsys)
    assert "--json" in err and str(blocked) in err
    assert capsys.readouterr().out == ""  # no side started, nothing timed


@pytest.mark.parametrize("alpha", ["inf", "-inf", "nan", "0"])
def test_plan_refuses_an_alpha_that_is_not_a_finite_positive_number(
    alpha: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "gpt2", "--targets", "attn", f"--alpha={alpha}"]) == 2
    assert "alpha must be a finite number > 0" in one_line(capsys)


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "bench", "--benchmark-only", "-q",
           "-p", "no:cacheprovider", "--lora-profile", "tiny", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_lora_only_matching_nothing_exits_2_with_the_profiles_cases() -> None:
    proc = bench("--lora-only", "toy T=512 r=4 fp32 cpu")  # quick's id, not tiny's
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no such case in profile 'tiny'; its cases: toy T=16 r=4 fp32 cpu" in proc.stderr


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_lora_threads_below_one_is_refused(threads: str) -> None:
    proc = bench("--lora-threads", threads)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"--lora-threads: '{threads}': must be a whole number in [1, 2147483647]" in proc.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [("--lora-target", "0"), ("--lora-target", "-1%"), ("--lora-seconds", "inf"),
     ("--lora-seconds", "x")],
)  # fmt: skip
def test_a_budget_or_target_that_is_not_a_positive_number_is_a_usage_error(
    option: str, value: str
) -> None:
    proc = bench(f"{option}={value}")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"argument {option}: '{value}'" in proc.stderr


def test_an_unwritable_results_folder_is_refused_before_any_benchmark(blocked: Path) -> None:
    proc = bench("--lora-results", str(blocked.parent / "results"))
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"--lora-results: {blocked.parent / 'results'}: cannot write" in proc.stderr
    assert "passed" not in proc.stdout
