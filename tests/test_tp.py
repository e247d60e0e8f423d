"""Tensor-parallel LoRA: every split (column and row base; adapter replicated, sharded, fully
sharded) against the single-device float64 oracle, forward and the gradients of x, A and B,
and a multi-adapter batch's forward, with 2 and 4 gloo processes started by the test; the
bytes each collective moves against expected_traffic; and refusals before any process starts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tp_workers import (
    aborts_at_exit,
    case_inputs,
    case_weights,
    multi_case_inputs,
    multi_case_weights,
    multi_refusals,
    multi_step,
    one_crashes,
    one_dies,
    one_raises,
    one_stalls,
    step,
)

from lora_kernels import reference_forward, reference_grads, rel_error
from lora_kernels.multi import multi_reference_forward
from lora_kernels.tp import ADAPTERS, KINDS, RankError, TPSplit, expected_traffic, run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing")
TOL = 1e-5


def cases(world: int) -> list[dict]:
    """Each split on random shapes whose split dimensions the world divides, B non-zero."""
    rng = random.Random(world)
    out = []
    for i, (kind, adapter) in enumerate((k, a) for k in KINDS for a in ADAPTERS):
        n, m = (world * rng.randint(2, 9) for _ in range(2))
        r = world * rng.randint(1, min(n, m) // world)
        lead = rng.choice([(5,), (2, 3), (1,)])
        out.append({"kind": kind, "adapter": adapter, "in": n, "out": m, "r": r, "lead": lead,
                    "bias": i % 2 == 0, "seed": 100 * world + i})  # fmt: skip
    return out


def expected(case: dict, world: int, index: int) -> dict[str, torch.Tensor]:
    """What rank `index` should hold, cut from the whole layer's float64 oracle."""
    w = case_weights(case)
    x, dy = case_inputs(case)
    y = reference_forward(w, x)
    grads = reference_grads(w, x, dy)
    split = TPSplit(case["kind"], case["adapter"], world)
    c = split.slices(case["in"], case["out"], case["r"], index)
    dA, dB = grads.A[c.a_rows, c.a_cols], grads.B[c.b_rows]
    base = x.double() @ w.W.double().T + (0 if w.b is None else w.b.double())
    if split.kind == "column":
        return {"y": y[..., c.out], "base": base[..., c.out], "dx": grads.x, "dA": dA, "dB": dB}
    return {"y": y, "base": base, "dx": grads.x[..., c.inp], "dA": dA, "dB": dB}


@pytest.mark.parametrize("world", [2, 4])
def test_every_split_computes_the_single_device_function(world: int) -> None:
    todo = cases(world)
    ranks = run_ranks(world, step, todo, timeout_s=120)
    for case, *per_rank in zip(todo, *ranks, strict=True):
        label = f"{case['kind']}/{case['adapter']} tp={world}"
        for index, got in enumerate(per_rank):
            want = expected(case, world, index)
            for name, ref in want.items():
                assert ref.abs().sum() > 0, f"{label}: the oracle's {name} is zero"
                err = rel_error(got[name], ref)
                assert err <= TOL, f"{label} rank {index}: {name} off by {err:.2g}"
            tokens = torch.Size(case["lead"]).numel()
            split = TPSplit(case["kind"], case["adapter"], world)
            assert got["traffic"] == expected_traffic(split, tokens, case["in"], case["out"],
                                                      case["r"], 4), label  # fmt: skip


