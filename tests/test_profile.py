"""`lora-bench profile` and its breakdown on real ops on the CPU: two_step's out-of-place add
that addmm does not have, merged's one GEMM, a breakdown that accounts for the profiled time,
traces that load, and bad input refused before any work."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness.cases import Case
from bench.harness.profiling import profile_entry
from bench.harness.runner import checked_work
from bench.schema.entries import ProfileEntry
from bench.schema.run import load_run

ROOT = Path(__file__).resolve().parents[1]
CASE = Case("gpt2-medium.c_proj", 256, 8)  # about 2 ms a forward on 2 cores


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("profile")


@pytest.fixture(scope="module")
def forward(folder: Path) -> dict[str, ProfileEntry]:
    """Profiles of four impls' forward (warm, not timed in pairs), traces into `folder`."""
    entries = {}
    for name in ("base", "two_step", "addmm", "merged"):
        checked = checked_work(CASE, name, "infer", 1)
        works = (checked.work, checked.base_work)
        entries[name] = profile_entry(CASE, name, "infer", works, name, folder, paired=None)
    return entries


def test_two_step_adds_out_of_place_and_addmm_does_not(forward: dict) -> None:
    assert "aten::add" in forward["two_step"].ops["y add/copy/scale"]
    addmm = forward["addmm"]
    assert not any("aten::add" in names for names in addmm.ops.values())
    assert "aten::addmm_" in addmm.ops["expand"], "the expand accumulates into y in place"
    assert addmm.op_count < forward["two_step"].op_count


def test_merged_is_one_gemm(forward: dict) -> None:
    merged = forward["merged"]
    assert set(merged.cpu_s) == {"base GEMM"}
    assert merged.op_count == forward["base"].op_count


@pytest.mark.parametrize("name", ["base", "two_step", "addmm", "merged"])
def test_breakdown_accounts_for_the_profiled_time(forward: dict, name: str) -> None:
    e = forward[name]
    assert e.wall_s > 1e-3, "a real case: at least 1 ms a call"
    assert sum(e.cpu_s.values()) + e.outside_s == pytest.approx(e.wall_s, rel=0.05)


def test_trace_loads_with_its_ops(forward: dict, folder: Path) -> None:
    e = forward["two_step"]
    trace = json.loads(gzip.decompress((folder / e.trace).read_bytes()))
    names = {ev.get("name") for ev in trace["traceEvents"]}
    assert {"lora-bench two_step infer", "aten::addmm", "aten::add"} <= names
    assert not list(folder.glob(".*")), "no temporary file left behind"


def test_training_step_parts() -> None:
    case = Case("gpt2-medium.c_proj", 64, 8)
    checked = checked_work(case, "two_step", "train", 1)
    e = profile_entry(
        case, "two_step", "train", (checked.work, checked.base_work), "x", paired=None
    )
    assert {"base GEMM", "shrink", "expand"} <= set(e.cpu_s)
    assert "aten::mm" in e.ops["shrink"], "dA and dx through A are the shrink's gradients"


def profile_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bench.cli", "profile", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_writes_traces_entries_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "p"
    proc = profile_cli("gpt2-medium.c_proj T=64 r=8 fp32 cpu", "--impl", "two_step",
                       "--seconds", "0.2", "-o", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Where the time goes (forward, cpu)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "base-infer.trace.json.gz", "profile-infer.json", "profile-infer.md",
        "two_step-infer.trace.json.gz",
    ]  # fmt: skip
    run = load_run(out / "profile-infer.json")
    assert [e.impl for e in run.profiles()] == ["base", "two_step"]
    assert all(
        e.paired_s > 0 and e.base_paired_s > 0 and e.unprofiled_s > 0 for e in run.profiles()
    )
    report = subprocess.run([sys.executable, "-m", "bench.cli", "report",
                             str(out / "profile-infer.json")], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)  # fmt: skip
    assert report.returncode == 0 and "Where the time goes" in report.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["llama3-8b.q_proj", "--tokens", "16", "--rank", "16", "--impl", "nope"],
         "--impl nope: unknown; known: base, two_step"),
        (["llama9.q_proj", "--tokens", "16", "--rank", "16"], "unknown shape 'llama9.q_proj'"),
        (["llama3-8b.q_proj"], "give a shape with --tokens and --rank"),
        (["llama3-8b.q_proj", "--tokens", "16", "--rank", "16", "--nvtx"], "--nvtx needs CUDA"),
        (["llama3-8b.q_proj", "--tokens", "16", "--rank", "16", "--mode", "train", "--impl",
          "merged"], "--impl merged: impl 'merged' supports modes ['infer'], not 'train'"),
        (["llama3-8b.q_proj", "--tokens", "16", "--rank", "16", "--mode", "fast"],
         "invalid choice: 'fast'"),
        (["toy", "--tokens", "100000000000", "--rank", "4", "--impl", "addmm"],
         "toy T=100000000000 r=4 fp32 cpu (infer) needs at least"),
        (["llama3-8b.q_proj", "--tokens", "16", "--rank", "16", "--dtype", "fp16", "--impl",
          "addmm"], "fp16 on the CPU is timed for tiny shapes only"),
        (["llama3-8b.q_proj", "--tokens", "16", "--rank", "16", "--dtype", "bf16"],
         "bf16 on the CPU is timed for tiny shapes only"),
        (["toy", "--tokens", "4", "--rank", "2", "--threads", "0"],
         "--threads: '0': must be a whole number in [1, 2147483647]"),
    ],
)  # fmt: skip
def test_cli_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    proc = profile_cli(*args, "-o", str(tmp_path / "p"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists(), "refused: nothing made"


def test_cli_refuses_a_folder_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    proc = profile_cli("toy", "--tokens", "4", "--rank", "2", "-o", str(blocker / "p"))
    assert proc.returncode == 2 and "cannot write results there" in proc.stderr
    assert blocker.read_text() == "mine"
