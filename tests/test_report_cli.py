"""The lora-bench CLI: report, compare, check (with its memory gate), plot, baseline and export
on small runs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from runs import CASES, make_run, run_json, time_entry

from bench.cli.main import main
from bench.gates import check as gate
from bench.schema.entries import MemoryEntry, TimeEntry
from bench.schema.run import Run

KEY = CASES[1]


def write(path: Path, run: Run) -> Path:
    path.write_text(run_json(run))
    return path


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


@pytest.fixture
def cpu_run(tmp_path: Path) -> Path:
    return write(tmp_path / "cpu-quick.json", make_run())


def test_report_formats(cpu_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = digest(cpu_run)
    assert main(["report", str(cpu_run)]) == 0
    out = capsys.readouterr().out
    assert "### Ratio to base (infer)" in out
    assert "gpt2.c_attn T=512 r=16 fp32 cpu" in out
    assert main(["report", str(cpu_run), "--format", "csv", "--group-by", "impl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("table,case,impl")
    impls = [line.split(",")[2] for line in lines[1:10]]
    assert impls == ["base"] * 3 + ["two_step"] * 3 + ["addmm"] * 3, "the run's impl order"
    assert main(["report", str(cpu_run), "--format", "plain", "--group-by", "rank"]) == 0
    assert digest(cpu_run) == before


def test_compare_matches_cases_and_lists_one_sided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "cpu.json", make_run("cpu", seconds=1e-2))
    gpu = make_run("cuda", seconds=1e-3)
    gpu = replace(gpu, entries=[e for e in gpu.entries if getattr(e, "key", "") != CASES[2]])
    b = write(tmp_path / "cuda.json", gpu)
    out_md = tmp_path / "cpu-vs-cuda.md"
    assert main(["compare", str(a), str(b), "-o", str(out_md)]) == 0
    out = capsys.readouterr().out
    assert "10.00x" in out
    assert "CIs overlap" in out and "| yes " in out  # one ratio to base on both devices
    assert "Geometric mean speed-up per implementation" in out
    assert f"Only in A (3): {CASES[2]} addmm infer" in out
    assert out_md.read_text() == out


def test_compare_refuses_runs_without_common_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_run(profile="quick")
    b = make_run(profile="full")
    b = replace(b, entries=[
        replace(e, key=e.key.replace("fp32", "bf16")) if isinstance(e, TimeEntry) else e
        for e in b.entries
    ])  # fmt: skip
    code = main(["compare", str(write(tmp_path / "a.json", a)), str(write(tmp_path / "b.json", b))])
    assert code == 2
    err = capsys.readouterr().err
    assert "no case is in both runs (profiles 'quick' and 'full')" in err
    assert "Traceback" not in err


def test_check_passes_on_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path / "base.json", make_run())
    # a noisy run: the move is within its spread
    noisy = make_run(ratios={(KEY, "two_step"): 1.12, (KEY, "addmm"): 0.99}, iqr=0.15)
    cur = write(tmp_path / "cur.json", noisy)
    before = digest(base, cur)
    assert main(["check", str(base), str(cur), "--max-slowdown", "5%"]) == 0
    assert "0 regression(s)" in capsys.readouterr().out
    assert digest(base, cur) == before


def test_check_fails_on_a_real_2x_slowdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write(tmp_path / "base.json", make_run())
    cur = write(tmp_path / "cur.json", make_run(ratios={(KEY, "two_step"): 2.1}))
    assert main(["check", str(base), str(cur), "--max-slowdown", "25%"]) == 1
    out = capsys.readouterr().out
    assert "### Regressions" in out
    assert f"| {KEY} cpu | two_step" in out
    assert "+100.0% [" in out  # the change with its 95% CI
    assert "CIs overlap" in out and "| no " in out


def test_check_reports_improvements(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path / "base.json", make_run(ratios={(KEY, "addmm"): 1.6}))
    cur = write(tmp_path / "cur.json", make_run())
    assert main(["check", str(base), str(cur)]) == 0
    assert "### Improvements" in capsys.readouterr().out


def test_check_does_not_judge_a_case_whose_control_is_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both cases slow down by 2x; at one, the current run's A/A control reads 1.2: setups
    alone moved its ratios past half the threshold there, so that case is not judged."""
    far = CASES[2]
    base = write(tmp_path / "base.json", make_run(control=True))
    slow = {(KEY, "two_step"): 2.1, (far, "two_step"): 2.1, (KEY, "base"): 1.2}
    cur = write(tmp_path / "cur.json", make_run(ratios=slow, control=True))
    assert main(["check", str(base), str(cur), "--max-slowdown", "25%"]) == 1
    captured = capsys.readouterr()
    regressions, unjudged = captured.out.split("### Not judged: the A/A control is off")
    assert f"| {far} cpu" in regressions and f"| {KEY} cpu" not in regressions
    assert f"| {KEY} cpu | two_step" in unjudged
    assert "the current run's A/A control reads 1.200" in unjudged
    assert "1 regression(s)" in captured.out and "1 change(s) not judged" in captured.out
    assert f"A/A control, current: 3 cases, the farthest from 1 1.200 at {KEY} cpu" in captured.err
    quiet = write(tmp_path / "quiet.json", make_run(ratios={(KEY, "two_step"): 2.1}))
    assert main(["check", str(base), str(quiet), "--max-slowdown", "25%"]) == 1
    assert "the current run has no A/A control" in capsys.readouterr().err


