"""Result files: the typed schema round-trips, atomic writes, clear load errors, and
well-formed tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from runs import make_run, run_json, time_entry

from bench.cli.main import main
from bench.report.base import fmt_bytes, fmt_seconds, render
from bench.report.document import run_markdown, run_tables
from bench.report.figures import paired_times
from bench.report.layer import throughput_table
from bench.schema.entries import TimeEntry
from bench.schema.io import ResultError, clean_stale, write_atomic, write_together
from bench.schema.run import SCHEMA, entry_dict, load_run, markdown_mismatch


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.json"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_interrupted_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.json"
    write_atomic(path, "old")

    def crash(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new" * 1000)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_kill_between_a_pair_s_renames_is_told_by_the_md(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON is renamed into place first; a process killed right after leaves the new
    JSON beside the old run's .md, which names the old run: report says so."""
    old, new = (replace(make_run(), meta=replace(make_run().meta, run_id=i)) for i in "ab")
    json_path, md = tmp_path / "cpu-quick.json", tmp_path / "cpu-quick.md"
    write_together({json_path: run_json(old), md: run_markdown(old)})
    assert "- run: a (" in md.read_text() and markdown_mismatch(json_path, old) is None
    renames = []

    def killed_after_one(src: str, dst: str) -> None:
        if renames:
            raise KeyboardInterrupt  # what SIGKILL does between the two, as far as files go
        renames.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        write_together({json_path: run_json(new), md: run_markdown(new)})
    monkeypatch.undo()
    assert load_run(json_path).meta.run_id == "b" and "- run: a (" in md.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-quick.json", "cpu-quick.md"]
    assert main(["report", str(json_path)]) == 0
    err = capsys.readouterr().err
    assert "cpu-quick.md is run a's tables, not this run's (b)" in err


def test_a_killed_writer_s_temporaries_go_with_the_next_write(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    left = tmp_path / f".cpu-quick.json.{dead}.x1y2.tmp"
    left.write_text("half a run")
    live = tmp_path / f".cpu-quick.json.{os.getppid()}.z3.tmp"  # a writer still at work
    live.write_text("being written")
    write_atomic(tmp_path / "cpu-quick.json", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cpu-quick.json", live.name])
    assert clean_stale(tmp_path) == []


def test_load_run_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "cpu-quick.json"
    run = make_run()
    path.write_text(run_json(run))
    back = load_run(path)
    assert back == run, "what the writer writes, the reader reads back unchanged"
    data = json.loads(path.read_text())
    assert data["lora_bench"]["schema"] == SCHEMA
    assert data["lora_bench"]["shapes"] == ["toy", "gpt2.c_attn", "llama3-8b.q_proj"]
    assert [i["name"] for i in data["lora_bench"]["impls"]] == ["base", "two_step", "addmm"]
    first = data["entries"][1]
    assert first["kind"] == "time"
    assert first["ratio_to_base"] == pytest.approx(1.05), "summaries are written for readers"


def test_a_run_cut_short_says_so(tmp_path: Path) -> None:
    """--lora-deadline's skips and malloc's settings round-trip and head the report; a file
    written before they were recorded reads as a run that was not cut short."""
    run = make_run()
    meta = replace(run.meta, deadline=225.0, not_run=["test_forward[a]", "test_forward[b]"],
                   allocator="glibc, mmap threshold 32 MiB, trim 64 MiB")  # fmt: skip
    cut = replace(run, meta=meta)
    path = tmp_path / "cpu-quick.json"
    path.write_text(run_json(cut))
    assert load_run(path) == cut
    md = run_markdown(cut)
    assert "- cut short: 2 benchmark(s) not started, past --lora-deadline 225 s" in md
    assert "- malloc: glibc, mmap threshold 32 MiB, trim 64 MiB" in md
    data = json.loads(run_json(run))
    for key in ("deadline", "not_run", "allocator"):
        del data["lora_bench"][key]
    path.write_text(json.dumps(data))
    old = load_run(path).meta
    assert (old.deadline, old.not_run, old.allocator) == (None, [], "")
    assert "cut short" not in run_markdown(load_run(path))


def test_time_entry_summaries_come_from_the_rounds() -> None:
    e = make_run(ratios={("toy T=512 r=4 fp32", "two_step"): 1.3}, iqr=0.1).times()[1]
    assert isinstance(e, TimeEntry)
    assert e.impl == "two_step"
    assert e.ratio_to_base == pytest.approx(1.3)
    assert e.ratio_iqr == pytest.approx(0.1)
    assert entry_dict(e)["ratio_iqr"] == pytest.approx(0.1)


def _mutated(change: str) -> str:
    data = json.loads(run_json(make_run()))
    if change == "old schema":
        data = {"benchmarks": [], "lora_bench": {"schema": 1, "profile": "q", "device": "cpu"}}
    elif change == "newer schema":
        data["lora_bench"]["schema"] = SCHEMA + 1
    elif change == "missing field":
        del data["entries"][0]["rounds"]
    elif change == "wrong type":
        data["entries"][0]["tokens"] = "many"
    elif change == "unknown kind":
        data["entries"][0]["kind"] = "energy"
    elif change == "bad meta":
        del data["lora_bench"]["impls"]
    elif change == "unpaired rounds":
        data["entries"][0]["rounds"]["base_s"].pop()
    return json.dumps(data)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such results file"),
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "not a lora-bench results file"),
        (json.dumps({"benchmarks": []}), "not written by lora-bench"),
        (_mutated("old schema"), "results schema 1, written by an older lora-bench; this "
         f"version reads schema {SCHEMA}: run `pytest bench --benchmark-only` again"),
        (_mutated("newer schema"), f"schema {SCHEMA + 1}, written by another lora-bench"),
        (_mutated("missing field"), r"entry 0 \(time\) lacks rounds"),
        (_mutated("wrong type"), r"entry 0 \(time\).tokens must be int, got 'many'"),
        (_mutated("unknown kind"), "entry 0 has kind 'energy'; known: time, memory, params"),
        (_mutated("bad meta"), "lora_bench lacks impls"),
        (_mutated("unpaired rounds"), "as many base as impl rounds"),
    ],
)  # fmt: skip
def test_load_run_errors(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ResultError, match=match):
        load_run(path)


