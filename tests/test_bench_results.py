"""Result files: atomic writes, clear load errors, and well-formed tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from runs import make_run

from bench.results import ResultError, dump_json, load_run, write_atomic
from bench.tables import fmt_bytes, fmt_seconds, render, run_markdown, run_tables


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


def test_load_run_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "cpu-quick.json"
    path.write_text(dump_json(make_run()))
    run = load_run(path)
    assert run["lora_bench"]["device"] == "cpu"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such results file"),
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "not a pytest-benchmark JSON"),
        (json.dumps({"benchmarks": []}), "not written by lora-bench"),
        (
            json.dumps({"benchmarks": [], "lora_bench": {"profile": "q", "device": "cpu"}}),
            "schema None",
        ),
    ],
)
def test_load_run_errors(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ResultError, match=match):
        load_run(path)


def test_load_run_rejects_foreign_benchmarks(tmp_path: Path) -> None:
    run = make_run()
    run["benchmarks"].append({"name": "test_other", "extra_info": {}})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(run))
    with pytest.raises(ResultError, match="has no lora-bench extra_info"):
        load_run(path)


def test_tables_are_well_formed() -> None:
    run = make_run()
    tables = run_tables(run)
    assert [t.title for t in tables] == [
        "Throughput (infer)",
        "Ratio to base (infer)",
        "Roofline (infer)",
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
    assert csv_text.splitlines()[0].startswith("table,case,impl,median")
    assert "Ratio to base (infer)" in render(tables, "plain")


def test_units() -> None:
    assert fmt_seconds(2.5e-6) == "2.5 µs"
    assert fmt_seconds(0.0123) == "12.30 ms"
    assert fmt_seconds(3.0) == "3.00 s"
    assert fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert fmt_bytes(2048) == "2 KiB"