def test_check_over_setups_needs_the_setups_to_agree() -> None:
    """Pairs of the current run read 12% higher, every pair significant; but its four setups
    read 1.0 and 1.25 by turns: the setups alone move the ratio that far, so no verdict."""
    setups = tuple(k for k in range(4) for _ in range(8))
    base = tuple(1.0 + 0.001 * (i % 3) for i in range(32))
    split = tuple((1.0 if k % 2 else 1.25) + 0.001 * (i % 3) for i, k in enumerate(setups))
    v = gate.Verdict(KEY, "two_step", "infer", "", base, split, setups, setups)
    assert v.p_value < 1e-3 and v.change > 0.1
    lo, hi = v.change_ci
    assert lo < 0 < hi
    assert v.status(0.10, 0.01) == "same"
    steady = tuple(1.25 + 0.001 * (i % 3) for i in range(32))
    assert replace(v, cur_ratios=steady).status(0.10, 0.01) == "regression"


def test_check_warns_when_the_machine_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write(tmp_path / "base.json", make_run(copy_gbs=20.0))
    cur = write(tmp_path / "cur.json", make_run(copy_gbs=12.0))
    assert main(["check", str(base), str(cur)]) == 0
    assert (
        "copy bandwidth cpu/fp32 was 20.0 GB/s in the baseline and 12.0 GB/s"
        in capsys.readouterr().err
    )


def verdict(
    base: float, base_iqr: float, cur: float, cur_iqr: float, name: str = ""
) -> gate.Verdict:
    """A check verdict from two runs of 11 rounds with these medians and IQRs."""
    b = time_entry(KEY, "two_step", "cpu", 1e-3, base, base_iqr).rounds.ratios
    c = time_entry(KEY, "two_step", "cpu", 1e-3, cur, cur_iqr).rounds.ratios
    return gate.Verdict(KEY, "two_step", "infer", name, tuple(b), tuple(c))


def test_noise_guard_needs_all_three_conditions() -> None:
    v = verdict(1.0, 0.02, 1.2, 0.02)
    assert v.p_value < 1e-3
    assert v.status(0.10, 0.01) == "regression"
    assert v.status(0.25, 0.01) == "same"  # below the threshold
    wide = verdict(1.0, 0.3, 1.2, 0.3)
    assert wide.status(0.10, 0.01) == "same"  # beyond the threshold but inside the spread
    few = gate.Verdict(KEY, "two_step", "infer", "", (1.0, 1.01, 0.99), (1.2, 1.21, 1.19))
    assert few.p_value > 0.01  # 3 rounds a side cannot be significant at 1%
    assert few.status(0.10, 0.01) == "same"
    assert few.status(0.10, 0.2) == "regression"


