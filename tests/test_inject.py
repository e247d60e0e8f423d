"""inject, from_peft, merge/unmerge over a model: shared tensors, the same function as PEFT
(forward and gradients), and clear refusals that change nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_models import needs_peft, peft_model, same, snapshot, tiny
from torch import nn

from lora_kernels import (
    IMPLS,
    LoRALinear,
    from_peft,
    inject,
    lora_layers,
    merge,
    rel_error,
    set_impl,
    unmerge,
)

TRAIN_IMPLS = [
    n for n, i in IMPLS.items()
    if i.origin == "ours" and i.lora_equivalent and i.variant == "lora" and "train" in i.modes
    and not i.compiles
    and not i.unavailable_reason("cpu", torch.float32, "train")
]  # fmt: skip


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.v_proj = nn.Linear(16, 8, bias=False)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.v_proj(torch.relu(self.q_proj(x)))))


def test_inject_shares_freezes_and_starts_as_a_no_op(gen: torch.Generator) -> None:
    model = Block()
    x = torch.randn(3, 16, generator=gen)
    before = model(x).detach()
    weight = model.q_proj.weight
    new = inject(model, ["q_proj", "v_proj"], 4, alpha=8.0, impl="addmm")
    assert list(new) == ["q_proj", "v_proj"]
    assert model.q_proj is new["q_proj"] and model.q_proj.base.weight is weight
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}" for m in ("q_proj", "v_proj") for ab in "AB"}
    assert torch.equal(model(x), before)  # B = 0
    assert [n for n, _ in lora_layers(model)] == ["q_proj", "v_proj"]


def test_merge_unmerge_and_set_impl_over_a_model(gen: torch.Generator) -> None:
    model = Block()
    inject(model, "all-linear", 2)
    for _, layer in lora_layers(model):
        nn.init.normal_(layer.lora_B, generator=gen)
    x = torch.randn(5, 16, generator=gen)
    y = model(x).detach()
    set_impl(model, "autograd")
    assert {layer.impl for _, layer in lora_layers(model)} == {"autograd"}
    merge(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    assert rel_error(model(x), y) < 1e-5
    with pytest.raises(ValueError, match="merged already"):
        merge(model)
    unmerge(model)
    assert rel_error(model(x), y) < 1e-5
    with pytest.raises(ValueError, match="not merged"):
        unmerge(model)
    with pytest.raises(ValueError, match="no LoRALinear layer"):
        merge(Block())


def test_merge_changes_nothing_when_one_layer_cannot_merge() -> None:
    model = Block()
    inject(model, "all-linear", 2)
    with torch.no_grad():
        model.out.lora_B.fill_(float("inf"))
    weights = [layer.base.weight.clone() for _, layer in lora_layers(model)]
    with pytest.raises(ValueError, match="non-finite"):
        merge(model)
    assert not any(layer.merged for _, layer in lora_layers(model))
    for w, (_, layer) in zip(weights, lora_layers(model), strict=True):
        assert torch.equal(w, layer.base.weight)


@pytest.mark.parametrize(
    ("targets", "rank", "error", "message"),
    [
        (["k_proj"], 2, ValueError, "linear layers seen: out, q_proj, v_proj"),
        (["q_proj", "v_proj"], 9, ValueError, r"rank must be an int in \[1, 8\] for v_proj"),
        ([], 2, ValueError, "at least one layer"),
    ],
)
def test_inject_bad_input_changes_nothing(
    targets: list[str], rank: int, error: type, message: str
) -> None:
    model = Block()
    with pytest.raises(error, match=message):
        inject(model, targets, rank)
    assert not list(lora_layers(model))
    assert all(p.requires_grad for p in model.parameters())


def test_inject_needs_a_linear_layer() -> None:
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        inject(nn.Sequential(nn.LayerNorm(4)), "all-linear", 2)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        inject("model", "all-linear", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown impl"):
        inject(Block(), "all-linear", 2, impl="nope")


def test_module_checks_input_once_per_signature(gen: torch.Generator) -> None:
    layer = LoRALinear(16, 8, 4)
    layer(torch.randn(2, 16, generator=gen))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(2, 16, generator=gen).double())
    with pytest.raises(ValueError, match="in = 16"):
        layer(torch.randn(2, 15, generator=gen))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        layer([1.0] * 16)  # type: ignore[arg-type]


# --- PEFT ------------------------------------------------------------------------------------


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n.replace(".default.weight", ""): p.grad
        for n, p in model.named_parameters()
        if p.requires_grad
    }


@needs_peft
@pytest.mark.parametrize("impl", TRAIN_IMPLS)
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_from_peft_matches_peft(kind: str, impl: str) -> None:
    peft = peft_model(kind, lora_dropout=0.1)
    ours = copy.deepcopy(peft)
    new = from_peft(ours, impl=impl)
    assert len(new) == (14 if kind == "llama" else 8)  # 7 or 4 linear layers in 2 blocks
    assert {layer.dropout.p for layer in new.values()} == {0.1}
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    want, got = peft(ids).logits, ours(ids).logits
    assert rel_error(got, want) <= 1e-5
    want.square().mean().backward()
    got.square().mean().backward()
    g_peft, g_ours = grads(peft), grads(ours)
    assert g_peft.keys() == g_ours.keys() and len(g_peft) == 2 * len(new)
    for name, g in g_peft.items():
        assert rel_error(g_ours[name], g) <= 1e-5, name


@needs_peft
@pytest.mark.parametrize("impl", [None, "dora_cached", "dora_merged", "dora_autograd"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_from_peft_takes_dora(kind: str, impl: str | None) -> None:
    peft = peft_model(kind, use_dora=True)
    for name, p in peft.named_parameters():  # a magnitude off the norms: DoRA's own term counts
        if "magnitude" in name:
            p.data.mul_(torch.linspace(0.5, 1.5, p.numel()))
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(5))
    want = peft(ids).logits.detach()
    magnitudes = {id(p) for n, p in peft.named_parameters() if "magnitude" in n}
    new = from_peft(peft, impl=impl)
    assert all(layer.use_dora for layer in new.values())
    assert {id(layer.lora_magnitude) for layer in new.values()} == magnitudes  # shared
    assert {layer.impl for layer in new.values()} == {impl or "dora_factored"}
    with torch.no_grad():  # the serving impls (dora_cached, dora_merged) run no training step
        assert rel_error(peft(ids).logits, want) <= 1e-5


@needs_peft
def test_from_peft_shares_tensors_and_keeps_a_merge() -> None:
    peft = peft_model("llama")
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(2))
    want = peft(ids).logits.detach()
    layer = peft.base_model.model.model.layers[0].self_attn.q_proj
    A, W = layer.lora_A["default"].weight, layer.get_base_layer().weight
    peft.merge_adapter()
    new = from_peft(peft, impl="addmm")
    q = new["base_model.model.model.layers.0.self_attn.q_proj"]
    assert q.lora_A is A and q.base.weight is W and q.merged
    assert rel_error(peft(ids).logits, want) <= 1e-5
    unmerge(peft)
    assert rel_error(peft(ids).logits, want) <= 1e-5


@needs_peft
def test_from_peft_refusals_change_nothing() -> None:
    from peft import LoraConfig

    with pytest.raises(TypeError, match="needs a PEFT model"):
        from_peft(tiny("llama")[0])
    dora = peft_model("llama", use_dora=True)
    with pytest.raises(ValueError, match=r"computes lora, but .* is dora"):
        from_peft(dora, impl="addmm")
    dora.merge_adapter()
    with pytest.raises(ValueError, match="DoRA adapter merged"):
        from_peft(dora)
    assert not list(lora_layers(dora))
    vera = peft_model("llama", use_dora=True)
    next(m for m in vera.modules() if hasattr(m, "lora_variant")).lora_variant["default"] = object()
    with pytest.raises(ValueError, match=r"LoRA variant \(object\); plain LoRA and DoRA convert"):
        from_peft(vera)
    assert not list(lora_layers(vera))
    two = peft_model("llama")
    two.add_adapter("other", LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"2 adapters \['default', 'other'\]; pass adapter="):
        from_peft(two)
    state = {k: v.clone() for k, v in two.state_dict().items()}
    with pytest.raises(ValueError, match=r"'other' is not the one PEFT runs: .* \['default'\]"):
        from_peft(two, adapter="other")  # the layers it leaves would still run 'default'
    assert not list(lora_layers(two))
    assert all(torch.equal(state[k], v) for k, v in two.state_dict().items())
    two.set_adapter("other")
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(3))
    want = two(ids).logits.detach()
    assert len(from_peft(two, adapter="other")) == 2  # q_proj of both blocks
    assert rel_error(two(ids).logits, want) <= 1e-5  # the function of 'other' alone
    half = peft_model("llama").to(torch.bfloat16)
    for module in half.modules():
        if hasattr(module, "lora_A"):
            module.lora_A.float()
    with pytest.raises(ValueError, match="LoRALinear keeps one dtype"):
        from_peft(half)
    embedded = peft_model("llama", target_modules=["q_proj", "embed_tokens"])
    with pytest.raises(ValueError, match=r"embed_tokens is a PEFT Embedding; only LoRA Linear"):
        from_peft(embedded)  # not left to PEFT beside ours: a hybrid under our impl's name
    assert not list(lora_layers(embedded))


class Mixed(Block):
    """Block with one fp64 layer, which LoRALinear cannot hold."""

    def __init__(self) -> None:
        super().__init__()
        self.v_proj = nn.Linear(16, 8, bias=False, dtype=torch.float64)


REFUSALS = [
    ("inject: dropout", Block, lambda m: inject(m, "all-linear", 2, dropout=1.5), "dropout"),
    ("inject: alpha", Block, lambda m: inject(m, "all-linear", 2, alpha=-1.0), "alpha"),
    ("inject: fp64 layer", Mixed, lambda m: inject(m, "all-linear", 2), "v_proj: base.weight"),
    ("inject: rank", Block, lambda m: inject(m, "all-linear", 9), "rank must be an int"),
    ("inject: impl", Block, lambda m: inject(m, "all-linear", 2, impl="nope"), "unknown impl"),
    ("inject twice", "injected", lambda m: inject(m, "all-linear", 2), "already holds 3 LoRA"),
    ("merge twice", "merged", merge, "merged already"),
    ("unmerge unmerged", "injected", unmerge, "not merged"),
    ("set_impl: unknown", "injected", lambda m: set_impl(m, "nope"), "unknown impl"),
    ("set_impl: DoRA impl", "injected", lambda m: set_impl(m, "dora_factored"), "computes dora"),
]


@pytest.mark.parametrize(
    ("what", "make", "refused", "message"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_a_refusal_changes_nothing(what: str, make: object, refused, message: str) -> None:
    torch.manual_seed(0)
    if isinstance(make, str):
        model = Block()
        inject(model, "all-linear", 2)
        if make == "merged":
            merge(model)
    else:
        model = make()  # type: ignore[operator]
    before = snapshot(model)
    with pytest.raises((TypeError, ValueError), match=message):
        refused(model)
    assert same(before, snapshot(model)), what
