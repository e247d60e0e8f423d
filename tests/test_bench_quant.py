"""The quantized-base bench's pieces: its jobs per profile and device, what it skips and why,
what it counts as kept for backward, its entries' round trip through a results file, and its
tables."""

from __future__ import annotations

import json

import torch
from runs import make_run

from bench.families.quant import QuantCase, QuantJob, quant_jobs
from bench.families.quant_runner import skip_reason
from bench.harness.memory import peak_bytes, saved_bytes
from bench.harness.timing import call_or_step
from bench.report.quant import quant_tables
from bench.schema.entries import Paired, QuantEntry
from bench.schema.run import Run, dump_run, parse_run


def test_quick_has_nf4_and_int8_side_by_side_and_full_the_rest() -> None:
    quick = [str(j) for j in quant_jobs("quick", ["cpu"])]
    case = "llama3-8b.k_proj T=512 r=8 {} fp32 cpu"
    for impl in ("dense", "qlora_lean", "peft_qlora"):
        assert f"{impl} infer {case.format('nf4')}" in quick
        assert f"{impl} infer {case.format('int8')}" in quick
        assert f"{impl} train {case.format('nf4')}" in quick
    assert f"merge infer {case.format('nf4')}" in quick
    assert "model train llama-cpu T=16 r=16 nf4 fp32 cpu" in quick
    assert len(quick) == 12  # bench/families/budget.py counts them
    full = quant_jobs("full", ["cpu"])
    assert {j.case.fmt for j in full} == {"nf4", "fp4", "int8"}
    assert {j.impl for j in full} >= {"bnb_base", "qlora_dequant", "qlora_lean", "peft_qlora"}
    assert sorted({j.case.rank for j in full if j.impl == "merge"}) == [8, 16, 64, 256]
    assert "fp8" in {j.case.fmt for j in quant_jobs("quick", ["cuda"])}


def test_what_cannot_run_is_skipped_saying_why() -> None:
    fp8 = QuantCase("llama3-8b.k_proj", 512, 8, "fp8", "fp32", "cpu")
    assert "fp8 runs on CUDA only" in skip_reason(QuantJob(fp8, "qlora_lean", "infer"))
    int8 = QuantCase("llama3-8b.k_proj", 512, 8, "int8", "bf16", "cuda")
    assert "activations" in skip_reason(QuantJob(int8, "peft_qlora", "infer"))
    nf4 = QuantCase("llama3-8b.k_proj", 512, 8, "nf4", "fp32", "cpu")
    assert "not 'cpu'" in skip_reason(QuantJob(nf4, "qlora_triton", "infer"))


def test_peak_bytes_follows_allocations_in_order() -> None:
    def step() -> None:
        a = torch.empty(1000, 1000)
        b = torch.empty(1000, 1000)
        del a
        c = torch.empty(1000, 1000)
        del b, c

    assert peak_bytes(step, "cpu") == 8_000_000  # a and b at once; c reuses a's share


def test_a_training_steps_peak_counts_its_gradients_every_time() -> None:
    """A step that clears the previous call's gradients first frees them inside the
    measurement; measured with them dropped beforehand, the peak is the same every call."""
    x = torch.randn(256, 512, requires_grad=True)
    W = torch.randn(512, 512, requires_grad=True)
    step = call_or_step(lambda t: t @ W, x, torch.randn(256, 512), [x, W])
    first = peak_bytes(step, "cpu", [x, W])
    assert first >= (x.numel() + W.numel()) * 4  # both gradients are live at the end
    assert x.grad is not None and peak_bytes(step, "cpu", [x, W]) == first


def test_saved_bytes_counts_each_storage_once() -> None:
    x = torch.randn(8, 16, requires_grad=True)
    W = torch.randn(4, 16)
    assert saved_bytes(lambda: (x @ W.t()).sum()) == W.numel() * 4  # dx needs W; x is not saved
    assert saved_bytes(lambda: (x @ W.t()).sum(), held=[W]) == 0  # a weight held anyway
    y = x.exp()  # saves its output
    assert saved_bytes(lambda: (y * y).sum()) == y.numel() * 4  # y twice, one storage


def quant_entry(impl: str, mode: str, ratio: float, **extra: object) -> QuantEntry:
    case = QuantCase("llama3-8b.k_proj", 512, 8, "nf4", "fp32", "cpu")
    rounds = Paired(1, [ratio * 0.01] * 5, [0.01] * 5, "sure", 0.02)
    values: dict = {"fullname": "bench/test_quant.py::test_quant", **case.fields(), "impl": impl,
                    "mode": mode, "threads": 2, "rel_error": 3e-7, "base_bytes": 2_359_296,
                    "saved_bytes": 8 << 20 if mode == "train" else 0,
                    "peak_bytes": 20 << 20 if mode == "train" else 0, "rounds": rounds,
                    **extra}  # fmt: skip
    return QuantEntry(**values)


def test_entries_round_trip_and_tables() -> None:
    entries = [
        quant_entry("dense", "infer", 0.8),
        quant_entry("qlora_lean", "infer", 1.01),
        quant_entry("peft_qlora", "train", 1.2),
        quant_entry(
            "merge",
            "infer",
            0.95,
            vs_unmerged=0.09,
            vs_float=0.12,
            quantized=0.08,
            weight_error=0.09,
        ),
        quant_entry("model", "train", 0.9, peer_saved_bytes=9 << 20, peer_peak_bytes=30 << 20),
    ]
    run = Run(make_run().meta, {}, {}, entries)
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.quant() == run.quant()
    layer, merge, model = quant_tables(back)
    assert layer.title == "Quantized base"
    assert layer.rows[0][3:5] == ["quantized base / dense base", "1.250 [1.250, 1.250]"]
    assert layer.rows[1][4] == "1.010 [1.010, 1.010]" and layer.rows[1][6] == ""
    assert layer.rows[2][6:8] == ["8.0 MiB", "20.0 MiB"]  # saved and peak, training only
    assert merge.rows[0][1:5] == ["9.00e-02", "1.20e-01", "8.00e-02", "9.00e-02"]
    assert model.rows[0][1:6] == ["0.900 [0.900, 0.900]", "20.0 MiB", "30.0 MiB", "8.0 MiB",
                                  "9.0 MiB"]  # fmt: skip
