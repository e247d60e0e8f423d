"""Conv2d LoRA's weights and float64 oracle: the oracle is PEFT's `lora.Conv2d` (forward and
the gradients of x, A and B, by autograd in float64) on random shapes, strides, paddings,
kernels and ranks; the merged kernel computes the same function, dilation included (which
PEFT's layer does not take); and bad weights or a convolution LoRA cannot adapt are refused,
saying what is allowed."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_kernels import rel_error, tolerance
from lora_kernels.conv import ConvLoRAWeights, conv_reference_forward, conv_reference_grads

TOL = 1e-10  # float64 against float64: the same sums in another order


def cases(n: int = 12) -> list[dict]:
    rng = random.Random(42)
    out = []
    for i in range(n):
        k = rng.choice([1, 3, 3, 5])
        out.append({"in": rng.choice([1, 3, 8, 16]), "out": rng.choice([4, 8, 24]),
                    "r": rng.choice([1, 2, 4, 8]), "k": k, "stride": rng.choice([1, 2]),
                    "padding": rng.choice([0, k // 2]), "bias": i % 2 == 0, "rslora": i % 3 == 0,
                    "n": rng.choice([1, 2]), "hw": (rng.randint(k + 1, 12), rng.randint(k + 1, 12)),
                    "seed": i})  # fmt: skip
    return out


def weights(c: dict, dilation: int = 1) -> ConvLoRAWeights:
    """fp32 weights: the oracle and PEFT's float64 layer take the same values, exactly."""
    return ConvLoRAWeights.random(c["in"], c["out"], c["r"], c["k"], stride=c["stride"],
                                  padding=c["padding"], dilation=dilation, bias=c["bias"],
                                  use_rslora=c["rslora"], seed=c["seed"])  # fmt: skip


def peft_conv(w: ConvLoRAWeights) -> nn.Module:
    """PEFT's lora.Conv2d on a Conv2d of these weights, its A and B set to w's, in float64."""
    peft = pytest.importorskip("peft", reason="PEFT is the peer checked here (extra `peers`)")
    from peft.tuners.lora import Conv2d as LoraConv2d

    conv = nn.Conv2d(w.in_features, w.out_features, w.kernel_size, stride=w.stride,
                     padding=w.padding, bias=w.b is not None).double()  # fmt: skip
    config = peft.LoraConfig(r=w.rank, lora_alpha=w.scale * w.rank, init_lora_weights=False)
    layer = LoraConv2d(conv, "default", config=config, r=w.rank, lora_alpha=w.scale * w.rank)
    with torch.no_grad():
        conv.weight.copy_(w.W)
        if w.b is not None:
            conv.bias.copy_(w.b)
        layer.lora_A["default"].weight.copy_(w.A)
        layer.lora_B["default"].weight.copy_(w.B)
    layer.scaling["default"] = w.scale
    return layer.double()


