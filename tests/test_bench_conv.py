"""The Conv2d LoRA bench's pieces: its cases and jobs per profile, its oracle check refusing a
wrong impl before any timing, its entries' round trip through a results file, and its tables
with the targets judged."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from runs import make_run

from bench.families.conv import CONV_LAYERS, ConvCase, conv_jobs
from bench.families.conv_runner import frozen, time_conv
from bench.report.conv import conv_tables, verdict
from bench.schema.entries import ConvEntry, Paired
from bench.schema.run import ImplInfo, Run, dump_run, parse_run
from lora_kernels import IMPLS, Impl
from lora_kernels.conv import ConvLoRAWeights, conv_reference_forward
from lora_kernels.registry import register


def test_quick_times_sd15s_smallest_and_largest_map_and_full_sweeps_unets_and_resnet() -> None:
    quick = [str(j) for j in conv_jobs("quick", ["cpu"])]
    for case in ("sd15.mid N=1 r=16 fp32 cpu", "sd15.down0 N=1 r=16 fp32 cpu"):
        for impl in ("conv_two_step", "conv_add", "conv_autograd", "peft_conv"):
            assert f"{impl} infer {case}" in quick and f"{impl} train {case}" in quick
        assert f"conv_merged infer {case}" in quick and f"conv_merged train {case}" not in quick
    sizes = {CONV_LAYERS[j.case.layer].size for j in conv_jobs("quick", ["cpu"])}
    unet = [s.size for name, s in CONV_LAYERS.items() if name.startswith("sd15")]
    assert sizes == {min(unet), max(unet)}
    full = {str(j.case) for j in conv_jobs("full", ["cpu"])}
    assert {"sdxl.down1 N=1 r=16 fp32 cpu", "sdxl.down0 N=2 r=16 fp32 cpu",
            "resnet50.stem N=8 r=16 fp32 cpu", "sdxl.down1 N=1 r=64 fp32 cpu"} <= full  # fmt: skip
    cuda = {str(j.case) for j in conv_jobs("quick", ["cuda"])}
    assert "sdxl.down1 N=1 r=16 bf16 cuda" in cuda  # the targets' case


def test_a_case_is_its_layers_real_shape() -> None:
    case = ConvCase("resnet50.stem", 2, 8, "fp32", "cpu")
    w, x = case.weights(), case.input(train=False)
    assert tuple(w.W.shape) == (64, 3, 7, 7) and w.b is None and w.stride == (2, 2)
    assert w.output_shape(x) == (2, 64, 112, 112)
    assert case.flops(adapter=False) == 2 * 2 * 112 * 112 * 3 * 49 * 64
    assert case.flops() - case.flops(adapter=False) == 2 * 2 * 112 * 112 * 8 * (3 * 49 + 64)
    with pytest.raises(ValueError, match=r"unknown conv layer 'vgg'; known: toy, sd15\.down0"):
        ConvCase("vgg", 1, 4, "fp32", "cpu")


def test_a_wrong_impl_fails_its_check_and_is_never_timed() -> None:
    def build(w: ConvLoRAWeights):  # drops the adapter's scale: a plausible slip
        return lambda x: w.convolve(x, w.W, w.b) + F.conv2d(w.convolve(x, w.A), w.B)

    register(Impl("conv_unscaled", "test only", build, variant="conv"))
    try:
        job = next(j for j in conv_jobs("tiny", ["cpu"]) if j.mode == "infer")
        job = type(job)(job.case, "conv_unscaled", "infer")
        timed = SimpleNamespace(settings=None)  # any use past the check raises
        with pytest.raises(pytest.fail.Exception, match=r"conv_unscaled infer toy.*not timed"):
            time_conv(timed, SimpleNamespace(), job)  # type: ignore[arg-type]
    finally:
        del IMPLS["conv_unscaled"]


def test_the_frozen_side_is_the_convolution_without_its_adapter() -> None:
    case = ConvCase("toy", 2, 4, "fp32", "cpu")
    w, x = case.weights(), case.input(train=False)
    w.B.data.zero_()
    assert (w.convolve(x, w.W, w.b) - conv_reference_forward(w, x)).abs().max() < 1e-5


def conv_entry(impl: str, mode: str, ratio: float, ci: tuple[float, float] | None = None,
               origin: str = "ours", layout: str = "nchw") -> ConvEntry:  # fmt: skip
    case = ConvCase("sdxl.down1", 1, 16, "fp32", "cpu", layout)
    base = [0.08 + i * 1e-4 for i in range(9)]
    rounds = Paired(1, [ratio * b for b in base], base, "sure", 0.02)
    if ci is not None:
        rounds = Paired(1, [ci[0] * b for b in base[:4]] + [ratio * base[4]]
                        + [ci[1] * b for b in base[5:]], base, "budget", 0.05)  # fmt: skip
    return ConvEntry(fullname="bench/test_conv.py::test_conv", **case.fields(), impl=impl,
                     mode=mode, origin=origin, threads=2, rel_error=2e-7, build_s=0.01,
                     copied_output=False, flops=case.flops(), base_flops=case.flops(False),
                     saved_bytes=11 << 20, frozen_saved_bytes=10 << 20, peak_bytes=40 << 20,
                     rounds=rounds)  # fmt: skip


def test_entries_round_trip_and_the_tables_judge_the_targets() -> None:
    entries = [conv_entry("conv_two_step", "infer", 1.07), conv_entry("conv_add", "infer", 1.04),
               conv_entry("conv_merged", "infer", 1.00), conv_entry("peft_conv", "infer", 1.09,
               origin="peer"), conv_entry("conv_add", "train", 1.2, ci=(1.15, 1.25))]  # fmt: skip
    run = Run(make_run().meta, {}, {}, entries)
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.conv() == run.conv()
    layers, targets = conv_tables(back)
    assert layers.title == "Conv2d LoRA layers" and len(layers.rows) == 5
    assert layers.rows[1][4] == "1.040 [1.040, 1.040]" and layers.rows[1][6] == "2.8%"
    assert layers.rows[4][7:10] == ["11.0 MiB", "10.0 MiB", "40.0 MiB"]
    rows = {r[1]: r for r in targets.rows}
    assert rows["best unmerged forward"][2] == "conv_add"  # the best of ours, PEFT's beside
    assert rows["best unmerged forward"][5] == "met"
    assert rows["best unmerged forward"][6] == "peft_conv 1.090"
    assert rows["merged forward"][5] == "met"
    assert rows["best training step"][5].startswith("missed by")


def test_dora_rows_get_their_own_table_and_never_meet_a_lora_target() -> None:
    """A Conv2d DoRA impl computes another function: its rows go to "Conv2d DoRA layers", and
    the LoRA targets take the best of the LoRA impls only, however fast DoRA was."""
    meta = make_run().meta
    infos = [ImplInfo(n, i.origin, i.source, i.description, i.variant) for n, i in IMPLS.items()]
    meta = dataclasses.replace(meta, impls=infos)
    entries = [conv_entry("conv_add", "infer", 1.04), conv_entry("conv_dora", "infer", 1.01),
               conv_entry("peft_conv_dora", "infer", 1.3, origin="peer")]  # fmt: skip
    layers, dora, targets = conv_tables(Run(meta, {}, {}, entries))
    assert [r[2] for r in layers.rows] == ["conv_add"]
    assert dora.title == "Conv2d DoRA layers" and [r[2] for r in dora.rows] == [
        "conv_dora", "peft_conv_dora"]  # fmt: skip
    assert [r[2] for r in targets.rows] == ["conv_add"] and targets.rows[0][6] == ""


def test_full_times_conv_dora_at_the_target_only_and_quick_not_at_all() -> None:
    def dora_cases(profile: str) -> set[str]:
        return {str(j.case) for j in conv_jobs(profile, ["cpu"])
                if IMPLS[j.impl].variant == "conv_dora"}  # fmt: skip

    assert dora_cases("full") == {"sdxl.down1 N=1 r=16 fp32 cpu"}
    assert dora_cases("quick") == set()
    case = ConvCase("toy", 2, 4, "fp32", "cpu")
    assert case.weights("conv_dora").variant == "conv_dora"
    with pytest.raises(ValueError, match="variant must be 'conv' or 'conv_dora', got 'dora'"):
        case.weights("dora")


def test_a_channels_last_case_lays_out_everything_but_the_frozen_side() -> None:
    """nhwc: x, W, A, B and the upstream gradient channels-last; the frozen convolution the
    ratio is taken against stays in the default layout, on copies, computing the same."""
    case = ConvCase("toy", 2, 4, "fp32", "cpu", layout="nhwc")
    assert str(case) == "toy N=2 r=4 fp32 nhwc cpu"
    assert str(dataclasses.replace(case, layout="nchw")) == "toy N=2 r=4 fp32 cpu"
    w, x = case.weights(), case.input(train=True)
    cl = torch.channels_last
    assert all(t.is_contiguous(memory_format=cl) for t in (w.W, w.A, w.B, x))
    assert not w.W.is_contiguous() and case.weights("conv_dora").A.is_contiguous(memory_format=cl)
    work, kernel = frozen(w, x, None)
    assert kernel.is_contiguous() and torch.equal(kernel, w.W)
    y = work()
    assert y.is_contiguous() and torch.allclose(y, w.convolve(x, w.W, w.b), atol=1e-6)
    with pytest.raises(ValueError, match=r"layout must be one of \('nchw', 'nhwc'\), got 'cl'"):
        ConvCase("toy", 2, 4, "fp32", "cpu", layout="cl")


def test_channels_last_runs_where_profiles_name_it() -> None:
    def nhwc(profile: str, device: str) -> set[str]:
        return {str(j.case) for j in conv_jobs(profile, [device]) if j.case.layout == "nhwc"}

    assert nhwc("quick", "cpu") == set()
    assert nhwc("quick", "cuda") == {"sdxl.down1 N=1 r=16 bf16 nhwc cuda"}
    assert nhwc("full", "cpu") == {"sdxl.down1 N=1 r=16 fp32 nhwc cpu",
                                   "sd15.down0 N=1 r=16 fp32 nhwc cpu",
                                   "sd15.mid N=1 r=16 fp32 nhwc cpu",
                                   "resnet50.layer1.3x3 N=8 r=16 fp32 nhwc cpu"}  # fmt: skip
    jobs = [j for j in conv_jobs("full", ["cpu"]) if j.case.layout == "nhwc"]
    assert {IMPLS[j.impl].variant for j in jobs} == {"conv"}  # DoRA in NCHW only


def test_the_layout_table_judges_each_impl_on_both_cis() -> None:
    nchw = [conv_entry("conv_add", "infer", 1.10, ci=(1.08, 1.12)),
            conv_entry("conv_two_step", "infer", 1.10, ci=(1.08, 1.12)),
            conv_entry("peft_conv", "infer", 1.10, ci=(1.08, 1.12), origin="peer")]  # fmt: skip
    nhwc = [
        dataclasses.replace(conv_entry(e.impl, "infer", r, ci=ci, origin=e.origin), layout="nhwc")
        for e, r, ci in zip(
            nchw, (0.90, 1.09, 1.30), ((0.88, 0.95), (1.05, 1.15), (1.25, 1.35)), strict=True
        )
    ]
    run = Run(make_run().meta, {}, {}, nchw + nhwc)
    back = parse_run(json.loads(dump_run(run)), "test")
    assert [e.layout for e in back.conv()] == ["nchw"] * 3 + ["nhwc"] * 3
    tables = {t.title: t for t in conv_tables(back)}
    wins = {r[2]: r[5] for r in tables["Conv2d LoRA: channels-last against NCHW"].rows}
    assert wins == {"conv_add": "channels-last", "conv_two_step": "not resolved: the CIs overlap",
                    "peft_conv": "NCHW"}  # fmt: skip
    targets = tables["Conv2d LoRA targets"].rows  # NCHW's alone: channels-last's 0.90 is not
    assert [(r[0], r[3]) for r in targets] == [
        ("sdxl.down1 N=1 r=16 fp32 cpu", "1.100 [1.080, 1.120]")
    ]
    with pytest.raises(ValueError, match="layout must be nchw or nhwc, got 'cl'"):
        dataclasses.replace(nchw[0], layout="cl")


def test_a_verdict_needs_the_whole_ci_on_one_side() -> None:
    assert verdict((1.01, 1.04), 1.05) == "met"
    assert verdict((1.10, 1.20), 1.05) == "missed by 4.8% or more"
    assert verdict((1.03, 1.07), 1.05).startswith("not resolved")


def test_a_conv_entry_that_cannot_be_true_is_refused() -> None:
    e = conv_entry("conv_add", "infer", 1.04)
    fields = {f.name: getattr(e, f.name) for f in dataclasses.fields(e)}
    with pytest.raises(ValueError, match=r"base_flops .* exceeds flops"):
        ConvEntry(**{**fields, "base_flops": e.flops + 1})
    with pytest.raises(ValueError, match="mode must be infer or train"):
        ConvEntry(**{**fields, "mode": "serve"})
