"""MultiLoRALinear: the multi-adapter function by any impl, per-token and per-sequence ids,
adapter names, fresh adapters as no-ops, and loading several PEFT adapters of one layer,
checked against PEFT's own mixed-batch forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_kernels import (
    MULTI_IMPLS,
    MultiLoRALinear,
    MultiLoRAWeights,
    multi_reference_forward,
    random_index,
    rel_error,
)

RANKS = (4, 8, 2)


def _layer(impl: str = "segments", seed: int = 0) -> MultiLoRALinear:
    w = MultiLoRAWeights.random(24, 20, RANKS, seed=seed)
    base = nn.Linear(24, 20)
    with torch.no_grad():
        base.weight.copy_(w.W)
        base.bias.copy_(w.b)
    adapters = [(a.A, a.B, a.scale) for a in map(w.adapter, range(w.adapters))]
    return MultiLoRALinear.from_adapters(base, adapters, impl=impl)


@pytest.mark.parametrize("impl", [n for n, i in MULTI_IMPLS.items() if "cpu" in i.devices])
def test_forward_matches_oracle(impl: str) -> None:
    if MULTI_IMPLS[impl].requires():
        pytest.skip(MULTI_IMPLS[impl].requires())
    layer = _layer(impl)
    x = torch.randn(4, 9, 24, generator=torch.Generator().manual_seed(1))
    ids = random_index("uniform", 36, 3, base_share=0.2, seed=2).view(4, 9)
    assert rel_error(layer(x, ids), multi_reference_forward(layer.weights(), x, ids)) <= 1e-5
    per_sequence = torch.tensor([2, -1, 0, 1])
    expanded = per_sequence[:, None].expand(4, 9)
    want = multi_reference_forward(layer.weights(), x, expanded)
    assert rel_error(layer(x, per_sequence), want) <= 1e-5


def test_stacks_are_buffers_and_base_is_frozen() -> None:
    layer = _layer()
    assert {n for n, _ in layer.named_buffers()} == {"lora_A", "lora_B"}
    assert not any(p.requires_grad for p in layer.parameters())
    assert tuple(layer.lora_A.shape) == (3, 8, 24) and tuple(layer.lora_B.shape) == (3, 20, 8)
    assert "adapters=3, ranks=[4, 8, 2], impl=segments" in repr(layer)


def test_fresh_adapters_are_no_ops() -> None:
    layer = MultiLoRALinear(16, 12, [2, 4], alpha=8)
    x = torch.randn(5, 16)
    y = layer(x, torch.tensor([0, 1, 1, -1, 0]))
    assert torch.equal(y, layer.base(x))
    assert layer.scales == (4.0, 2.0) and layer.lora_A[0, :2].abs().sum() > 0
    assert not layer.lora_A[0, 2:].any(), "padding past rank 2 must be zero"


def test_names_and_ids() -> None:
    layer = MultiLoRALinear(8, 6, [2, 2], names=["fr", "de"])
    assert layer.index(["de", None, "fr"]).tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="unknown adapters"):
        layer.index(["es"])
    with pytest.raises(ValueError, match="names must be 2 distinct names"):
        MultiLoRALinear(8, 6, [2, 2], names=["a", "a"])
    with pytest.raises(ValueError, match="pass exactly one of ranks"):
        MultiLoRALinear(8, 6)


def test_bad_input_changes_nothing() -> None:
    layer = _layer()
    x, ids = torch.randn(3, 24), torch.tensor([0, 3, 1])
    before = layer.lora_A.clone()
    with pytest.raises(ValueError, match=r"index holds 3: adapter ids must be in \[-1, 2\]"):
        layer(x, ids)
    with pytest.raises(TypeError, match=r"x has dtype torch\.float64"):
        layer(x.double(), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"index has shape \(2,\)"):
        layer(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown multi-adapter impl 'sgmv'"):
        layer.impl = "sgmv"
    per_sequence = r"give one id per sequence, shape \(batch,\) = \(2,\), or one per token"
    with pytest.raises(ValueError, match=per_sequence):
        layer(torch.randn(2, 3, 24), torch.tensor([0, 1, 2]))
    assert torch.equal(layer.lora_A, before) and torch.equal(ids, torch.tensor([0, 3, 1]))


def test_impl_switch_and_dtype_change_rebuild() -> None:
    layer = _layer("loop")
    x, ids = torch.randn(6, 24), torch.tensor([0, 1, 2, -1, 2, 0])
    y = layer(x, ids)
    layer.impl = "chunked_bmm"
    assert rel_error(layer(x, ids), y) <= 1e-5
    layer.to(torch.bfloat16)
    y16 = layer(x.bfloat16(), ids)
    assert y16.dtype == torch.bfloat16 and rel_error(y16, y) <= 2e-2
    with torch.no_grad():
        layer.lora_B.mul_(2)  # an in-place update: the op must see it
    assert rel_error(layer(x.bfloat16(), ids), y16) > 5e-2


# --- PEFT ------------------------------------------------------------------------------------


def _peft_layer(ranks=RANKS, seed: int = 0) -> nn.Module:
    peft = pytest.importorskip("peft", reason="peft is not installed: the peers extra")
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 20))
    for i, r in enumerate(ranks):
        config = peft.LoraConfig(r=r, lora_alpha=2 * r + i, target_modules=["0"],
                                 init_lora_weights=False)  # fmt: skip
        if i == 0:
            model = peft.get_peft_model(model, config, adapter_name="a0")
        else:
            model.add_adapter(f"a{i}", config)
    return model.base_model.model[0].eval()


def test_from_peft_matches_peft_mixed_batch() -> None:
    layer = _peft_layer()
    multi = MultiLoRALinear.from_peft(layer)
    assert multi.names == ["a0", "a1", "a2"] and multi.ranks == RANKS
    assert multi.base.weight is layer.get_base_layer().weight  # shared, not copied
    x = torch.randn(6, 5, 24)
    names = ["a2", "__base__", "a0", "a1", "a0", "a2"]
    ids = multi.index([None if n == "__base__" else n for n in names])
    with torch.no_grad():
        want = layer(x, adapter_names=names)
    assert rel_error(multi(x, ids), want) <= 1e-5
    picked = MultiLoRALinear.from_peft(layer, ["a2", "a0"], impl="loop")
    ids = picked.index(["a0", "a2", None, "a0", "a0", "a2"])
    with torch.no_grad():
        want = layer(x, adapter_names=["a0", "a2", "__base__", "a0", "a0", "a2"])
    assert rel_error(picked(x, ids), want) <= 1e-5


def test_from_peft_refusals() -> None:
    layer = _peft_layer()
    with pytest.raises(ValueError, match=r"adapters \['zz'\] are not in the layer"):
        MultiLoRALinear.from_peft(layer, ["a0", "zz"])
    with pytest.raises(ValueError, match="non-empty list of names"):
        MultiLoRALinear.from_peft(layer, "a0")
    with pytest.raises(TypeError, match="needs a PEFT LoRA layer, got Linear"):
        MultiLoRALinear.from_peft(nn.Linear(4, 4))
    layer.merge(adapter_names=["a1"])
    with pytest.raises(ValueError, match=r"adapters merged into its weight: \['a1'\]"):
        MultiLoRALinear.from_peft(layer)


def test_peft_peer_is_peft_itself() -> None:
    """The peer's op is PEFT's mixed-batch forward: it gives what PEFT gives for the same
    names, per token and per sequence."""
    if MULTI_IMPLS["peft_mixed"].requires():
        pytest.skip(MULTI_IMPLS["peft_mixed"].requires())
    w = MultiLoRAWeights.random(24, 20, RANKS, seed=4)
    op = MULTI_IMPLS["peft_mixed"].build(w)
    x = torch.randn(4, 8, 24)
    per_seq = random_index("per_sequence", 32, 3, seqs=4, seed=1)
    per_tok = random_index("uniform", 32, 3, base_share=0.2, seed=1)
    for index in (per_seq, per_tok):
        y = op(x, index)
        assert rel_error(y, multi_reference_forward(w, x, index)) <= 1e-5
    base = F.linear(x, w.W, w.b)
    assert rel_error(op(x, torch.full((32,), -1)), base) == 0.0