def test_recheck_keeps_the_better_measurement() -> None:
    v = verdict(1.0, 0.01, 1.5, 0.01, "bench/x.py::t[c-two_step]")
    better = time_entry(KEY, "two_step", "cpu", 1e-3, 1.02, iqr=0.02)
    kept = gate.better_of(v, {v.fullname: better})
    assert (kept.cur_ratio, kept.cur_iqr) == (pytest.approx(1.02), pytest.approx(0.02))
    worse = {v.fullname: time_entry(KEY, "two_step", "cpu", 1e-3, 1.9)}
    assert gate.better_of(v, worse).cur_ratio == pytest.approx(1.5)


def test_check_gates_peak_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base_run = make_run()
    base = write(tmp_path / "base.json", base_run)

    def with_peak(peak: int) -> Run:
        entries = [replace(e, peak_bytes=peak) if isinstance(e, MemoryEntry) else e
                   for e in base_run.entries]  # fmt: skip
        return replace(base_run, entries=entries)

    small = write(tmp_path / "small.json", with_peak(3 * 2**20 + 2**19))  # +17%, 0.5 MiB
    assert main(["check", str(base), str(small)]) == 0
    doubled = write(tmp_path / "doubled.json", with_peak(6 * 2**20))
    assert main(["check", str(base), str(doubled)]) == 1
    out = capsys.readouterr().out
    assert "### Regressions: peak memory" in out
    assert "+3.0 MiB (+100.0%)" in out
    assert main(["check", str(base), str(doubled), "--max-memory-growth", "150%"]) == 0


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such results file"),
        ("corrupt", "not valid JSON"),
        ("foreign", "not written by lora-bench"),
        ("other-device", "use compare"),
        ("other-cache", "the baseline ran with a cold cache and the current run with a warm one"),
        ("empty", "nothing to check"),
    ],
)
def test_check_unusable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    base = write(tmp_path / "base.json", make_run())
    cur = tmp_path / "cur.json"
    if setup == "corrupt":
        cur.write_text('{"entries": [')
    elif setup == "foreign":
        cur.write_text(json.dumps({"entries": [], "machine_info": {}}))
    elif setup == "other-device":
        write(cur, make_run("cuda"))
    elif setup == "other-cache":
        write(cur, make_run(cache="warm"))
    elif setup == "empty":
        run = make_run()
        write(cur, replace(run, entries=[e for e in run.entries if e.kind != "time"]))
    assert main(["check", str(base), str(cur)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_threshold_exits_2(cpu_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(cpu_run), str(cpu_run), "--max-slowdown", "fast"]) == 2
    assert "--max-slowdown must look like 10% or 0.1" in capsys.readouterr().err


def test_baseline_refuses_to_overwrite(
    cpu_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(cpu_run)
    assert main(["baseline", str(cpu_run)]) == 0
    target = tmp_path / "baseline-cpu.json"
    assert target.read_bytes() == cpu_run.read_bytes()
    target.write_text("{}")
    assert main(["baseline", str(cpu_run)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert target.read_text() == "{}"
    assert main(["baseline", str(cpu_run), "--force"]) == 0
    assert target.read_bytes() == cpu_run.read_bytes()
    assert digest(cpu_run) == before


def test_plot_writes_readable_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="plot needs the 'plot' extra (matplotlib)")
    cpu = make_run("cpu", seconds=1e-2)
    key64 = KEY.replace("r=16", "r=64")  # the same case at another rank
    extra = [
        replace(e, rank=64, key=key64, case=f"{key64} cpu")
        for e in cpu.times()
        if e.key == CASES[1]
    ]
    cpu = replace(cpu, entries=cpu.entries + extra)
    a = write(tmp_path / "cpu.json", cpu)
    b = write(tmp_path / "cuda.json", make_run("cuda", seconds=1e-3))
    out = tmp_path / "plots"
    assert main(["plot", str(a), str(b), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "cpu-vs-cuda.png",
        "ratio-vs-tokens-cpu.png",
        "ratio-vs-tokens-cuda.png",
        "throughput-vs-rank-cpu.png",
    ]
    for p in out.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_can_leave_an_impl_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write(tmp_path / "base.json", make_run())
    cur = write(tmp_path / "cur.json", make_run(ratios={(KEY, "two_step"): 2.1}))
    assert main(["check", str(base), str(cur), "--ignore", "two_step"]) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_recheck_needs_a_checkout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = write(tmp_path / "base.json", make_run())
    cur = write(tmp_path / "cur.json", make_run(ratios={(KEY, "two_step"): 2.1}))
    monkeypatch.chdir(tmp_path)  # no checkout here or above
    assert main(["check", str(base), str(cur), "--recheck"]) == 2
    err = capsys.readouterr().err
    assert "--recheck runs `pytest bench` in a lora-bench source checkout, and none is at" in err
    assert "pass --project DIR" in err and err.count("\n") == 1
    assert main(["check", str(base), str(cur), "--recheck", "--project", str(tmp_path)]) == 2
    assert "none is at or above" in capsys.readouterr().err
    root = Path(__file__).resolve().parents[1]
    assert gate.find_project(root / "bench") == root


def test_export_writes_ratios_for_github_action_benchmark(cpu_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ratios.json"
    assert (
        main(["export", str(cpu_run), "--format", "github-action-benchmark", "-o", str(out)]) == 0
    )
    entries = json.loads(out.read_text())
    assert len(entries) == 6  # 3 cases x two_step, addmm; base (the A/A control) left out
    first = entries[0]
    assert set(first) == {"name", "unit", "value", "range", "extra"}
    assert first["name"] == "toy T=512 r=4 fp32 cpu · two_step infer"
    assert (first["unit"], first["value"]) == ("x base GEMM", 1.05)


def test_export_refuses_an_unknown_format(cpu_run: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", str(cpu_run), "--format", "csv"])
    assert exc.value.code == 2


def test_agree_reports_two_runs_of_one_setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write(tmp_path / "first.json", make_run(control=True, iqr=0.01))
    moved = {(KEY, "two_step"): 1.12, (CASES[2], "base"): 1.03}
    second = write(tmp_path / "second.json", make_run(ratios=moved, control=True, iqr=0.01))
    before = digest(first, second)
    assert main(["agree", str(first), str(second), "--format", "plain"]) == 0
    out = capsys.readouterr().out
    rows = {line[:42].strip(): line[42:].strip() for line in out.splitlines()}
    assert rows["time entries in both runs"] == "9"
    assert rows["within 5% of each other"] == "8 of 9 (89%)"  # two_step 1.05 to 1.12
    assert rows["at decode (T <= 16)"] == "3 of 3 (100%)"  # the control moved 3%
    assert rows["95% CIs that overlap"] == "7 of 9 (78%)"  # ... outside its CI
    assert "layer lora infer  9" in out, "the family table counts every family's entries"
    assert "A/A control (base on its own allocation)" in out
    assert "1.030 [" in out and "no" in out.split("1.030 [")[1].splitlines()[0]
    assert "The 2 entries that moved most" not in out and "two_step" in out
    assert digest(first, second) == before
    gpu = write(tmp_path / "gpu.json", make_run("cuda"))
    assert main(["agree", str(first), str(gpu)]) == 2
    assert "agree compares two runs of one setup; use compare" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["report", "check", "export"])
def test_an_entry_that_failed_its_oracle_check_is_refused(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A LoRA impl whose error is inf failed its check: its timings cannot stand in a run
    that report, check or export reads. base's training step (no adapter gradient) may."""
    data = json.loads(run_json(make_run()))
    for e in data["entries"]:
        if e.get("impl") == "addmm":
            e["rel_error"] = float("inf")  # what a writer that skipped the check would leave
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    good = write(tmp_path / "good.json", make_run())
    argv = {"report": [str(bad)], "check": [str(good), str(bad)],
            "export": [str(bad), "--format", "github-action-benchmark"]}[command]  # fmt: skip
    assert main([command, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "addmm has an error of inf against its oracle" in err, err
    base_train = time_entry(KEY, "base", "cpu", 1e-3, 1.0, mode="train", control=True)
    assert replace(base_train, rel_error=float("inf")).rel_error == float("inf")
    with pytest.raises(ValueError, match="base has an error of inf"):
        replace(base_train, rel_error=float("inf"), mode="infer")
