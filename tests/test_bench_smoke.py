"""End to end: `pytest bench --benchmark-only` on the tiny profile writes readable results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.results import load_run

ROOT = Path(__file__).resolve().parents[1]
TIME_FIELDS = {
    "case", "impl", "mode", "shape", "tokens", "rank", "dtype", "device", "tokens_per_s",
    "gflops", "gbs", "pct_peak_gemm", "ratio_to_base", "ratio_iqr", "rel_error", "build_s",
    "threads", "tf32", "floor_s",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("results")
    cmd = [
        sys.executable, "-m", "pytest", "bench", "--benchmark-only", "-q", "-p", "no:cacheprovider",
        "--lora-profile", "tiny", "--lora-device", "cpu", "--lora-threads", "1",
        "--lora-results", str(out), "-k", "not compiled",
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
    meta = run["lora_bench"]
    assert (meta["device"], meta["profile"], meta["threads"]) == ("cpu", "tiny", 1)
    assert set(meta["peaks_start"]) == set(meta["peaks_end"]) == {"cpu/fp32"}
    assert run["machine_info"]["lora_bench"]["torch"]
    infos = [b["extra_info"] for b in run["benchmarks"]]
    timed = [i for i in infos if i["kind"] == "time"]
    assert {i["mode"] for i in timed} == {"infer", "train"}
    for info in timed:
        assert set(info) >= TIME_FIELDS, TIME_FIELDS - set(info)
        assert info["threads"] == 1
        assert info["ratio_to_base"] > 0
    assert any(i["kind"] == "memory" and i["peak_bytes"] > 0 for i in infos)
    assert any(i["kind"] == "params" and i["trainable"] == 296 for i in infos)
    for bench in run["benchmarks"]:
        if bench["extra_info"]["kind"] == "time":
            stats, info = bench["stats"], bench["extra_info"]
            assert stats["iterations"] == info["inner"]
            assert stats["median"] == pytest.approx(info["median_s"])


def test_markdown_has_every_table(tiny_run: tuple[Path, str]) -> None:
    md = (tiny_run[0] / "cpu-tiny.md").read_text()
    for title in ("Throughput (infer)", "Ratio to base (infer)", "Throughput (train)",
                  "Ratio to base (train)", "Peak memory", "Trainable parameters"):  # fmt: skip
        assert f"### {title}" in md


def test_recheck_measures_a_flagged_case_again(tiny_run: tuple[Path, str]) -> None:
    from bench import check as gate

    run = load_run(tiny_run[0] / "cpu-tiny.json")
    verdicts = gate.verdicts(run, run)
    flagged = [v for v in verdicts if v.impl == "addmm" and v.mode == "infer"][:1]
    rerun = gate.recheck(flagged, run, ROOT)
    info = rerun[flagged[0].fullname]
    assert info["impl"] == "addmm"
    assert info["ratio_to_base"] > 0
    assert info["rounds"] > run_rounds(run, flagged[0].fullname), "a recheck runs more rounds"


def run_rounds(run: dict, fullname: str) -> int:
    return next(b["extra_info"]["rounds"] for b in run["benchmarks"] if b["fullname"] == fullname)