def multi_cases(world: int) -> list[dict]:
    """Each split with 3 adapters of different ranks (r_max a multiple of the world)."""
    rng = random.Random(10 + world)
    out = []
    for i, (kind, adapter) in enumerate((k, a) for k in KINDS for a in ADAPTERS):
        n, m = (world * rng.randint(3, 9) for _ in range(2))
        r_max = world * rng.randint(1, min(n, m) // world)
        ranks = [r_max, rng.randint(1, r_max), rng.randint(1, r_max)]
        lead = rng.choice([(7,), (2, 5)])
        out.append({"kind": kind, "adapter": adapter, "in": n, "out": m, "ranks": ranks,
                    "lead": lead, "bias": i % 2 == 1, "seed": 200 * world + i})  # fmt: skip
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_every_split_of_a_multi_adapter_batch_computes_the_single_device_function(
    world: int,
) -> None:
    todo = multi_cases(world)
    ranks = run_ranks(world, multi_step, todo, timeout_s=120)
    for case, *per_rank in zip(todo, *ranks, strict=True):
        label = f"multi {case['kind']}/{case['adapter']} tp={world}"
        w = multi_case_weights(case)
        x, ids = multi_case_inputs(case)
        assert (ids == -1).any() and len(set(ids.flatten().tolist())) > 2, label
        y = multi_reference_forward(w, x, ids)
        base = x.double() @ w.W.double().T + (0 if w.b is None else w.b.double())
        split = TPSplit(case["kind"], case["adapter"], world)
        for index, got in enumerate(per_rank):
            c = split.slices(case["in"], case["out"], max(case["ranks"]), index)
            cut = c.out if split.kind == "column" else slice(None)
            for name, ref in (("y", y[..., cut]), ("base", base[..., cut])):
                err = rel_error(got[name], ref)
                assert err <= TOL, f"{label} rank {index}: {name} off by {err:.2g}"
            assert rel_error(got["y"], got["base"]) > 100 * TOL, f"{label}: no adapter added"
            dims = (torch.Size(case["lead"]).numel(), case["in"], case["out"], max(case["ranks"]))
            assert got["traffic"] == expected_traffic(split, *dims, 4, train=False), label


def test_bad_adapter_ids_are_refused_on_each_rank() -> None:
    [errors] = run_ranks(2, multi_refusals, timeout_s=60)[:1]
    assert len(errors) == 4, errors
    assert "adapter_ids must be an int64 or int32 tensor, got torch.float32" in errors[0]
    assert "adapter_ids has shape (5,); x's tokens need (2, 3) or (6,)" in errors[1]
    assert "adapter_ids must be in [-1, 2)" in errors[2] and "[2, 2]" in errors[2]
    assert "x must be (..., 4) on this rank (row/sharded tp=2), got (2, 3, 8)" in errors[3]


def test_a_world_that_does_not_divide_is_refused_before_any_process() -> None:
    with pytest.raises(ValueError, match=r"column/sharded tp=4: the world size 4 does not "
                       r"divide out_features \(6\)"):  # fmt: skip
        TPSplit("column", "sharded", 4).check(8, 6, 4)
    with pytest.raises(ValueError, match=r"does not divide rank \(6\).*splits out_features, rank"):
        TPSplit("column", "fully_sharded", 4).check(8, 8, 6)
    with pytest.raises(ValueError, match=r"does not divide in_features \(6\)"):
        TPSplit("row", "replicated", 4).check(6, 8, 4)
    with pytest.raises(ValueError, match=r"does not divide out_features \(6\)"):
        TPSplit("row", "fully_sharded", 4).check(8, 6, 3)
    TPSplit("row", "fully_sharded", 2).check(8, 6, 3)  # r need not divide: A splits along in
    with pytest.raises(ValueError, match="kind must be one of"):
        TPSplit("diagonal", "sharded", 2)
    with pytest.raises(ValueError, match="adapter must be one of"):
        TPSplit("row", "halved", 2)
    with pytest.raises(ValueError, match="world must be an int >= 1"):
        TPSplit("row", "sharded", 0)


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (one_raises, r"rank 1 of 2 raised ValueError: rank 1 refuses"),
        (one_dies, r"rank 1 of 2 died \(exit 3\);.*the others were stopped"),
        (one_stalls, r"rank 0 of 2 raised .*the others were stopped"),
    ],
)
def test_a_rank_that_fails_stops_the_others_with_a_clear_error(fn: object, match: str) -> None:
    with pytest.raises(RankError, match=match):
        run_ranks(2, fn, timeout_s=3)


def test_a_rank_killed_by_a_signal_is_told_from_one_that_raised(
    capfd: pytest.CaptureFixture,
) -> None:
    """A crash in native code says so (RankError.crashed) and leaves the rank's Python
    traceback on stderr."""
    with pytest.raises(RankError, match=r"rank 1 of 2 died \(exit -11\);") as caught:
        run_ranks(2, one_crashes, timeout_s=30)
    assert caught.value.crashed and caught.value.began
    assert "in one_crashes" in capfd.readouterr().err
    with pytest.raises(RankError) as caught:
        run_ranks(2, one_raises, timeout_s=30)
    assert not caught.value.crashed


def test_a_group_that_fails_to_form_is_started_once_more(
    capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A rank that crashes before any rank began fn (here while it imports fn's module, where
    only PYTHONFAULTHANDLER gives a traceback): the group is started once more, saying so; a
    second failure is the error, naming the rank that died before it began."""
    from tp_crash_on_import import rank_of

    monkeypatch.setenv("CRASH_ON_IMPORT", str(tmp_path / "crashed-once"))
    with pytest.warns(RuntimeWarning, match=r"did not form \(rank \d of 2 died \(exit -11\) "
                      r"before it began.*starting it once more"):  # fmt: skip
        assert run_ranks(2, rank_of, timeout_s=30) == [0, 1]
    assert "tp_crash_on_import.py" in capfd.readouterr().err
    monkeypatch.setenv("CRASH_ON_IMPORT", "always")
    with pytest.warns(RuntimeWarning), pytest.raises(RankError, match="before it began") as caught:
        run_ranks(2, rank_of, timeout_s=30)
    assert caught.value.crashed and not caught.value.began


def test_a_rank_whose_result_is_in_is_not_failed_by_its_teardown() -> None:
    """A rank's result on disk is the rank's answer: an abort in the interpreter's teardown
    (seen about once in 150 runs of ranks that took a torch profile) does not fail the run."""
    assert run_ranks(2, aborts_at_exit, timeout_s=30) == [0, 1]
