"""The end-to-end bench's pieces: its cases and variants per profile, models that share one
set of weights, the memory count, and the model entries' round trip through a results file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from runs import make_run
from torch import nn

from bench.families.model_runner import tensor_bytes
from bench.families.models import (
    FUSED,
    FUSED_BASE_IMPL,
    MODELS,
    ModelCase,
    model_jobs,
    shared_copy,
    variants,
)
from bench.report.models import model_comparisons, model_tables
from bench.schema.entries import ModelEntry, Paired
from bench.schema.run import Run, dump_run, parse_run
from lora_kernels import IMPLS, get_preset


def test_quick_jobs_stay_small_and_full_runs_every_impl() -> None:
    quick = model_jobs("quick", ["cpu"])
    assert {str(j.case) for j in quick} == {"llama-cpu all-linear T=16 r=16 fp32 cpu"}
    assert len(quick) == 6 + 5  # the prefill is the generation bench's
    assert [j.variant for j in quick if j.mode == "train"][-1] == "fused"
    trainers = [n for n, i in IMPLS.items()
                if i.origin == "ours" and i.lora_equivalent and i.variant == "lora"
                and not i.unavailable_reason("cpu", torch.float32, "train")]  # fmt: skip
    assert variants("train", "cpu") == ["peft", *trainers, "fused"]
    assert "peft_merged" in variants("infer", "cpu") and "merged" in variants("infer", "cpu")
    assert "peft_merged" not in variants("train", "cpu")
    cuda = {str(j.case) for j in model_jobs("full", ["cuda"])}
    assert "llama3-8b-2blocks all-linear T=2048 r=16 bf16 cuda" in cuda
    assert (FUSED, FUSED_BASE_IMPL) == ("fused", "autograd")  # as the models table's note says
    fused = {str(j.case) for j in model_jobs("full", ["cpu"]) if j.variant == "fused"}
    assert fused and not any("gpt2" in case for case in fused)  # GPT-2 has nothing to fuse


def test_model_presets_keep_their_real_layers() -> None:
    llama = get_preset("llama3-8b")
    assert MODELS["llama3-8b-2blocks"].linears == llama.linears
    assert MODELS["llama3-8b-2blocks"].hf["num_hidden_layers"] == 2
    assert MODELS["gpt2-2blocks"].vocab == 50257 and MODELS["gpt2-2blocks"].blocks == 2
    case = ModelCase("llama-cpu", "attn", 128, 16, "fp32", "cpu")
    assert case.key == "llama-cpu attn T=128 r=16 fp32" and str(case).endswith(" cpu")


def test_shared_copy_shares_every_tensor() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    copy = shared_copy(model)
    assert copy is not model and copy[0] is not model[0]
    assert all(a is b for a, b in zip(model.parameters(), copy.parameters(), strict=True))
    assert all(a is b for a, b in zip(model.buffers(), copy.buffers(), strict=True))


def test_tensor_bytes_counts_each_storage_once() -> None:
    lin = nn.Linear(64, 32, bias=False)  # W: 8 KiB, saved again by linear for dx: counted once
    x = torch.randn(16, 64, requires_grad=True)  # 4 KiB, saved for dW
    assert tensor_bytes(lin, lambda: lin(x).sum().backward()) == 2 * 8192 + 4096


def entry(variant: str, mode: str) -> ModelEntry:
    case = ModelCase("llama-cpu", "attn", 128, 16, "fp32", "cpu")
    return ModelEntry(
        fullname=f"bench/test_model.py::test_model[{variant}]", **case.fields(), variant=variant,
        mode=mode, adapted_layers=8, trainable=123, rel_error=1e-7, build_s=0.1, threads=2,
        adapted_share=0.2, base_share=0.15, peak_bytes=2**20, memory_method="tensors",
        rounds=Paired(1, [1.1, 1.2, 1.0], [1.0, 1.0, 1.0]),
    )  # fmt: skip


def test_model_entries_round_trip_and_table() -> None:
    meta = make_run().meta
    run = Run(meta, {}, {}, [entry("peft", "infer"), entry("addmm", "train")])
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.models() == run.models()
    assert back.models()[0].ratio_to_base == pytest.approx(1.1)
    forward, train = model_tables(back)
    assert forward.title == "Models (forward)" and train.title == "Models (training step)"
    assert forward.rows[0][:3] == ["llama-cpu attn T=128 r=16", "peft", "1.100"]
    assert forward.rows[0][3] == "[1.000, 1.200]"  # 95% CI of 3 pairs: their range
    assert forward.rows[0][5] == "-", "PEFT's own row has no quotient against PEFT"
    assert forward.rows[0][7] == "20% / 15%"


def test_a_variant_is_faster_than_peft_only_where_the_ci_says_so() -> None:
    def timed(variant: str, ratio: float, spread: float) -> ModelEntry:
        ratios = [ratio * (1 + spread * ((7 * i) % 11 - 5) / 5) for i in range(21)]
        return replace(entry(variant, "infer"), rounds=Paired(1, ratios, [1.0] * 21))

    entries = [timed("peft", 1.2, 0.01), timed("addmm", 1.1, 0.01), timed("two_step", 1.19, 0.2)]
    run = Run(make_run().meta, {}, {}, entries)
    (table,) = model_tables(run)
    cells = {row[1]: row[5] for row in table.rows}
    assert cells["addmm"].startswith("0.917 [") and not cells["addmm"].endswith("unresolved")
    assert cells["two_step"].endswith("unresolved")
    case = "llama-cpu attn T=128 r=16 fp32 cpu"
    labels = [c.label for c in model_comparisons(run)]
    assert labels == [f"model {case} infer: addmm vs peft", f"model {case} infer: two_step vs peft"]