def test_tables_are_well_formed() -> None:
    run = make_run()
    tables = run_tables(run)
    assert [t.title for t in tables] == [
        "Throughput (infer)",
        "Ratio to base (infer)",
        "Roofline (infer)",
        "Cold-cache check (decode)",
        "Peak memory",
        "Trainable parameters",
    ]
    for t in tables:
        assert all(len(row) == len(t.headers) for row in t.rows), t.title
    md = run_markdown(run)
    assert md.startswith("# lora-bench results: cpu, profile quick")
    for block in md.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("|"):
            assert len({line.count("|") for line in lines}) == 1, block
    assert "| toy T=512 r=4 fp32 cpu" in md
    assert "296" in md


def test_render_formats() -> None:
    tables = run_tables(make_run())
    csv_text = render(tables, "csv")
    assert csv_text.splitlines()[0].startswith("table,case,impl,time,tokens/s")
    assert "Ratio to base (infer)" in render(tables, "plain")


def test_units() -> None:
    assert fmt_seconds(2.5e-6) == "2.5 µs"
    assert fmt_seconds(0.0123) == "12.30 ms"
    assert fmt_seconds(3.0) == "3.00 s"
    assert fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert fmt_bytes(2048) == "2 KiB"


def test_throughput_derives_from_the_paired_ratio_and_one_base_time() -> None:
    """An impl timed minutes later on a slower machine (both its rounds and its paired base
    rounds 1.5x slower) shows its paired ratio against the case's one base time, not its own
    drifted median."""
    key = "toy T=512 r=4 fp32"
    run = make_run(seconds=1e-3, ratios={(key, "addmm"): 0.994})
    slow = time_entry(key, "addmm", "cpu", 1.5e-3, 0.994)
    run = replace(run, entries=[slow if getattr(e, "impl", "") == "addmm" and e.key == key
                                else e for e in run.entries])  # fmt: skip
    assert slow.median_s == pytest.approx(1.5 * 0.994e-3)
    times = paired_times(run.times("infer"))
    assert times[(f"{key} cpu", "addmm")] == pytest.approx(0.994 * times[(f"{key} cpu", "base")])
    table = throughput_table(run, "infer")
    rows = {(r[0], r[1]): r for r in table.rows}
    assert rows[(f"{key} cpu", "base")][2] == "1.00 ms"  # median base time of the case
    assert rows[(f"{key} cpu", "addmm")][2] == "994.0 µs"