@pytest.mark.parametrize("c", cases(), ids=lambda c: f"seed{c['seed']}")
def test_the_oracle_is_peft_conv2d_forward_and_gradients(c: dict) -> None:
    w = weights(c)
    layer = peft_conv(w)
    gen = torch.Generator().manual_seed(c["seed"] + 100)
    x = torch.randn(c["n"], c["in"], *c["hw"], generator=gen)
    x64 = x.double().requires_grad_()
    want = layer(x64)
    assert rel_error(conv_reference_forward(w, x), want) < TOL
    g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    want.backward(g)
    grads = conv_reference_grads(w, x, g)
    assert rel_error(grads.x, x64.grad) < TOL
    assert rel_error(grads.A, layer.lora_A["default"].weight.grad) < TOL
    assert rel_error(grads.B, layer.lora_B["default"].weight.grad) < TOL


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("c", cases(6), ids=lambda c: f"seed{c['seed']}")
def test_the_merged_kernel_computes_the_same_function(c: dict, dilation: int) -> None:
    """One convolution with W + s·B A is the adapted layer, at any dilation: A shares the
    base's (PEFT's A does not, so its dilated layer fails on a shape mismatch)."""
    c = {**c, "hw": (c["hw"][0] + 8, c["hw"][1] + 8), "padding": dilation * (c["k"] // 2)}
    w = weights(c, dilation)
    x = torch.randn(c["n"], c["in"], *c["hw"], generator=torch.Generator().manual_seed(7))
    kernel = w.W.double() + w.scale * torch.einsum("or,rikl->oikl", w.B[:, :, 0, 0].double(),
                                                   w.A.double())  # fmt: skip
    geometry = {"stride": w.stride, "padding": w.padding, "dilation": w.dilation}
    b = None if w.b is None else w.b.double()
    merged = F.conv2d(x.double(), kernel, b, **geometry)
    assert rel_error(merged, conv_reference_forward(w, x)) < TOL
    assert rel_error(w.merged_weight(), kernel) < tolerance(torch.float32, "cpu")
    assert rel_error(w.merged_weight(-1.0), 2 * w.W.double() - kernel) < tolerance(
        torch.float32, "cpu"
    )


def test_gradients_check_against_autograd_of_the_oracle_at_dilation_two() -> None:
    w = ConvLoRAWeights.random(6, 10, 3, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(2, 6, 11, 9)
    x64 = x.double().requires_grad_()
    A, B = w.A.double().requires_grad_(), w.B.double().requires_grad_()
    geometry = {"stride": w.stride, "padding": w.padding, "dilation": w.dilation}
    b = None if w.b is None else w.b.double()
    y = F.conv2d(x64, w.W.double(), b, **geometry)
    y = y + w.scale * F.conv2d(F.conv2d(x64, A, **geometry), B)
    g = torch.randn_like(y)
    y.backward(g)
    grads = conv_reference_grads(w, x, g)
    for got, want in ((grads.x, x64.grad), (grads.A, A.grad), (grads.B, B.grad)):
        assert rel_error(got, want) < TOL


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"W": torch.zeros(4, 3, 3)}, ValueError, r"W must be 4-D \(out, in, kh, kw\)"),
        ({"A": torch.zeros(2, 3, 1, 1)}, ValueError, r"A must have shape \(r, in, kh, kw\) = "),
        ({"B": torch.zeros(4, 2, 3, 3)}, ValueError, r"B must have shape \(out, r, 1, 1\)"),
        ({"b": torch.zeros(5)}, ValueError, r"b must have shape \(out,\) = \(4,\)"),
        ({"stride": 0}, ValueError, r"stride must be >= 1 in each dimension, got \(0, 0\)"),
        ({"padding": (1, -1)}, ValueError, r"padding must be >= 0 in each dimension"),
        ({"dilation": 1.5}, TypeError, r"dilation must be an int or a pair of ints"),
        ({"scale": float("nan")}, ValueError, "scale must be finite"),
        ({"A": torch.zeros(2, 3, 3, 3, dtype=torch.float16)}, TypeError, "must share one dtype"),
    ],
)
def test_bad_weights_are_refused_saying_what_is_allowed(
    change: dict, error: type[Exception], match: str
) -> None:
    fields = {"W": torch.zeros(4, 3, 3, 3), "b": torch.zeros(4), "A": torch.zeros(2, 3, 3, 3),
              "B": torch.zeros(4, 2, 1, 1), "scale": 2.0}  # fmt: skip
    with pytest.raises(error, match=match):
        ConvLoRAWeights(**{**fields, **change})


def test_bad_input_is_refused() -> None:
    w = ConvLoRAWeights.random(3, 4, 2, 5)
    with pytest.raises(ValueError, match=r"x must have shape \(N, in, H, W\) with in = 3"):
        w.check_input(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"smaller than the kernel \(5, 5\)"):
        w.check_input(torch.zeros(1, 3, 4, 8))
    with pytest.raises(TypeError, match=r"x has dtype torch\.float16"):
        w.check_input(torch.zeros(1, 3, 8, 8, dtype=torch.float16))


