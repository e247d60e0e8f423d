"""DoRA on a Conv2d: the weights and their bad input, the float64 oracle against autograd of
the definition, PEFT's own magnitude and layer (use_dora=True) on the same tensors, a zero
channel, the registry's variant checks, and the kit catching broken Conv2d DoRA impls. (Every
Conv2d DoRA impl also passes the conformance kit in test_equivalence.py.)"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_kernels import IMPLS, Impl, rel_error
from lora_kernels.conformance import CONV_SHAPES, run_checks
from lora_kernels.conv import (
    ConvDoRAWeights,
    ConvLoRAWeights,
    conv_dora_reference_forward,
    conv_dora_reference_grads,
)
from lora_kernels.reference import forward_error

CONV_DORA = [n for n, i in IMPLS.items() if i.variant == "conv_dora"]
needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None,
    reason="peft is not installed: pip install 'lora-bench[peers]'",
)


def lora(seed: int = 5, **kwargs: object) -> ConvLoRAWeights:
    return ConvLoRAWeights.random(6, 10, 3, 3, padding=1, seed=seed, **kwargs)  # type: ignore[arg-type]


def dora(detach_norm: bool = True, seed: int = 5, **kwargs: object) -> ConvDoRAWeights:
    return ConvDoRAWeights.with_random_m(lora(seed, **kwargs), seed, detach_norm=detach_norm)


def with_zero_channel(w: ConvDoRAWeights, channel: int) -> ConvDoRAWeights:
    W, B = w.W.clone(), w.B.clone()
    W[channel], B[channel] = 0, 0
    return ConvDoRAWeights(W, w.b, w.A, B, w.scale, w.m, w.stride, w.padding, w.dilation)


def test_registry_lists_the_conv_dora_impls_with_honest_modes() -> None:
    assert CONV_DORA == ["conv_dora", "conv_dora_merged", "peft_conv_dora"]
    assert sorted(IMPLS["conv_dora"].modes) == ["infer", "train"]
    assert sorted(IMPLS["conv_dora_merged"].modes) == ["infer"]
    assert [n for n in CONV_DORA if not IMPLS[n].exact_norm] == ["peft_conv_dora"]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"m": torch.ones(9)}, ValueError, r"m must have shape \(out,\) = \(10,\), got \(9,\)"),
        ({"m": torch.full((10,), float("nan"))}, ValueError, "m holds non-finite values"),
        ({"m": torch.ones(10, dtype=torch.bfloat16)}, TypeError, "must share one dtype"),
        ({"detach_norm": 1}, TypeError, "detach_norm must be a bool"),
        ({"stride": 0}, ValueError, r"stride must be >= 1"),
    ],
)
def test_bad_conv_dora_weights(change: dict, error: type, match: str) -> None:
    w = dora()
    fields = {"W": w.W, "b": w.b, "A": w.A, "B": w.B, "scale": w.scale, "m": w.m, **change}
    with pytest.raises(error, match=match):
        ConvDoRAWeights(**fields)


def test_from_lora_starts_as_the_lora_layer(gen: torch.Generator) -> None:
    """m defaults to ‖W + s·B A‖ per output channel: DoRA then computes the LoRA output."""
    w = lora()
    x = torch.randn(2, 6, 7, 7, generator=gen)
    want = F.conv2d(x, w.merged_weight(), w.b, padding=1)
    assert rel_error(conv_dora_reference_forward(ConvDoRAWeights.from_lora(w), x), want) < 1e-6
    with pytest.raises(TypeError, match="lora must be ConvLoRAWeights, got ConvDoRAWeights"):
        ConvDoRAWeights.from_lora(dora())  # type: ignore[arg-type]


@pytest.mark.parametrize("detach_norm", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_oracle_matches_autograd_in_float64(seed: int, detach_norm: bool) -> None:
    """The closed-form oracle against torch.autograd of the definition, at stride 2, padding
    and dilation 2."""
    gen = torch.Generator().manual_seed(seed)
    w = ConvDoRAWeights.with_random_m(ConvLoRAWeights.random(
        5, 7, 1 + seed, 3, stride=2, padding=2, dilation=2, seed=seed), seed,
        detach_norm=detach_norm)  # fmt: skip
    x = torch.randn(2, 5, 11, 9, generator=gen)
    g = torch.randn(w.output_shape(x), generator=gen)
    A, B, m, x64 = (t.double().requires_grad_() for t in (w.A, w.B, w.m, x))
    V = w.W.double() + w.scale * torch.einsum("or,rikl->oikl", B[:, :, 0, 0], A)
    n = V.flatten(1).norm(dim=1)
    c = m / (n.detach() if detach_norm else n)
    z = F.conv2d(x64, V, stride=2, padding=2, dilation=2)
    y = z * c[:, None, None] + w.b.double()[:, None, None]
    y.backward(g.double())
    ref = conv_dora_reference_grads(w, x, g)
    assert rel_error(conv_dora_reference_forward(w, x), y) < 1e-12
    for name, t in (("x", x64), ("A", A), ("B", B), ("m", m)):
        assert rel_error(getattr(ref, name), t.grad) < 1e-12, name


@needs_peft
def test_peft_s_own_magnitude_is_the_channel_norm() -> None:
    """PEFT's lora.Conv2d(use_dora=True), initialised by itself, holds m = ‖W + s·B A‖ per
    output channel as (1, out, 1, 1): what from_lora gives."""
    from peft import LoraConfig
    from peft.tuners.lora import Conv2d

    torch.manual_seed(0)
    base = nn.Conv2d(6, 10, 3, padding=1)
    config = LoraConfig(r=3, lora_alpha=6, use_dora=True, init_lora_weights=False)
    layer = Conv2d(base, "default", config=config, r=3, lora_alpha=6, use_dora=True,
                   init_lora_weights=False)  # fmt: skip
    A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    w = ConvLoRAWeights(base.weight.detach(), base.bias.detach(), A, B, 2.0, padding=1)
    peft_m = layer.lora_magnitude_vector["default"].weight.detach()
    assert peft_m.shape == (1, 10, 1, 1)
    assert rel_error(ConvDoRAWeights.from_lora(w).m, peft_m.flatten()) < 1e-6
    x = torch.randn(2, 6, 8, 8)
    w_dora = ConvDoRAWeights.from_lora(w, peft_m.flatten().clone())
    assert forward_error(lambda t: layer(t).detach(), w_dora, x) < 1e-5


@needs_peft
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_ours_match_peft_on_the_same_weights(mode: str, gen: torch.Generator) -> None:
    """Each Conv2d DoRA impl of ours against PEFT's layer itself (not only the oracle)."""
    x = torch.randn(2, 6, 9, 8, generator=gen)
    g = torch.randn(2, 10, 9, 8, generator=gen)

    def run(name: str) -> list[torch.Tensor]:
        w = dora().requires_grad_(mode == "train")
        xi = x.clone().requires_grad_(mode == "train")
        y = IMPLS[name].build(w, mode)(xi)
        if mode == "infer":
            return [y.detach()]
        y.backward(g)
        return [y.detach(), xi.grad, *(t.grad for t in w.trainable().values())]

    peft = run("peft_conv_dora")
    for name in CONV_DORA:
        if mode in IMPLS[name].modes and IMPLS[name].origin == "ours":
            for got, want in zip(run(name), peft, strict=True):
                assert rel_error(got, want) < 1e-5, name


