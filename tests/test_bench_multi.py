"""The multi-adapter bench's pieces: its cases and jobs per profile, the work it times, its
table's derived columns, and its entries' round trip through a results file."""

from __future__ import annotations

import json

import pytest
import torch
from runs import make_run

from bench.families.multi import SINGLE, Batch, MultiCase, build_work, multi_jobs, variants
from bench.report.multi import multi_tables
from bench.schema.entries import MultiEntry, Paired
from bench.schema.run import Run, dump_run, parse_run
from lora_kernels import MULTI_IMPLS, multi_reference_forward, rel_error


def test_quick_jobs_hold_the_targets_and_the_references() -> None:
    jobs = multi_jobs("quick", ["cpu"])
    cases = {str(j.case) for j in jobs if not j.variant.startswith(SINGLE)}
    assert cases == {  # decode: 16 sequences of a token; prefill: the 64-adapter target
        "gpt2-medium.c_proj T=16 n=16 uniform r=mixed fp32 cpu",
        "gpt2-medium.c_proj T=2048 n=64 uniform r=8 fp32 cpu",
    }
    ours = variants("cpu", torch.float32, None)
    assert "triton_sgmv" not in ours and "sorted_gemm" in ours  # CUDA only; ours on the CPU
    if not MULTI_IMPLS["peft_mixed"].requires():
        assert ours[-1] == "peft_mixed"  # the peer, after ours
    singles = [j for j in jobs if j.variant.startswith(SINGLE)]
    # one set of references per (tokens, r_max): T=2048 r=8 and T=16 r=16 (mixed ranks)
    assert {(j.case.tokens, j.case.ranks) for j in singles} == {(2048, "8"), (16, "16")}
    assert len(jobs) == 2 * len(ours) + 2 * 2


def test_full_jobs_sweep_the_grid() -> None:
    cases = {j.case for j in multi_jobs("full", ["cpu"]) if not j.variant.startswith(SINGLE)}
    assert {c.adapters for c in cases} == {1, 4, 16, 64}
    assert {c.tokens for c in cases} == {16, 128, 512, 2048}
    assert {c.distribution for c in cases} == {"identical", "uniform", "zipf", "per_sequence"}
    assert {c.ranks for c in cases} == {"8", "mixed"}
    cuda = {j.variant for j in multi_jobs("full", ["cuda"])}
    assert "triton_sgmv" in cuda or MULTI_IMPLS["triton_sgmv"].requires()
    assert all(c.dtype == "bf16" for c in (j.case for j in multi_jobs("full", ["cuda"])))


def test_case_names_and_ranks() -> None:
    case = MultiCase("gpt2-medium.c_proj", 64, 5, "zipf", "mixed", "fp32", "cpu")
    assert str(case) == "gpt2-medium.c_proj T=64 n=5 zipf r=mixed fp32 cpu"
    assert case.rank_list == (4, 8, 16, 4, 8) and case.r_max == 16
    assert case.single().key == "gpt2-medium.c_proj T=64 n=1 identical r=16 fp32"
    with pytest.raises(ValueError, match="distribution must be one of"):
        MultiCase("toy", 8, 2, "normal", "4", "fp32", "cpu")


def test_work_is_what_it_names() -> None:
    """The timed work of a multi-adapter variant computes the case's multi-adapter function;
    a single-adapter reference computes adapter 0 on every token; base is the plain GEMM."""
    case = MultiCase("gpt2-medium.c_proj", 24, 3, "uniform", "mixed", "fp32", "cpu")
    batch = Batch.of(case)
    work, base = build_work("segments", batch)
    want = multi_reference_forward(batch.weights, batch.x, batch.index)
    assert rel_error(work(), want) <= 1e-5
    w = batch.weights
    assert torch.equal(base(), torch.nn.functional.linear(batch.x, w.W, w.b))
    single, _ = build_work(SINGLE + "addmm", batch)
    everyone_0 = torch.zeros(24, dtype=torch.int64)
    assert rel_error(single(), multi_reference_forward(w, batch.x, everyone_0)) <= 1e-5


def _entry(case: str, variant: str, ratio: float, origin: str = "ours") -> MultiEntry:
    key, device = case.rsplit(" ", 1)
    shape, tokens, n, dist, ranks, dtype = key.split()
    return MultiEntry(
        fullname=f"bench/test_multi.py::test_multi[{variant} {case}]", case=case, key=key,
        shape=shape, tokens=int(tokens[2:]), adapters=int(n[2:]), distribution=dist,
        ranks=ranks[2:], dtype=dtype, device=device, r_max=8, variant=variant, origin=origin,
        in_use=int(n[2:]), rel_error=1e-7, build_s=0.1, threads=2, peak_bytes=2**20,
        memory_method="test", rounds=Paired(1, [ratio * 1e-3] * 3, [1e-3] * 3),
    )  # fmt: skip


def test_table_derives_single_best_and_peft_speedup() -> None:
    many = "l T=2048 n=64 uniform r=8 fp32 cpu"
    one = "l T=2048 n=1 identical r=8 fp32 cpu"
    entries = [
        _entry(many, "segments", 1.2),
        _entry(many, "peft_mixed", 1.8, "peer"),
        _entry(one, "single:addmm", 1.05, "single"),
        _entry(one, "single:two_step", 1.25, "single"),
    ]
    run = make_run()
    run = Run(run.meta, {}, {}, entries)
    (table,) = multi_tables(run)
    rows = {r[1]: r for r in table.rows}
    assert rows["segments"][5] == f"{1.2 / 1.05:.3f}"
    assert rows["segments"][6] == "x1.50 [1.50, 1.50]", "PEFT mixed over segments, with its CI"
    assert rows["single:two_step"][5] == f"{1.25 / 1.05:.3f}" and rows["single:addmm"][6] == ""
    again = parse_run(json.loads(dump_run(run)), "mem")
    assert again.multi() == entries


def test_one_adapter_per_sequence_reaches_peft_per_sequence() -> None:
    from lora_kernels.multi.peft import peft_names

    case = MultiCase("gpt2-medium.c_proj", 64, 4, "per_sequence", "8", "fp32", "cpu")
    batch = Batch.of(case)
    assert tuple(batch.x.shape) == (4, 16, 1024)
    per_row, names = peft_names(batch.index, batch.x)
    assert per_row and names == ["a0", "a1", "a2", "a3"]
    work, _ = build_work("segments", batch)
    want = multi_reference_forward(batch.weights, batch.x, batch.index)
    assert rel_error(work(), want) <= 1e-5
