"""LoRAConv2d and inject_conv: the layer computes the oracle's function with every Conv2d impl,
merges and unmerges, and a refused injection changes nothing; ResNet-18 is torchvision's
layout; the conv-model bench's LoRA model, PEFT's and the oracle agree, and its table."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from runs import make_run
from torch import nn

from bench.families.conv_models import (
    PEFT,
    ConvModelCase,
    allowed_errors,
    conv_model_jobs,
    errors_against,
    lora_grads,
    models,
    peft_missing,
)
from bench.families.resnet import ResNet18
from bench.report.conv import conv_model_tables
from bench.schema.entries import ConvModelEntry, Paired
from bench.schema.run import Run, dump_run, parse_run
from lora_kernels import IMPLS, rel_error
from lora_kernels.conv import conv_reference_forward
from lora_kernels.conv.layer import LoRAConv2d, inject_conv

CONV_IMPLS = [n for n, i in IMPLS.items() if i.variant == "conv" and i.origin == "ours"]


def adapted(impl: str = "conv_two_step") -> LoRAConv2d:
    torch.manual_seed(0)
    layer = LoRAConv2d(nn.Conv2d(6, 10, 3, stride=2, padding=1), 4, alpha=8.0, impl=impl)
    with torch.no_grad():
        layer.lora_B.normal_()  # B starts at zero: make the adapter count
    return layer


@pytest.mark.parametrize("impl", CONV_IMPLS)
def test_the_layer_computes_the_oracles_function_with_each_impl(impl: str) -> None:
    layer = adapted(impl)
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        y = layer(x)
    assert rel_error(y, conv_reference_forward(layer.weights(), x)) < 1e-5
    if "train" in IMPLS[impl].modes:
        layer(x).sum().backward()
        assert layer.lora_A.grad is not None and layer.base.weight.grad is None


def test_a_fresh_layer_is_its_base_and_an_optimizer_step_is_followed() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    want = conv(x).detach()
    layer = LoRAConv2d(conv, 2, impl="conv_add")
    assert torch.equal(layer(x).detach(), want)  # B = 0
    opt = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=1.0)
    layer(x).square().sum().backward()
    opt.step()  # B changes in place: the cached op must follow
    with torch.no_grad():
        assert rel_error(layer(x), conv_reference_forward(layer.weights(), x)) < 1e-5


def test_merge_then_unmerge_gives_the_base_back() -> None:
    layer = adapted()
    x = torch.randn(1, 6, 8, 8)
    W = layer.base.weight.detach().clone()
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        assert rel_error(layer(x), unmerged) < 1e-5
        with pytest.raises(ValueError, match="already merged"):
            layer.merge()
        layer.unmerge()
    assert rel_error(layer.base.weight, W) < 1e-6 and not layer.merged
    with pytest.raises(ValueError, match="not merged"):
        layer.unmerge()


def test_a_merged_layer_follows_its_adapter_keeps_no_kernel_copy_and_refuses_to_train() -> None:
    layer = adapted()
    x = torch.randn(1, 6, 8, 8)
    W = layer.base.weight.detach().clone()
    layer.merge()
    assert layer._folded is not None
    assert sum(t.numel() for t in layer._folded[:2]) < W.numel()  # A and B, not s·B A
    with torch.no_grad():
        layer.lora_B.mul_(2)  # changed while merged: W follows
        assert (
            rel_error(
                layer(x), conv_reference_forward(dataclasses.replace(layer.weights(), W=W), x)
            )
            < 1e-5
        )
    with pytest.raises(RuntimeError, match="this LoRAConv2d is merged"):
        layer(x).sum().backward()
    layer.unmerge()
    assert rel_error(layer.base.weight, W) < 1e-6


def test_a_layer_refuses_what_it_cannot_adapt_and_leaves_it_unfrozen() -> None:
    grouped = nn.Conv2d(4, 8, 3, groups=2)
    with pytest.raises(ValueError, match="groups=1, got a convolution with groups=2"):
        LoRAConv2d(grouped)
    assert grouped.weight.requires_grad
    with pytest.raises(TypeError, match="got ConvTranspose2d"):
        LoRAConv2d(nn.ConvTranspose2d(4, 8, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="impl 'two_step' computes lora; a LoRAConv2d takes"):
        LoRAConv2d(nn.Conv2d(4, 8, 3), impl="two_step")


def test_inject_conv_adapts_every_convolution_of_resnet18_which_starts_as_it_was() -> None:
    torch.manual_seed(0)
    model = ResNet18().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    names = inject_conv(model, 4, impl="conv_add")
    assert len(names) == 20 and names[0] == "conv1" and "layer2.0.downsample.0" in names
    assert all(isinstance(model.get_submodule(n), LoRAConv2d) for n in names)
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_a_refused_injection_names_each_module_and_changes_nothing() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"nothing changed\): 1: .*groups=8.*; 2: .*'reflect'"):
        inject_conv(model)
    with pytest.raises(ValueError, match="nope: no such module"):
        inject_conv(model, names=["0", "nope"])
    assert [type(m) for m in model] == [nn.Conv2d] * 3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert inject_conv(model, names=["0"]) == ["0"] and isinstance(model[0], LoRAConv2d)


def test_resnet18_is_torchvisions_layout() -> None:
    model = ResNet18()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's figure
    keys = list(model.state_dict())
    assert keys[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert "layer3.0.downsample.1.running_var" in keys and keys[-2:] == ["fc.weight", "fc.bias"]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


@pytest.mark.parametrize("variant", ["conv_add", "conv_autograd", PEFT])
def test_the_benchs_lora_model_matches_the_float64_oracle(variant: str) -> None:
    if variant == PEFT and peft_missing():
        pytest.skip(peft_missing())
    case = ConvModelCase("resnet18", 2, 64, 4, "fp32", "cpu")
    lora, full, oracle = models(case, variant)
    x, labels = case.images()
    logits, grads = lora_grads(lora, x, labels)
    want_logits, want = lora_grads(oracle, x.double(), labels)
    assert set(grads) == set(want) and len(want) == 40  # A and B of 20 convolutions
    assert rel_error(logits, want_logits) < 1e-4
    assert max(rel_error(grads[k], g) for k, g in want.items()) < 1e-4
    assert all(p.requires_grad for p in full.parameters())
    allowed, floor = allowed_errors(oracle, case, x, labels)
    errors = errors_against(lora, oracle, x, labels)
    assert all(errors[k] <= allowed[k] for k in errors) and max(floor.values()) < 1e-4
    with torch.no_grad():  # a wrong adapter is seen
        next(p for n, p in lora.named_parameters() if "lora_B" in n).mul_(2)
    errors = errors_against(lora, oracle, x, labels)
    assert errors["logits"] > allowed["logits"]


def test_quick_times_ours_and_peft_against_a_full_fine_tune() -> None:
    quick = [str(j) for j in conv_model_jobs("quick", ["cpu"])]
    assert quick == ["conv_add train resnet18 N=4 224px r=8 fp32 cpu",
                     "peft train resnet18 N=4 224px r=8 fp32 cpu"]  # fmt: skip
    assert len(conv_model_jobs("full", ["cpu"])) == 8


def test_conv_model_entries_round_trip_and_the_table() -> None:
    case = ConvModelCase("resnet18", 4, 224, 8, "fp32", "cpu")
    base = [0.2 + i * 1e-3 for i in range(7)]
    entry = ConvModelEntry(
        fullname="bench/test_conv_models.py::test_conv_model", **case.fields(), variant="conv_add",
        origin="ours", threads=2, rel_error=6e-6, floor_error=5e-6, trainable_params=287_384,
        full_params=11_689_512, saved_bytes=88 << 20, full_saved_bytes=85 << 20,
        rounds=Paired(1, [0.9 * b for b in base], base, "sure", 0.02),
    )  # fmt: skip
    run = Run(make_run().meta, {}, {}, [entry])
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.conv_model() == [entry]
    (table,) = conv_model_tables(back)
    assert table.rows[0][3] == "0.900 [0.900, 0.900]"
    assert table.rows[0][6] == "287,384 of 11,689,512"
    assert table.rows[0][-1] == "≤ 0.80: missed by 12.5% or more"
    fields = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    with pytest.raises(ValueError, match="must be below full_params"):
        ConvModelEntry(**{**fields, "trainable_params": 11_689_512})
