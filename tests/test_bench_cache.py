"""Cold and warm caches: how many copies a cold run rotates, the cache size from sysfs,
the rotation itself (both sides read the same copies, each call the least recently used one),
the setups it is spread over, and the check that no cold decode op beats its bytes / copy
bandwidth."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from runs import make_run, time_entry

from bench.harness.cache import MAX_COPIES, copies_needed, cpu_cache_bytes
from bench.harness.cases import Case
from bench.harness.placement import Rotation, release_setups, rotation_size, share_of
from bench.harness.runner import forward_work, train_work
from bench.harness.timing import base_first
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


def _logged(seen: list[str], copies: int, share: int | None = None) -> Rotation:
    def make(i: int) -> tuple[Callable[[], object], Callable[[], object]]:
        return (lambda: seen.append(f"op{i}")), (lambda: seen.append(f"base{i}"))

    return Rotation(make, copies, copies if share is None else share)


def test_rotation_gives_each_call_the_least_recently_used_copy() -> None:
    seen: list[str] = []
    work, base = _logged(seen, 3).sides()
    for _ in range(2):  # a base round of two calls, then an impl round of two
        base(), base(), work(), work()
    assert seen == ["base0", "base1", "op2", "op0", "base1", "base2", "op0", "op1"]
    seen.clear()
    work, base = _logged(seen, 1).sides()
    work(), base(), work()
    assert seen == ["op0", "base0", "op0"], "one copy: a warm cache"


@pytest.mark.parametrize(("copies", "inner"), [(2, 1), (4, 7), (15, 1), (16, 3), (48, 2)])
def test_both_sides_read_every_copy_alike(copies: int, inner: int) -> None:
    """Rounds of `inner` calls in the bench's order (base first and impl first by turns):
    fitted to them, the rotation gives each side every copy equally often, and every call
    the copy read longest ago. Unfitted, 2 copies and one call a round would give each side
    one copy for ever."""
    seen: list[str] = []
    rotation = _logged(seen, copies)
    rotation.fit(inner)
    n = rotation.copies
    assert n == rotation_size(copies, inner) and n >= copies and n % 2
    work, base = rotation.sides()
    for pair in range(4 * n):
        order = (base, work) if base_first(pair, 1) else (work, base)
        for side in order:
            for _ in range(inner):
                side()
    for side in ("op", "base"):
        counts = {i: seen.count(f"{side}{i}") for i in range(n)}
        assert set(counts.values()) == {4 * inner}, counts
    last: dict[str, int] = {}
    for t, name in enumerate(seen):
        copy = name.removeprefix("op").removeprefix("base")
        assert t - last.get(copy, t - n) == n, "each call reads the copy read n calls ago"
        last[copy] = t


def test_rotation_size_and_share() -> None:
    assert rotation_size(1, 4) == 1
    assert rotation_size(2, 1) == 3
    assert rotation_size(15, 3) == 17  # odd, and no factor in common with 3
    assert share_of(1, 4) == 1
    assert share_of(15, 4) == 4
    assert share_of(2, 4) == 2, "never one copy: a pair's second round would read warm"
    with pytest.raises(ValueError, match=">= 1"):
        rotation_size(0, 1)


def test_a_setup_holds_its_share_with_one_call_a_round_and_all_copies_with_more() -> None:
    seen: list[str] = []
    rotation = _logged(seen, 15, share_of(15, 4))
    rotation.fit(1)
    assert rotation.copies == 5
    rotation.fit(2)
    assert rotation.copies == 15, "a round's calls follow one another on one setup"


def test_impls_read_base_s_memory_and_the_control_its_own() -> None:
    """On every setup an impl's calls read the very tensors base's read; the A/A control
    reads an allocation of its own with the same values; setups are allocations of their
    own, held for the next impl of the case."""
    release_setups()
    case = Case("toy", 4, 2)
    addmm = forward_work(case, "addmm", copies=3, setups=2)
    control = forward_work(case, "base", copies=3, setups=2, control=True)
    assert len(addmm.reads) == len(control.reads) == 2
    for (mine, base), (own, same_base) in zip(addmm.reads, control.reads, strict=True):
        assert mine is base and same_base is base, "held: the next impl reads the same setup"
        w, own_w = base.get(2)[0], own.get(2)[0]
        assert own_w.W.data_ptr() != w.W.data_ptr()
        assert torch.equal(own_w.W, w.W)
    (first, _), (second, _) = addmm.reads
    assert first.get(0)[0].W.data_ptr() != second.get(0)[0].W.data_ptr()
    train = train_work(case, "two_step", copies=2, setups=2)
    assert train.reads[0][0].get(1)[1].requires_grad, "a training step's x wants its grad"
    release_setups()


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
