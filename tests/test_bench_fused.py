"""The fused-module bench's pieces: its jobs per profile, the frozen module it divides by, its
entries' round trip through a results file, and its table."""

from __future__ import annotations

import json

import torch
from runs import make_run

from bench.families.fused import FusedCase, fused_jobs
from bench.families.fused_runner import frozen
from bench.report.fused import fused_tables
from bench.schema.entries import FusedEntry, Paired
from bench.schema.run import Run, dump_run, parse_run
from lora_kernels import rel_error
from lora_kernels.fused import module_reference


def test_full_times_every_module_impl_at_decode_and_prefill_and_quick_the_prefill_step() -> None:
    full = [str(j) for j in fused_jobs("full", ["cpu"])]
    for impl in ("qkv_fused", "qkv_layers", "peft_qkv"):
        assert f"{impl} train llama-cpu qkv T=512 r=16 fp32 cpu" in full
        assert f"{impl} infer llama-cpu qkv T=16 r=16 fp32 cpu" in full
    assert "mlp_fused train llama-cpu mlp T=512 r=16 fp32 cpu" in full
    quick = [str(j) for j in fused_jobs("quick", ["cpu"])]
    assert len(quick) == 6 and all("train llama-cpu" in j and "T=512" in j for j in quick)
    cuda = [str(j) for j in fused_jobs("full", ["cuda"])]
    assert "mlp_fused train llama3-8b-2blocks mlp T=2048 r=16 bf16 cuda" in cuda


def test_the_frozen_module_is_the_module_without_its_adapters() -> None:
    for module in ("qkv", "mlp"):
        w = FusedCase(module, "llama-tiny", 8, 4, "fp32", "cpu").weights()
        x = torch.randn(8, 64)
        got = frozen(w)(x)
        for p in w.projections().values():
            p.B.data.zero_()  # s·(x Aᵀ) Bᵀ = 0: the oracle is the frozen module
        want, _ = module_reference(w, x)
        assert max(rel_error(g, r) for g, r in zip(got, want, strict=True)) < 1e-6


def fused_entry(impl: str, ratio: float) -> FusedEntry:
    case = FusedCase("mlp", "llama-cpu", 512, 16, "fp32", "cpu")
    rounds = Paired(1, [ratio * 0.01] * 5, [0.01] * 5, "sure", 0.02)
    return FusedEntry(fullname="bench/test_fused.py::test_fused", **case.fields(), impl=impl,
                      mode="train", origin="ours", threads=2, rel_error=3e-7,
                      saved_bytes=24 << 20, frozen_saved_bytes=14 << 20, peak_bytes=40 << 20,
                      rounds=rounds)  # fmt: skip


def test_entries_round_trip_and_the_table() -> None:
    run = Run(
        make_run().meta, {}, {}, [fused_entry("mlp_fused", 1.04), fused_entry("peft_mlp", 1.16)]
    )
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.fused() == run.fused()
    (table,) = fused_tables(back)
    assert table.title == "Fused modules"
    assert table.rows[0][2] == "mlp_fused" and table.rows[0][4] == "1.040 [1.040, 1.040]"
    assert table.rows[0][5] == "49,231"  # 512 tokens over 10.4 ms
    assert table.rows[0][6:9] == ["24.0 MiB", "14.0 MiB", "40.0 MiB"]
