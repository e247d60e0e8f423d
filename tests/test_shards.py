"""Sharded sweeps: --lora-shard's deterministic, balanced shards, and `lora-bench merge`
joining the shards' results (refusing shards that do not belong together); end to end, the
tiny profile in two shards, merged, holds the entries of the unsharded run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from runs import make_run

from bench.cli.main import main
from bench.cli.merge import merge_runs
from bench.families.budget import QUICK, expected_seconds
from bench.harness.shards import assign
from bench.plugin.options import parse_shard
from bench.schema.io import ResultError
from bench.schema.run import Run, dump_run, load_run

ROOT = Path(__file__).resolve().parent.parent


def test_shards_are_parsed_and_refused_clearly() -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad, match in (
        ("0/4", r"i must be in 1\.\.N"),
        ("5/4", r"i must be in 1\.\.N"),
        ("2", "written i/N"),
        ("a/b", "written i/N"),
        ("-1/2", "written i/N"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_shard(bad)


def test_assign_balances_seconds_not_counts_and_is_deterministic() -> None:
    seconds = {"long": 10.0, **{f"short{i}": 1.0 for i in range(10)}}
    shards = assign(seconds, 2)
    assert sorted(n for s in shards for n in s) == sorted(seconds)
    loads = [sum(seconds[n] for n in s) for s in shards]
    assert loads == [10.0, 10.0]  # the long one alone; the ten short ones together
    assert assign(seconds, 2) == shards
    assert assign({}, 3) == [[], [], []]
    assert [len(s) for s in assign({"a": 1.0}, 3)] == [1, 0, 0]


def test_expected_seconds_come_from_the_measured_quick_budgets() -> None:
    fwd = QUICK["bench/test_forward.py"]
    assert expected_seconds("bench/test_forward.py") == fwd.seconds / fwd.benchmarks
    assert expected_seconds("/site-packages/bench/test_forward.py") == expected_seconds(
        "bench/test_forward.py")  # fmt: skip
    assert expected_seconds("bench/test_new_family.py") == 1.0


def sharded(run: Run, shard: str, keep: slice) -> Run:
    meta = dataclasses.replace(run.meta, shard=shard)
    return Run(meta, run.machine_info, {"id": "abc"}, run.entries[keep])


def test_merge_joins_shards_and_refuses_what_does_not_belong(tmp_path: Path) -> None:
    run = make_run()
    half = len(run.entries) // 2
    a, b = sharded(run, "1/2", slice(0, half)), sharded(run, "2/2", slice(half, None))
    merged = merge_runs({"a": a, "b": b})
    assert merged.entries == run.entries and merged.meta.shard == ""
    with pytest.raises(ResultError, match=r"missing shard\(s\) 2/2 of 2"):
        merge_runs({"a": a})
    assert merge_runs({"a": a}, partial=True).entries == a.entries
    with pytest.raises(ResultError, match=r"shard 1/2 given twice: a and c"):
        merge_runs({"a": a, "c": a, "b": b})
    overlap = sharded(run, "2/2", slice(half - 1, None))
    with pytest.raises(ResultError, match=r"is in two shards: a and o"):
        merge_runs({"a": a, "o": overlap})
    other = Run(dataclasses.replace(b.meta, profile="full"), {}, {"id": "abc"}, b.entries)
    with pytest.raises(ResultError, match=r"shards of different profile: a: quick, x: full"):
        merge_runs({"a": a, "x": other})
    moved = Run(b.meta, {}, {"id": "def"}, b.entries)
    with pytest.raises(ResultError, match=r"shards of different commits"):
        merge_runs({"a": a, "m": moved})
    with pytest.raises(ResultError, match=r"not the results of a shard"):
        merge_runs({"a": a, "w": run})
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(dump_run(r))
    out = tmp_path / "merged.json"
    shard_files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert main(["merge", *shard_files, "-o", str(out)]) == 0
    assert load_run(out).entries == run.entries
    before = out.read_bytes()
    assert main(["merge", *shard_files, "-o", str(out)]) == 2
    assert out.read_bytes() == before  # not replaced without --force
    assert main(["merge", str(tmp_path / "a.json"), "-o", str(tmp_path / "a.json")]) == 2


def bench(out: Path, *extra: str) -> Run:
    cmd = [sys.executable, "-m", "pytest", "bench/test_params.py", "bench/test_multi.py",
           "--benchmark-only", "-q", "-p", "no:cacheprovider", "--lora-profile", "tiny",
           "--lora-device", "cpu", "--lora-threads", "1", "--lora-results", str(out),
           *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_run(out / "cpu-tiny.json")


def test_two_shards_merged_hold_the_unsharded_entries(tmp_path: Path) -> None:
    whole = bench(tmp_path / "whole")
    parts = {str(i): bench(tmp_path / f"s{i}", f"--lora-shard={i}/2") for i in (1, 2)}
    assert all(p.meta.shard_items for p in parts.values())
    assert not set(parts["1"].meta.shard_items) & set(parts["2"].meta.shard_items)
    merged = merge_runs(parts)
    ids = sorted(f"{e.kind} {getattr(e, 'fullname', '')}" for e in whole.entries)
    assert sorted(f"{e.kind} {getattr(e, 'fullname', '')}" for e in merged.entries) == ids


def test_a_shard_out_of_range_is_refused_in_one_line() -> None:
    cmd = [sys.executable, "-m", "pytest", "bench/test_params.py", "--benchmark-only", "-q",
           "-p", "no:cacheprovider", "--lora-profile", "tiny", "--lora-shard", "3/2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4  # pytest's usage error
    assert "shard 3/2: i must be in 1..N (N = 2), got 3" in proc.stderr
