"""End to end: `pytest bench --benchmark-only` on the tiny profile writes readable results,
with a plugin given by --lora-impl, and the installed example plugin when it is there."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from bench.harness import allocator
from bench.schema.entries import TimeEntry
from bench.schema.run import load_run

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests/sample_plugin.py:IMPLS"
TOY_INSTALLED = any(ep.name == "toy_einsum" for ep in entry_points(group="lora_bench.impls"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("results")
    cmd = [
        sys.executable, "-m", "pytest", "bench", "--benchmark-only", "-q", "-p", "no:cacheprovider",
        "--lora-profile", "tiny", "--lora-device", "cpu", "--lora-threads", "1",
        "--lora-results", str(out), "-k", "not compiled", f"--lora-impl={PLUGIN}",
        "--lora-trace", str(out.parent / "traces"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_results_files_appear(tiny_run: tuple[Path, str]) -> None:
    out, stdout = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["cpu-tiny.json", "cpu-tiny.md"]
    assert "lora-bench: wrote" in stdout


def test_json_has_the_expected_fields(tiny_run: tuple[Path, str]) -> None:
    run = load_run(tiny_run[0] / "cpu-tiny.json")
    meta = run.meta
    assert (meta.device, meta.profile, meta.threads) == ("cpu", "tiny", 1)
    assert set(meta.peaks_start) == set(meta.peaks_end) == {"cpu/fp32"}
    assert meta.torch and meta.shapes[0] == "toy"
    assert meta.impl_specs == [f"{ROOT / 'tests' / 'sample_plugin.py'}:IMPLS"]
    assert run.machine_info["lora_bench"]["threads"] == 1
    timed = run.times()
    assert {e.mode for e in timed} == {"infer", "train"}
    for e in timed:
        assert e.threads == 1
        assert e.ratio_to_base > 0
        assert len(e.rounds.impl_s) == len(e.rounds.base_s) >= 3
        assert e.floor_s > 0 and e.flops > 0
    assert any(e.peak_bytes > 0 for e in run.memory())
    assert any(e.trainable == 296 for e in run.params())
    assert meta.cache == "cold" and meta.cache_bytes > 0
    assert meta.allocator in (allocator.FIXED, allocator.DEFAULT)
    assert all(e.copies > 1 for e in timed), "a cold run rotates copies past the cache"
    checks = {e.impl: e for e in run.timer_checks()}
    assert set(checks) == {"base", "two_step"}, "triton_fused skips on a CPU"
    for e in checks.values():
        assert e.ours_s > 0 and e.references["torch.utils.benchmark"] > 0
    raw = json.loads((tiny_run[0] / "cpu-tiny.json").read_text())
    assert raw["lora_bench"]["schema"] == 2
    assert "benchmarks" not in raw, "our own schema, not pytest-benchmark's file"


def test_plugins_are_checked_timed_and_tabled(tiny_run: tuple[Path, str]) -> None:
    run = load_run(tiny_run[0] / "cpu-tiny.json")
    origins = {i.name: i.origin for i in run.meta.impls}
    assert origins["sample_addmm"] == origins["sample_strided"] == "plugin"
    assert origins["peft"] == "peer" and origins["addmm"] == "ours"
    by_impl = {(e.impl, e.mode): e for e in run.times() if e.case == "toy T=16 r=4 fp32 cpu"}
    assert by_impl[("sample_addmm", "train")].rel_error < 1e-5
    strided = by_impl[("sample_strided", "infer")]
    assert strided.copied_output and not by_impl[("sample_addmm", "infer")].copied_output
    md = (tiny_run[0] / "cpu-tiny.md").read_text()
    plugins_line = next(line for line in md.splitlines() if line.startswith("- plugins: "))
    assert "sample_addmm (" in plugins_line and "sample_strided (" in plugins_line
    assert "sample_strided: output not contiguous" in md
    if not TOY_INSTALLED:
        pytest.skip("the example plugin is not installed: pip install -e examples/toy_plugin")
    assert origins["toy_einsum"] == "plugin"
    assert isinstance(by_impl[("toy_einsum", "train")], TimeEntry)
    assert "toy_einsum" in md.split("### Ratio to base (infer)")[1].split("###")[0]


def test_markdown_has_every_table(tiny_run: tuple[Path, str]) -> None:
    md = (tiny_run[0] / "cpu-tiny.md").read_text()
    for title in ("Throughput (infer)", "Ratio to base (infer)", "Throughput (train)",
                  "Ratio to base (train)", "Cold-cache check (decode)", "Timer check",
                  "Peak memory", "Trainable parameters", "Where the time goes (forward, cpu)",
                  "Where the time goes (training step, cpu)"):  # fmt: skip
        assert f"### {title}" in md
    assert f"- malloc: {load_run(tiny_run[0] / 'cpu-tiny.json').meta.allocator}" in md


def test_recheck_measures_a_flagged_case_again(tiny_run: tuple[Path, str]) -> None:
    from bench.gates import check as gate

    run = load_run(tiny_run[0] / "cpu-tiny.json")
    verdicts = gate.verdicts(run, run)
    flagged = [
        v
        for v in verdicts
        if v.impl in ("addmm", "sample_addmm") and v.mode == "infer" and "T=16" in v.case
    ]
    assert len(flagged) == 2
    rerun = gate.recheck(flagged, run, gate.find_project(ROOT / "tests"))
    rounds = {e.fullname: len(e.rounds.impl_s) for e in run.times()}
    for v in flagged:
        e = rerun[v.fullname]
        assert e.impl == v.impl
        assert e.ratio_to_base > 0
        assert len(e.rounds.impl_s) > rounds[v.fullname], "a recheck runs more rounds"


def test_bad_plugin_is_a_usage_error(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "pytest", "bench", "--benchmark-only", "-q", "-p",
        "no:cacheprovider", "--lora-profile", "tiny", "--lora-results", str(tmp_path),
        "--lora-impl", "no_such_module_here:IMPL",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        "plugin 'no_such_module_here:IMPL': importing 'no_such_module_here' failed: "
        "ModuleNotFoundError" in proc.stderr
    )
    assert not list(tmp_path.iterdir()), "nothing is written"


def test_model_bench_is_checked_timed_and_tabled(tiny_run: tuple[Path, str]) -> None:
    from bench.families.models import missing

    if missing():
        pytest.skip(missing())
    run = load_run(tiny_run[0] / "cpu-tiny.json")
    got = {(e.mode, e.variant): e for e in run.models()}
    want = {("infer", v) for v in ("peft", "peft_merged", "addmm", "fused")} | {
        ("train", v) for v in ("peft", "addmm", "fused")
    }
    assert set(got) == want
    assert got[("train", "fused")].trainable == got[("train", "peft")].trainable
    assert (
        "fused: our `autograd` with attention's q, k and v"
        in (tiny_run[0] / "cpu-tiny.md").read_text()
    )
    for e in got.values():
        assert e.case == "llama-tiny attn T=32 r=16 fp32 cpu" and e.threads == 1
        assert e.ratio_to_base > 0 and len(e.rounds.impl_s) >= 3
        assert e.rel_error <= 1e-4 and 0 < e.adapted_share < 1 and 0 < e.base_share < 1
        assert e.adapted_layers == 8 and e.peak_bytes > 0  # q, k, v, o of 2 blocks
    assert got[("infer", "peft_merged")].trainable == 0
    trainable = 2 * 16 * (128 + 96 + 96 + 128)  # q, k (kv 32), v, o of 2 blocks of hidden 64
    assert got[("train", "addmm")].trainable == got[("train", "peft")].trainable == trainable
    assert got[("train", "addmm")].peak_bytes > got[("infer", "addmm")].peak_bytes
    md = (tiny_run[0] / "cpu-tiny.md").read_text()
    assert "### Models (forward)" in md and "### Models (training step)" in md
    assert "### Planner (r=16" in md and "| llama3-8b   | attn" in md


def test_multi_bench_is_checked_timed_and_tabled(tiny_run: tuple[Path, str]) -> None:
    run = load_run(tiny_run[0] / "cpu-tiny.json")
    got = {e.variant: e for e in run.multi()}
    assert set(got) == {"segments", "single:addmm"}
    multi, single = got["segments"], got["single:addmm"]
    assert multi.case == "gpt2-medium.c_proj T=256 n=4 uniform r=mixed fp32 cpu"
    assert single.case == "gpt2-medium.c_proj T=256 n=1 identical r=16 fp32 cpu"
    assert (multi.origin, single.origin) == ("ours", "single") and multi.r_max == 16
    for e in got.values():
        assert e.ratio_to_base > 0 and len(e.rounds.impl_s) >= 3 and e.threads == 1
        assert e.rel_error <= 1e-5 and e.peak_bytes > 0
    assert multi.in_use == 4
    md = (tiny_run[0] / "cpu-tiny.md").read_text()
    assert "### Multi-adapter batches" in md and "| single:addmm" in md


def test_dora_bench_is_checked_timed_and_tabled(tiny_run: tuple[Path, str]) -> None:
    run = load_run(tiny_run[0] / "cpu-tiny.json")
    variant = {i.name: i.variant for i in run.meta.impls}
    dora = [e for e in run.times() if variant[e.impl] == "dora"]
    assert {e.case for e in dora} == {"toy T=512 r=8 fp32 cpu"}, "the tiny profile's DoRA case"
    ran = {(e.impl, e.mode) for e in dora}
    ours = {"dora_dense", "dora_factored", "dora_autograd"}
    assert ran >= {(i, m) for i in ours for m in ("infer", "train")}
    assert {("dora_cached", "infer"), ("dora_merged", "infer")} <= ran
    assert ("dora_cached", "train") not in ran
    for e in dora:
        assert e.rel_error <= 1e-5 and e.ratio_to_base > 0
    peaks = {(e.impl, e.mode) for e in run.memory() if variant[e.impl] == "dora"}
    assert ("dora_autograd", "train") in peaks
    md = (tiny_run[0] / "cpu-tiny.md").read_text()
    assert "### DoRA: ratio to base" in md and "### DoRA: peak memory" in md
    assert "dora_" not in md.split("### Ratio to base (infer)")[1].split("###")[0]


def test_breakdown_and_traces(tiny_run: tuple[Path, str]) -> None:
    """The breakdown family's entries take their paired timing from the timed benchmarks, and
    --lora-trace leaves a trace of each timed (case, impl, mode) that loads."""
    run = load_run(tiny_run[0] / "cpu-tiny.json")
    profiles = {(e.impl, e.mode): e for e in run.profiles()}
    assert {("base", "infer"), ("two_step", "train"), ("merged", "infer")} <= set(profiles)
    assert ("merged", "train") not in profiles, "merged has no training step"
    assert "aten::add" in profiles[("two_step", "infer")].ops["y add/copy/scale"]
    md = (tiny_run[0] / "cpu-tiny.md").read_text()
    where = md.split("### Where the time goes (forward, cpu)")[1].split("###")[0]
    assert re.search(r"\| toy T=512 r=8 fp32 cpu +\| two_step +\|", where)
    folder = tiny_run[0].parent / "traces" / "toy_T512_r8_fp32_cpu"
    trace = json.loads(gzip.decompress((folder / "addmm-train.trace.json.gz").read_bytes()))
    assert any(ev.get("name") == "lora-bench addmm train" for ev in trace["traceEvents"])


def test_tp_bench_checks_and_times_every_split(tiny_run: tuple[Path, str]) -> None:
    run = load_run(tiny_run[0] / "cpu-tiny.json")
    got = {(e.parallel, e.adapter, e.adapters): e for e in run.tp()}
    if not got:
        pytest.skip("torch.distributed is not available")
    assert len(got) == 12  # each split training one adapter, and serving a batch of three
    for e in got.values():
        assert e.rel_error <= 1e-5 and e.world == 2 and e.backend == "gloo"
        assert e.peak_bytes > 0 and len(e.rounds.impl_s) >= 3
        if e.adapters:  # forward: a column-parallel base has no collective of its own
            assert e.adapters == 3 and e.mode == "infer"
            assert e.comm_bytes > e.base_comm_bytes or e.adapter != "fully_sharded"
        else:
            assert e.comm_bytes > e.base_comm_bytes > 0
