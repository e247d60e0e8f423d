"""LoRALinear: init, scaling, merge/unmerge, impl selection, dropout and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_kernels import IMPLS, LoRALinear, reference_forward, rel_error

IN, OUT, RANK = 32, 24, 4
LORA_IMPLS = [n for n, i in IMPLS.items() if i.lora_equivalent and i.variant == "lora"]
CHEAP_LORA_IMPLS = [name for name in LORA_IMPLS if not IMPLS[name].compiles]


def skip_unless_cpu_supports(name: str) -> None:
    reason = IMPLS[name].unavailable_reason("cpu", torch.float32, "infer")
    if reason:
        pytest.skip(reason)


def trained_layer(gen: torch.Generator, **kwargs: object) -> LoRALinear:
    """A layer whose B is non-zero, as after some training."""
    layer = LoRALinear(IN, OUT, RANK, alpha=8.0, **kwargs)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(OUT, RANK, generator=gen) * 0.5)
    return layer


@pytest.mark.parametrize("name", LORA_IMPLS)
def test_output_equals_base_at_init(name: str, gen: torch.Generator) -> None:
    skip_unless_cpu_supports(name)
    layer = LoRALinear(IN, OUT, RANK, impl=name)
    x = torch.randn(2, 5, IN, generator=gen)
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base(x))


def test_init_and_freezing() -> None:
    layer = LoRALinear(IN, OUT, RANK)
    assert not layer.base.weight.requires_grad
    assert not layer.base.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(IN)  # kaiming_uniform(a=sqrt(5)) on (r, in)
    assert layer.lora_A.abs().max() <= bound
    assert float(layer.lora_A.detach().std()) > bound / 4
    gaussian = LoRALinear(IN, OUT, RANK, init="gaussian")
    assert float(gaussian.lora_A.detach().std()) == pytest.approx(1 / RANK, rel=0.2)
    assert torch.count_nonzero(gaussian.lora_B) == 0


def test_scaling() -> None:
    assert LoRALinear(IN, OUT, 4, alpha=16).scale == 4.0
    assert LoRALinear(IN, OUT, 4, alpha=16, use_rslora=True).scale == 8.0


@pytest.mark.parametrize("name", CHEAP_LORA_IMPLS)
def test_forward_matches_oracle(name: str, gen: torch.Generator) -> None:
    skip_unless_cpu_supports(name)
    layer = trained_layer(gen, impl=name)
    x = torch.randn(3, IN, generator=gen)
    with torch.no_grad():
        y = layer(x)
    assert rel_error(y, reference_forward(layer.weights(), x)) <= 1e-5


def test_from_linear_wraps_the_same_module(gen: torch.Generator) -> None:
    linear = nn.Linear(IN, OUT)
    layer = LoRALinear.from_linear(linear, RANK)
    assert layer.base is linear
    assert not linear.weight.requires_grad
    with pytest.raises(ValueError, match="base is 32->24, but in_features->out_features is 32->25"):
        LoRALinear(IN, OUT + 1, RANK, base=nn.Linear(IN, OUT))
    with pytest.raises(TypeError, match=r"linear must be an nn.Linear, got Conv1d"):
        LoRALinear.from_linear(nn.Conv1d(1, 1, 1))


def test_merge_unmerge_roundtrip(gen: torch.Generator) -> None:
    layer = trained_layer(gen)
    x = torch.randn(7, IN, generator=gen)
    W0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        y_unmerged = layer(x)
        layer.merge()
        assert layer.merged
        assert not torch.equal(layer.base.weight, W0)
        y_merged = layer(x)
        layer.unmerge()
    assert rel_error(y_merged, y_unmerged) <= 1e-5
    torch.testing.assert_close(
        layer.base.weight, W0, rtol=0, atol=4 * torch.finfo(torch.float32).eps
    )


def test_merge_errors_change_nothing(gen: torch.Generator) -> None:
    layer = trained_layer(gen)
    with pytest.raises(ValueError, match="not merged; merge"):
        layer.unmerge()
    layer.merge()
    W1 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="already merged; unmerge"):
        layer.merge()
    assert torch.equal(layer.base.weight, W1)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("where", ["lora_A", "lora_B"])
def test_merge_rejects_non_finite(gen: torch.Generator, where: str, bad: float) -> None:
    layer = trained_layer(gen)
    with torch.no_grad():
        getattr(layer, where)[0, 0] = bad
    W0 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge()
    assert torch.equal(layer.base.weight, W0)
    assert not layer.merged


def test_merge_in_half_precision_overflow_is_caught() -> None:
    layer = LoRALinear(IN, OUT, RANK, dtype=torch.float16)
    with torch.no_grad():
        layer.lora_A.fill_(300.0)
        layer.lora_B.fill_(300.0)
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge()


def test_op_is_rebuilt_after_weights_change(gen: torch.Generator) -> None:
    """A cached merged op must not serve stale weights after an in-place update."""
    layer = trained_layer(gen, impl="merged")
    x = torch.randn(4, IN, generator=gen)
    with torch.no_grad():
        y1 = layer(x)
        layer.lora_B.mul_(2.0)
        y2 = layer(x)
    assert not torch.equal(y1, y2)
    assert rel_error(y2, reference_forward(layer.weights(), x)) <= 1e-5


def test_training_with_merged_impl_says_what_to_do(gen: torch.Generator) -> None:
    layer = trained_layer(gen, impl="merged")
    with pytest.raises(ValueError, match=r"impl 'merged' supports modes \['infer'\], not 'train'"):
        layer(torch.randn(2, IN, generator=gen))


def test_dropout_applies_to_the_adapter_only(gen: torch.Generator) -> None:
    layer = trained_layer(gen, dropout=0.5, impl="addmm")
    x = torch.randn(64, IN, generator=gen)
    layer.train()
    y_train = layer(x)
    assert not torch.equal(y_train, layer(x)), "dropout must be random in training"
    layer.eval()
    with torch.no_grad():
        assert rel_error(layer(x), reference_forward(layer.weights(), x)) <= 1e-5


def test_gradients_reach_only_the_adapter(gen: torch.Generator) -> None:
    layer = trained_layer(gen, impl="addmm")
    layer(torch.randn(5, IN, generator=gen)).pow(2).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, r"rank must be in \[1, min\(in_features, out_features\)\]"),
        ({"rank": 25}, ValueError, r"\[1, 24\], got 25"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
        ({"alpha": 0}, ValueError, "alpha must be a finite number > 0, got 0"),
        ({"alpha": -4.0}, ValueError, "alpha must be a finite number > 0"),
        ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
        ({"dropout": "0.1"}, TypeError, "dropout must be a number"),
        ({"init": "zeros"}, ValueError, "init must be one of"),
        ({"impl": "fastest"}, ValueError, "unknown impl 'fastest'; known: base, two_step"),
        ({"impl": "base"}, ValueError, "drops the adapter"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"rank": RANK, **kwargs}
    with pytest.raises(error, match=match):
        LoRALinear(IN, OUT, **args)


def test_bad_forward_input(gen: torch.Generator) -> None:
    layer = LoRALinear(IN, OUT, RANK)
    with pytest.raises(
        ValueError, match=r"x must have shape \(\.\.\., in\) with in = 32, got \(2, 31\)"
    ):
        layer(torch.randn(2, IN - 1, generator=gen))
    with pytest.raises(
        TypeError, match=r"x has dtype torch.float64; the weights have torch.float32"
    ):
        layer(torch.randn(2, IN, dtype=torch.float64, generator=gen))


def test_extra_repr_names_the_essentials() -> None:
    text = repr(LoRALinear(IN, OUT, RANK, alpha=8.0, impl="addmm"))
    for part in ("in=32", "out=24", "r=4", "alpha=8.0", "impl=addmm"):
        assert part in text


@pytest.mark.slow
def test_compiled_never_falls_back_to_eager() -> None:
    """Dynamo's default recompile limit is 8 graphs; past it, `compiled` would run eagerly
    without a word. Twelve shapes in one process, each called with and without grad (24
    graphs), must each run code dynamo compiled."""
    from torch._dynamo.utils import counters

    counters.clear()
    gen = torch.Generator().manual_seed(0)
    for i in range(12):
        in_f, out_f = 8 + i, 5 + 2 * i
        layer = LoRALinear(in_f, out_f, 2, impl="compiled")
        with torch.no_grad():
            layer.lora_B.normal_(generator=gen)
        x = torch.randn(3, in_f, generator=gen)
        y = layer(x)
        with torch.no_grad():
            y_infer = layer(x)
        y.sum().backward()
        ref = reference_forward(layer.weights(), x)
        assert rel_error(y, ref) <= 1e-5 and rel_error(y_infer, ref) <= 1e-5
    assert counters["stats"]["unique_graphs"] >= 24, dict(counters["stats"])
    assert torch._dynamo.config.fail_on_recompile_limit_hit


@pytest.mark.parametrize("use_dora", [False, True])
def test_a_change_to_the_adapter_while_merged_is_followed_and_undone(use_dora: bool) -> None:
    """lora_A changed in place while merged: the merged forward computes the new adapter,
    and unmerge() restores the original W (it takes out what merge() folded in)."""
    torch.manual_seed(0)
    layer = LoRALinear(32, 24, 4, use_dora=use_dora)
    with torch.no_grad():
        layer.lora_B.normal_()
    W0, x = layer.base.weight.detach().clone(), torch.randn(5, 32)
    layer.merge()
    with torch.no_grad():
        layer.lora_A.add_(0.5)
    merged_y = layer(x)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, W0, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged_y, layer(x), rtol=1e-5, atol=1e-5)


def test_training_a_merged_layer_says_why_it_cannot() -> None:
    layer = LoRALinear(16, 8, 2)
    layer.merge()
    y = layer(torch.randn(3, 16))
    with pytest.raises(RuntimeError, match=r"merged: W holds s·B A.*call unmerge"):
        y.sum().backward()
    with torch.no_grad():
        assert not layer(torch.randn(3, 16)).requires_grad  # inference pays nothing