def test_a_zero_channel_gives_the_bias_alone(gen: torch.Generator) -> None:
    w = with_zero_channel(dora(), 4)
    x = torch.randn(2, 6, 5, 5, generator=gen)
    y = conv_dora_reference_forward(w, x)
    assert torch.equal(y[:, 4], w.b[4].double().expand(2, 5, 5))
    grads = conv_dora_reference_grads(w, x, torch.randn(2, 10, 5, 5, generator=gen))
    assert grads.m[4] == 0 and torch.isfinite(grads.A).all()
    for name in CONV_DORA:
        if IMPLS[name].origin == "ours":
            assert forward_error(IMPLS[name].build(w), w, x) < 1e-5, name


@needs_peft
def test_peft_gives_nan_on_a_zero_channel(gen: torch.Generator) -> None:
    """PEFT divides by the zero norm; ours define the channel. The kit leaves PEFT's zero-row
    shapes out for this reason, and this test notices if PEFT changes."""
    w = with_zero_channel(dora(), 4)
    y = IMPLS["peft_conv_dora"].build(w)(torch.randn(2, 6, 5, 5, generator=gen))
    assert torch.isnan(y[:, 4]).all() and torch.isfinite(y[:, :4]).all()


def test_variants_do_not_mix() -> None:
    w = dora()
    with pytest.raises(ValueError, match=r"computes conv, but the weights are ConvDoRAWeights"
                                         r" \(conv_dora\); pick one of: conv_dora"):  # fmt: skip
        IMPLS["conv_add"].build(w)
    with pytest.raises(ValueError, match=r"computes conv_dora, but the weights are "
                                         r"ConvLoRAWeights \(conv\)"):  # fmt: skip
        IMPLS["conv_dora"].build(w.lora)
    with pytest.raises(ValueError, match=r"conv_dora_merged' supports modes \['infer'\]"):
        IMPLS["conv_dora_merged"].build(w, "train")


