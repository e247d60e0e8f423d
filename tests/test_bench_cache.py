"""Cold and warm caches: how many copies a cold run rotates, the cache size from sysfs,
the rotation itself, and the check that no cold decode op beats its bytes / copy bandwidth."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from runs import make_run, time_entry

from bench.harness.cache import MAX_COPIES, copies_needed, cpu_cache_bytes
from bench.harness.cases import Case
from bench.harness.runner import forward_work, rotating
from bench.report.layer import cold_check_table

MIB = 2**20


def test_copies_needed() -> None:
    assert copies_needed(7 * MIB, 32 * MIB, "warm") == 1
    assert copies_needed(7 * MIB, 32 * MIB, "cold") == 10  # 70 MiB >= 2 x 32 MiB
    assert copies_needed(64 * MIB, 32 * MIB, "cold") == 2  # at least two, so no call repeats
    assert copies_needed(1, 32 * MIB, "cold") == MAX_COPIES
    assert copies_needed(3 * 2**30, 32 * MIB, "cold") == 1  # memory before more copies
    with pytest.raises(ValueError, match="cache mode must be one of"):
        copies_needed(1, 1, "lukewarm")


def test_cpu_cache_bytes_reads_the_largest_level(tmp_path: Path) -> None:
    for i, size in enumerate(["48K", "2048K", "32768K"]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    assert cpu_cache_bytes(tmp_path) == 32 * MIB
    assert cpu_cache_bytes(tmp_path / "none") == 32 * MIB  # the fallback


def test_rotation_gives_each_call_the_least_recently_used_copy() -> None:
    seen: list[str] = []
    work, base = rotating(
        [lambda i=i: seen.append(f"op{i}") for i in range(3)],
        [lambda i=i: seen.append(f"base{i}") for i in range(3)],
    )
    for _ in range(2):  # a base round of two calls, then an impl round of two
        base(), base(), work(), work()
    assert seen == ["base0", "base1", "op2", "op0", "base1", "base2", "op0", "op1"]
    single = [lambda: seen.append("only")]
    assert rotating(single, single) == (single[0], single[0])


def test_cold_copies_compute_the_same_function() -> None:
    checked = forward_work(Case("toy", 4, 2), "addmm", copies=3)
    outs = [checked.work() for _ in range(3)]
    assert outs[0].abs().max() > 0
    for o in outs[1:]:
        assert (o == outs[0]).all(), "copies hold the same values"


def test_cold_check_flags_an_op_faster_than_its_bytes() -> None:
    key = "llama3-8b.q_proj T=1 r=16 fp32"
    run = make_run(seconds=1e-3, copy_gbs=20.0)  # 10^5 bytes at 20 GB/s: 5 µs
    fast = time_entry(key, "addmm", "cpu", 1e-3, 0.004)  # 4 µs: read from cache
    run = replace(run, entries=[fast if getattr(e, "impl", "") == "addmm" and e.key == key
                                else e for e in run.entries])  # fmt: skip
    rows = {r[0]: r for r in cold_check_table(run).rows}
    assert rows[f"{key} cpu"][1] == "addmm"
    assert rows[f"{key} cpu"][-1] == "addmm"
    assert cold_check_table(make_run(cache="warm")).rows == [], "only for cold runs"
