"""LoRALinear(use_dora=True): a no-op at init, the DoRA impls only, training that matches the
oracle step after step, merge and unmerge, dropout as PEFT defines it, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_kernels import IMPLS, LoRALinear, reference_forward, rel_error

IN, OUT, RANK = 32, 24, 4
TRAINERS = [n for n, i in IMPLS.items() if i.variant == "dora" and "train" in i.modes
            and i.origin == "ours"]  # fmt: skip


def trained(gen: torch.Generator, **kwargs: object) -> LoRALinear:
    """A DoRA layer with B and m moved off their start, as after some training."""
    layer = LoRALinear(IN, OUT, RANK, use_dora=True, **kwargs)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(OUT, RANK, generator=gen) * 0.5)
        layer.lora_magnitude.mul_(1 + 0.3 * torch.rand(OUT, generator=gen))
    return layer


def test_a_fresh_dora_layer_is_the_base_layer(gen: torch.Generator) -> None:
    layer = LoRALinear(IN, OUT, RANK, use_dora=True)
    x = torch.randn(5, IN, generator=gen)
    torch.testing.assert_close(layer(x), layer.base(x))
    torch.testing.assert_close(layer.lora_magnitude.detach(), layer.base.weight.norm(dim=1))
    names = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert names == {"lora_A", "lora_B", "lora_magnitude"}
    assert layer.impl == "dora_factored" and "dora=True" in repr(layer)


def test_impl_must_match_the_variant() -> None:
    with pytest.raises(ValueError, match=r"computes lora, but this layer is dora.*dora_factored"):
        LoRALinear(IN, OUT, RANK, use_dora=True, impl="addmm")
    with pytest.raises(ValueError, match=r"computes dora, but this layer is lora.*addmm"):
        LoRALinear(IN, OUT, RANK, impl="dora_factored")
    with pytest.raises(ValueError, match="magnitude is DoRA's; pass use_dora=True"):
        LoRALinear(IN, OUT, RANK, magnitude=torch.ones(OUT))
    with pytest.raises(ValueError, match=r"m must have shape \(out,\) = \(24,\)"):
        LoRALinear(IN, OUT, RANK, use_dora=True, magnitude=torch.ones(IN))
    with pytest.raises(TypeError, match="use_dora must be a bool"):
        LoRALinear(IN, OUT, RANK, use_dora="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("detach_norm", [True, False])
@pytest.mark.parametrize("impl", TRAINERS)
def test_training_follows_the_oracle(impl: str, detach_norm: bool, gen: torch.Generator) -> None:
    """Steps of SGD through each DoRA impl: after each, the forward still matches the oracle
    on the updated weights (no stale cached norm), and every impl takes the same path as
    dora_dense, the plain-autograd reference."""

    def train(name: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        layer = trained(torch.Generator().manual_seed(1), impl=name, detach_norm=detach_norm)
        opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
        x = torch.randn(6, IN, generator=torch.Generator().manual_seed(2))
        for _ in range(3):
            opt.zero_grad()
            y = layer(x)
            assert rel_error(y, reference_forward(layer.weights(), x)) < 1e-5
            y.square().mean().backward()
            opt.step()
        return [layer.lora_A.detach(), layer.lora_B.detach(), layer.lora_magnitude.detach()]

    for got, want in zip(train(impl), train("dora_dense"), strict=True):
        assert rel_error(got, want) < 1e-5


@pytest.mark.parametrize("impl", ["dora_factored", "dora_cached", "dora_merged"])
def test_merge_and_unmerge(impl: str, gen: torch.Generator) -> None:
    layer = trained(gen, impl=impl).eval()
    x = torch.randn(4, IN, generator=gen)
    W0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        y = layer(x)
        layer.merge()
        assert rel_error(layer(x), y) < 1e-5
        assert rel_error(layer.base(x), y) < 1e-5  # the whole function is in W now
        layer.unmerge()
        assert rel_error(layer(x), y) < 1e-5
    assert rel_error(layer.base.weight, W0) < 1e-6


def test_merge_refuses_a_zero_factor(gen: torch.Generator) -> None:
    layer = trained(gen)
    with torch.no_grad():
        layer.lora_magnitude[2] = 0
    W0 = layer.base.weight.detach().clone()
    with pytest.raises(ValueError, match="1 rows have m / ‖W \\+ s·B A‖ = 0"):
        layer.merge()
    assert torch.equal(layer.base.weight, W0) and not layer.merged


def test_dropout_is_peft_s(gen: torch.Generator) -> None:
    """With active dropout the base sees x and the rest sees dropout(x), as in PEFT:
    x Wᵀ + b + (c - 1) ⊙ (xd Wᵀ) + c ⊙ s·(xd Aᵀ) Bᵀ."""
    layer = trained(gen, dropout=0.3).train()
    x = torch.randn(8, IN, generator=gen)
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    xd = F.dropout(x, 0.3, training=True).double()
    W, b, A, B = (t.detach().double() for t in (layer.base.weight, layer.base.bias,
                                                 layer.lora_A, layer.lora_B))  # fmt: skip
    V = W + layer.scale * B @ A
    c = layer.lora_magnitude.detach().double() / V.norm(dim=1)
    want = x.double() @ W.T + b + (c - 1) * (xd @ W.T) + c * layer.scale * (xd @ A.T @ B.T)
    assert rel_error(y, want) < 1e-5
    y.sum().backward()
    assert layer.lora_magnitude.grad is not None


def test_dtype_change_rebuilds(gen: torch.Generator) -> None:
    """.to() swaps tensor data behind the same objects: the cached norm must follow."""
    layer = trained(gen, impl="dora_cached").eval().requires_grad_(False)
    x = torch.randn(3, IN, generator=gen)
    layer(x)
    layer.to(torch.bfloat16)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert rel_error(y, reference_forward(layer.weights(), x.bfloat16())) < 2e-2


def test_inject_dora_and_merge_the_model(gen: torch.Generator) -> None:
    """inject(use_dora=True) gives DoRA layers that start as the base model; merge(model)
    refuses, before writing any weight, when one layer cannot be merged."""
    from torch import nn

    from lora_kernels import inject, merge, unmerge

    model = nn.Sequential(nn.Linear(IN, OUT), nn.ReLU(), nn.Linear(OUT, IN))
    x = torch.randn(4, IN, generator=gen)
    with torch.no_grad():
        y0 = model(x)
    with pytest.raises(ValueError, match="computes lora; use_dora=True needs a DoRA impl"):
        inject(model, "all-linear", RANK, use_dora=True, impl="addmm")
    layers = inject(model, "all-linear", RANK, use_dora=True)
    assert all(layer.use_dora and layer.impl == "dora_factored" for layer in layers.values())
    with torch.no_grad():
        torch.testing.assert_close(model(x), y0)
        for layer in layers.values():
            layer.lora_B.normal_(generator=gen)
        y = model(x)
        first, second = layers.values()
        second.lora_magnitude[0] = 0
        W0 = first.base.weight.clone()
        with pytest.raises(ValueError, match="1 rows have m"):
            merge(model)
        assert torch.equal(first.base.weight, W0) and not first.merged
        second.lora_magnitude[0] = 1
        y = model(x)
        merge(model)
        assert rel_error(model(x), y) < 1e-5
        unmerge(model)
        assert rel_error(model(x), y) < 1e-5
