"""`lora-bench run` and the bench options it shares with the pytest plugin: one table of
options, refusals in one line with exit 2 before anything is measured, and a run from a
folder outside the checkout that writes only to that folder's results/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.harness.cache import CACHE_MODES
from bench.harness.cases import DTYPES, PROFILES
from bench.plugin.options import CACHE_CHOICES, DTYPE_NAMES, OPTIONS, PROFILE_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_the_option_table_matches_the_harness() -> None:
    assert tuple(PROFILES) == PROFILE_NAMES
    assert set(DTYPE_NAMES) == set(DTYPES)
    assert CACHE_CHOICES == CACHE_MODES
    assert len({o.name for o in OPTIONS}) == len(OPTIONS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--profile", "huge"], "invalid choice: 'huge'"),
        (["run", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["run", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["report", "x.json", "--", "-k", "forward"], "`sweep` pass options after --"),
        (["check", "a.json", "b.json", "--max-slowdown", "-5%"], "goes after '='"),
        (["run", "--target", "0"], "--target: '0': must be a number > 0, as 1% or 0.01"),
        (["run", "--target", "1.5"], "--target: '1.5': must be under 100%"),
        (["run", "--seconds", "nan"], "--seconds: 'nan': must be a finite number > 0"),
        (["ab", "HEAD", "--target", "x%"], "--target: 'x%': must be a number > 0"),
        (["ab", "HEAD", "--seconds=-1"], "--seconds: '-1': must be a finite number > 0"),
        (["run", "--threads", "0"], "--threads: '0': must be a whole number in [1, 2147483647]"),
        (
            ["profile", "toy", "--threads", "0"],
            "--threads: '0': must be a whole number in [1, 2147483647]",
        ),
        (
            ["ab", "HEAD", "--threads", "0"],
            "--threads: '0': must be a whole number in [1, 2147483647]",
        ),
        (["run", "--shard", "3/2"], "--shard: shard 3/2: i must be in 1..N"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_run_hands_pytest_each_option_as_its_command_line_writes_it() -> None:
    """`--shard 1/2` reached pytest as `--lora-shard (1, 2)`, which it refused every time."""
    from bench.cli.main import parser
    from bench.cli.run import pytest_argv

    args = parser().parse_args(["run", "--shard", "1/2", "--target", "1%", "--threads", "2"])
    argv = pytest_argv(args, [])
    assert argv[argv.index("--lora-shard") + 1] == "1/2"
    assert argv[argv.index("--lora-target") + 1] == "0.01"
    assert argv[argv.index("--lora-threads") + 1] == "2"


def test_a_results_folder_is_checked_without_making_it(tmp_path: Path) -> None:
    from bench.schema.io import ResultError, check_writable

    check_writable(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == [], "a refused run must leave no folder behind"
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ResultError, match="is not a folder"):
        check_writable(tmp_path / "a-file" / "results")


def test_unwritable_results_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["run", "--profile", "tiny", "--results", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker / "results") in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.slow
def test_a_run_from_another_folder_writes_there_only(tmp_path: Path) -> None:
    """The installed benchmark modules run (`--pyargs bench`) and the results land in the
    current folder's results/, not in the checkout's."""
    before = sorted(p.name for p in (ROOT / "results").iterdir())
    cmd = [sys.executable, "-m", "bench.cli.main", "run", "--profile", "tiny", "--threads", "1",
           "--only", "toy T=16 r=4 fp32 cpu", "--", "-q", "-k", "forward and addmm"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "cpu-tiny.json",
        "cpu-tiny.md",
    ]
    assert sorted(p.name for p in (ROOT / "results").iterdir()) == before


def test_the_plugin_is_idle_outside_the_bench(pytestconfig: pytest.Config) -> None:
    """This session runs unit tests: the plugin loaded (its options exist) but set nothing
    up, so the thread count and the registry are the tests' own."""
    from bench.plugin.hooks import STARTED

    assert pytestconfig.getoption("lora_profile") == "quick"
    assert pytestconfig.stash.get(STARTED, False) is False


def test_a_deadline_that_cuts_every_benchmark_says_so_and_records_it(tmp_path: Path) -> None:
    from bench.schema.run import load_run

    cmd = [sys.executable, "-m", "pytest", "bench/test_forward.py", "--benchmark-only", "-q",
           "-p", "no:cacheprovider", "--lora-profile", "tiny", "--lora-device", "cpu",
           "--lora-deadline", "1e-9", "--lora-results", str(tmp_path), "-k", "addmm"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "--lora-deadline 1e-09 s passed before it started" in proc.stdout
    assert " passed" not in proc.stdout.splitlines()[-1], "no benchmark started"
    assert "passed before any benchmark started: 2 not run, nothing measured" in proc.stdout
    run = load_run(tmp_path / "cpu-tiny.json")
    assert run.entries == [] and len(run.meta.not_run) == 2
    assert "- cut short: 2 benchmark(s) not started" in (tmp_path / "cpu-tiny.md").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_with_a_run_killed_by_sigkill(tmp_path: Path) -> None:
    """`lora-bench run` starts pytest, which starts the memory probe; a SIGKILL of run once
    left pytest running. Each child now asks the kernel to die with its parent."""
    import signal
    import time

    import psutil

    cmd = [sys.executable, "-m", "bench.cli.main", "run", "--profile", "tiny", "--threads", "1",
           "--results", str(tmp_path / "r"), "--", "-q", "-k", "memory or forward"]  # fmt: skip
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    parent = psutil.Process(run.pid)
    deadline = time.monotonic() + 120
    grandchildren: list[psutil.Process] = []
    while time.monotonic() < deadline and not grandchildren:  # pytest, then its probe
        time.sleep(0.2)
        grandchildren = [c for child in parent.children() for c in child.children()]
    assert grandchildren, "pytest started no child in time (the memory benchmarks' probe)"
    family = [*parent.children(recursive=True)]
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    _, alive = psutil.wait_procs(family, timeout=5)  # the run had half a minute left
    assert not alive, f"outlived their parent: {[p.cmdline()[:4] for p in alive]}"
