"""The UNet bench's pieces: its jobs per profile, ours against PEFT's UNet on the same tensors
(a wrong adapter is caught), fuse and unfuse, its entries' round trip and its tables."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from runs import make_run

from bench.families.models import lora_grads
from bench.families.unet import (
    PEFT,
    UNetCase,
    UNetJob,
    denoise,
    diffusers_missing,
    frozen_unet,
    ours_unet,
    peft_unet,
    train_step,
    unet_jobs,
)
from bench.report.unet import unet_tables
from bench.schema.entries import Paired, UNetEntry, UNetFuseEntry
from bench.schema.run import Run, dump_run, parse_run
from lora_kernels import LoRALinear, merge, rel_error, unmerge
from lora_kernels.conv.layer import LoRAConv2d

needs_diffusers = pytest.mark.skipif(bool(diffusers_missing()), reason=diffusers_missing())


def test_full_runs_both_target_sets_each_mode_and_one_fuse_row_each() -> None:
    assert unet_jobs("quick", ["cpu"]) == []  # a minute on a CPU: full only there
    full = [
        str(j) for j in unet_jobs("full", ["cpu"]) if j.variant in (PEFT, "addmm", "addmm/conv_add")
    ]
    assert full == [
        f"{v} {mode} sd15-cpu {targets} N=2 r=16 fp32 cpu"
        for targets, ours in (("attn", "addmm"), ("attn+conv", "addmm/conv_add"))
        for mode in ("infer", "train", "fuse")
        for v in ([ours] if mode == "fuse" else [PEFT, ours])
    ]
    cuda = {str(j) for j in unet_jobs("quick", ["cuda"])}
    assert "addmm/conv_add train sd15 attn+conv N=2 r=16 bf16 cuda" in cuda
    assert UNetJob(UNetCase("sd15", "attn", 1, 4, "fp32", "cpu"), "addmm", "train").impls == (
        "addmm", None)  # fmt: skip


@needs_diffusers
def test_ours_is_peft_on_the_same_tensors_and_a_wrong_adapter_is_seen() -> None:
    case = UNetCase("unet-tiny", "attn+conv", 1, 4, "fp32", "cpu")
    frozen = frozen_unet(case)
    peft = peft_unet(frozen, case)
    inputs = case.inputs()
    want = denoise(peft, inputs)()
    assert rel_error(want, denoise(frozen, inputs)()) > 1e-3  # the adapters count
    ours = ours_unet(peft, UNetJob(case, "addmm/conv_add", "train"))
    kinds = {type(m) for m in ours.modules()}
    assert {LoRALinear, LoRAConv2d} <= kinds
    assert rel_error(denoise(ours, inputs)(), want) < 1e-5
    for model in (peft, ours):
        train_step(model, inputs)()
    theirs, mine = lora_grads(peft), lora_grads(ours)
    assert set(theirs) == set(mine) and any(".conv1.lora_A" in k for k in mine)
    assert max(rel_error(mine[k], g) for k, g in theirs.items()) < 1e-4
    with torch.no_grad():
        next(p for n, p in ours.named_parameters() if n.endswith("conv1.lora_B")).mul_(3)
    assert rel_error(denoise(ours, inputs)(), want) > 1e-4


@needs_diffusers
def test_our_merge_and_diffusers_fuse_agree_and_unmerge_restores_the_weights() -> None:
    case = UNetCase("unet-tiny", "attn+conv", 1, 4, "fp32", "cpu")
    peft = peft_unet(frozen_unet(case), case)
    inputs = case.inputs()
    want = denoise(peft, inputs)()
    ours = ours_unet(peft, UNetJob(case, "addmm/conv_add", "fuse"))
    W = ours.get_submodule("down_blocks.0.resnets.0.conv1").base.weight.detach().clone()
    merge(ours)
    peft.fuse_lora()
    assert rel_error(denoise(ours, inputs)(), want) < 1e-5
    assert rel_error(denoise(peft, inputs)(), want) < 1e-5
    unmerge(ours)
    peft.unfuse_lora()
    assert rel_error(ours.get_submodule("down_blocks.0.resnets.0.conv1").base.weight, W) < 1e-6


def unet_entry(variant: str, mode: str, ratio: float) -> UNetEntry:
    case = UNetCase("sd15-cpu", "attn+conv", 1, 16, "fp32", "cpu")
    base = [0.1 + i * 1e-4 for i in range(7)]
    return UNetEntry(fullname="bench/test_unet.py::test_unet", **case.fields(), variant=variant,
                     mode=mode, origin="peer" if variant == PEFT else "ours", threads=2,
                     rel_error=0.0 if variant == PEFT else 3e-7, lora_layers=96,
                     lora_params=1_000_000, rounds=Paired(1, [ratio * b for b in base], base,
                                                          "sure", 0.02))  # fmt: skip


def test_entries_round_trip_and_the_tables_judge_the_denoising_target() -> None:
    case = UNetCase("sd15-cpu", "attn+conv", 1, 16, "fp32", "cpu")
    base = [0.05 + i * 1e-4 for i in range(7)]
    fuse = UNetFuseEntry(fullname="bench/test_unet.py::test_unet", **case.fields(),
                         variant="addmm/conv_add", threads=2, cycles=10, drift=1e-7,
                         diffusers_drift=4e-7, peak_bytes=3 << 20, diffusers_peak_bytes=5 << 20,
                         rounds=Paired(1, [0.8 * b for b in base], base, "sure", 0.02))  # fmt: skip
    entries = [unet_entry(PEFT, "infer", 1.12), unet_entry("addmm/conv_add", "infer", 1.04),
               unet_entry("addmm/conv_add", "train", 1.3), fuse]  # fmt: skip
    run = Run(make_run().meta, {}, {}, entries)
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.unet() == entries[:3] and back.unet_fuse() == [fuse]
    layers, fused = unet_tables(back)
    assert [r[-1] for r in layers.rows] == [
        "≤ 1.05: missed by 6.7% or more", "≤ 1.05: met", ""]  # fmt: skip
    assert fused.rows[0][2] == "0.800 [0.800, 0.800]"
    assert fused.rows[0][5:] == ["3.0 MiB", "5.0 MiB", 10, "1.0e-07", "4.0e-07"]
    fields = {f.name: getattr(fuse, f.name) for f in dataclasses.fields(fuse)}
    with pytest.raises(ValueError, match="drift must be finite"):
        UNetFuseEntry(**{**fields, "drift": float("nan")})
