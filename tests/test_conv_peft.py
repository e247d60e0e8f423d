"""from_peft learns PEFT's lora.Conv2d: a model with LoRA on its convolutions and linears
converts to LoRAConv2d and LoRALinear on the same tensors, computes the same function with
the same gradients, merges, unmerges and switches impls; what PEFT takes but cannot be LoRA
is refused, naming the module, and nothing changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_kernels import LoRALinear, from_peft, merge, set_impl, unmerge
from lora_kernels.conv.layer import LoRAConv2d

peft = pytest.importorskip("peft", reason="from_peft's Conv2d tests need peft (the peers extra)")


class Net(nn.Module):
    def __init__(self, second: nn.Conv2d | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.down = second or nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.conv(x))).mean((2, 3)))


def peft_net(second: nn.Conv2d | None = None, **config: object) -> nn.Module:
    torch.manual_seed(0)
    model = peft.get_peft_model(Net(second), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["conv", "down", "head"], **config))  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at zero: make every adapter count
    return model


def outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().sum().backward()
    return y.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_a_peft_conv_model_converts_and_computes_the_same_function() -> None:
    model = peft_net()
    x = torch.randn(2, 3, 12, 12)
    want, want_grads = outputs(model, x)
    A = model.base_model.model.conv.lora_A["default"].weight
    new = from_peft(model, conv_impl="conv_add")
    assert {n.rsplit(".", 1)[-1]: type(m) for n, m in new.items()} == {
        "conv": LoRAConv2d, "down": LoRAConv2d, "head": LoRALinear}  # fmt: skip
    conv = model.base_model.model.conv
    assert isinstance(conv, LoRAConv2d) and conv.lora_A is A and conv.impl == "conv_add"
    assert conv.scale == 2.0
    got, grads = outputs(model, x)
    assert torch.allclose(got, want, atol=1e-5)
    assert len(grads) == len(want_grads) == 6  # A and B of three layers
    for g, w in zip(grads.values(), want_grads.values(), strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


def test_the_converted_model_merges_unmerges_and_switches_impls() -> None:
    model = peft_net()
    x = torch.randn(1, 3, 10, 10)
    from_peft(model)
    with torch.no_grad():
        want = model(x)
        merge(model)
        assert torch.allclose(model(x), want, atol=1e-5)
        unmerge(model)
        set_impl(model, "conv_autograd")  # the convolutions only
        set_impl(model, "addmm")  # the linear only
        assert torch.allclose(model(x), want, atol=1e-5)
    assert model.base_model.model.conv.impl == "conv_autograd"
    assert model.base_model.model.head.impl == "addmm"


@pytest.mark.parametrize(("second", "config", "message"), [
    (nn.Conv2d(8, 8, 3, padding=2, dilation=2), {}, "down is dilated .*PEFT's A ignores"),
    (nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), {}, "down pads with 'reflect'"),
    (nn.Conv2d(8, 8, 3, padding=1, groups=2), {}, r"down is a grouped convolution \(groups=2\)"),
    (None, {"lora_dropout": 0.1}, "has lora_dropout=0.1; LoRAConv2d has no dropout"),
    (None, {"use_dora": True}, r"conv uses a LoRA variant \(DoraConv2dVariant\) on a Conv2d"),
])  # fmt: skip
@pytest.mark.filterwarnings("ignore:LoRA adapter added to ConvNd layer with groups > 1")
def test_what_peft_takes_but_lora_conv_cannot_be_is_refused_unchanged(
    second: nn.Conv2d | None, config: dict, message: str
) -> None:
    model = peft_net(second, **config)
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=f"cannot convert: .*{message}"):
        from_peft(model)
    assert {n: type(m) for n, m in model.named_modules()} == before


def test_a_conv_impl_that_is_no_conv_impl_is_refused_first() -> None:
    model = peft_net()
    with pytest.raises(ValueError, match="impl 'two_step' computes lora; a LoRAConv2d takes"):
        from_peft(model, conv_impl="two_step")
    with pytest.raises(ValueError, match="impl 'conv_add' computes conv; the model has no layer"):
        set_impl(nn.Sequential(LoRALinear(4, 4, 2)), "conv_add")