@pytest.mark.parametrize(
    ("conv", "error", "match"),
    [
        (nn.Conv2d(4, 8, 3, groups=2), ValueError, r"groups=1, got a convolution with groups=2"),
        (nn.Conv2d(4, 4, 3, groups=4), ValueError, r"grouped or depthwise"),
        (nn.ConvTranspose2d(4, 8, 3), TypeError, r"got ConvTranspose2d \(transposed"),
        (nn.Conv1d(4, 8, 3), TypeError, r"got Conv1d"),
        (nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), ValueError, "'reflect'"),
        (nn.Conv2d(4, 8, 3, padding="same"), ValueError, "numeric padding, got 'same'"),
    ],
)
def test_a_convolution_lora_cannot_adapt_is_refused_unchanged(
    conv: nn.Module, error: type[Exception], match: str
) -> None:
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    with pytest.raises(error, match=match):
        ConvLoRAWeights.from_conv2d(conv, torch.zeros(2, 4, 3, 3), torch.zeros(8, 2, 1, 1), 1.0)
    assert all(torch.equal(before[k], v) for k, v in conv.state_dict().items())


def test_from_conv2d_shares_the_base_and_keeps_its_geometry() -> None:
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=1)
    w = ConvLoRAWeights.from_conv2d(conv, torch.randn(2, 4, 3, 3), torch.randn(8, 2, 1, 1), 0.5)
    assert w.W.data_ptr() == conv.weight.data_ptr() and w.b is not None
    assert (w.stride, w.padding, w.dilation, w.rank, w.kernel_size) == ((2, 2), (1, 1), (1, 1),
                                                                         2, (3, 3))  # fmt: skip
    x = torch.randn(1, 4, 9, 9)
    assert conv_reference_forward(w, x).shape == (1, 8, *w.output_size(9, 9))


def test_peft_conv_refuses_dilation_saying_why() -> None:
    """PEFT builds A without the base's dilation (its layer fails on a shape mismatch there):
    the peer says so rather than run another function."""
    from lora_kernels import IMPLS

    w = ConvLoRAWeights.random(4, 6, 2, 3, padding=2, dilation=2)
    with pytest.raises(ValueError, match=r"without the base's dilation.*dilation \(2, 2\)"):
        IMPLS["peft_conv"].build(w)


@pytest.mark.parametrize("name", ["conv_two_step", "conv_merged"])
def test_a_conv_impl_refuses_linear_weights_and_a_linear_impl_conv_weights(name: str) -> None:
    from lora_kernels import IMPLS, LoRAWeights

    with pytest.raises(ValueError, match=r"computes conv, but the weights are LoRAWeights"):
        IMPLS[name].build(LoRAWeights.random(8, 8, 2))
    with pytest.raises(ValueError, match=r"computes lora, but the weights are ConvLoRAWeights"):
        IMPLS["two_step"].build(ConvLoRAWeights.random(4, 6, 2))


def test_conv_autograd_takes_only_the_gradients_asked_for() -> None:
    """A first layer's x needs no gradient: the lean backward skips dx and still gives dA and
    dB as the oracle does."""
    from lora_kernels import IMPLS

    w = ConvLoRAWeights.random(5, 7, 3, 3, stride=2, padding=1).requires_grad_()
    x = torch.randn(2, 5, 9, 8)
    y = IMPLS["conv_autograd"].build(w, "train")(x)
    g = torch.randn_like(y)
    y.backward(g)
    want = conv_reference_grads(w, x, g)
    assert x.grad is None
    assert rel_error(w.A.grad, want.A) < tolerance(torch.float32, "cpu")
    assert rel_error(w.B.grad, want.B) < tolerance(torch.float32, "cpu")