@needs_peft
def test_peft_refuses_the_exact_gradient_and_a_dilated_base() -> None:
    with pytest.raises(ValueError, match=r"treats the norm as a constant.*detach_norm=True"):
        IMPLS["peft_conv_dora"].build(dora(detach_norm=False), "train")
    dilated = ConvDoRAWeights.from_lora(ConvLoRAWeights.random(4, 4, 2, 3, dilation=2))
    with pytest.raises(ValueError, match=r"without the base's dilation.*\(2, 2\); ours can"):
        IMPLS["peft_conv_dora"].build(dilated)


def test_conv_dora_sees_in_place_updates(gen: torch.Generator) -> None:
    """conv_dora keeps W Aᵀ while A is unchanged: an optimizer step must refresh it."""
    x = torch.randn(2, 6, 6, 6, generator=gen)
    w = dora()
    op = IMPLS["conv_dora"].build(w)
    op(x)
    with torch.no_grad():
        w.A.add_(0.3 * torch.randn(w.A.shape, generator=gen))
        w.B.mul_(1.5)
        w.m.add_(0.1)
    assert forward_error(op, w, x) < 1e-5


def _broken(name: str, norm_of) -> Impl:
    """DoRA on a Conv2d with the norm `norm_of(V, w)` (out,) in place of the channel norm."""

    def fn(w: ConvDoRAWeights, x: torch.Tensor) -> torch.Tensor:
        V = w.W + w.scale * torch.einsum("or,rikl->oikl", w.B[:, :, 0, 0], w.A)
        c = (w.m / norm_of(V, w))[:, None, None]
        y = w.lora.convolve(x, V) * c
        return y if w.b is None else y + w.b[:, None, None]

    return Impl(name, f"deliberately broken: {name}", lambda w: lambda x: fn(w, x),
                variant="conv_dora")  # fmt: skip


@pytest.mark.parametrize(
    ("impl", "mode", "failure"),
    [
        (_broken("no_norm", lambda V, w: torch.ones(V.shape[0])), "infer", "'y'"),
        (_broken("norm_of_W", lambda V, w: w.W.flatten(1).norm(dim=1)), "infer", "'y'"),
        (_broken("norm_per_kernel_row", lambda V, w: V.norm(dim=(1, 2))[:, 0]), "infer", "'y'"),
        (_broken("norm_always_detached", lambda V, w: V.flatten(1).norm(dim=1).detach()),
         "train", "'dA'"),
        (_broken("norm_never_detached", lambda V, w: V.flatten(1).norm(dim=1)), "train", "'dA'"),
    ],
    ids=lambda v: v.name if isinstance(v, Impl) else None,
)  # fmt: skip
def test_the_kit_catches_broken_conv_dora_impls(impl: Impl, mode: str, failure: str) -> None:
    """A dropped m, a norm over the wrong axes, and the wrong norm gradient all fail."""
    checks = run_checks(impl, "cpu", torch.float32, mode, CONV_SHAPES[:5], zero_rows=False)
    failures = " ".join(r.failure for r in checks)
    assert failure in failures, failures
