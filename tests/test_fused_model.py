"""Fused modules inside a model (inject(fuse=True), fuse_modules): the same function and LoRA
gradients as the per-layer model, names and state_dict keys kept, merge and unfuse, and
refusals that say which module and why and change nothing."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from peft_models import needs_peft, peft_model, same, snapshot
from torch import Tensor, nn

from lora_kernels import (
    FuseError,
    LoRALinear,
    from_peft,
    fuse_modules,
    fused_modules,
    inject,
    lora_layers,
    merge,
    rel_error,
    unfuse_modules,
    unmerge,
)
from lora_kernels.fused.model import FusedMLP

TOL = 1e-5


class Attention(nn.Module):
    """q, k and v of one x, k and v narrower (grouped-query), then o."""

    def __init__(self, d: int = 24, kv: int = 8) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=True)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.repeat = d // kv

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        k, v = k.repeat_interleave(self.repeat, -1), v.repeat_interleave(self.repeat, -1)
        return self.o_proj(torch.tanh(q * k) + v)


class SwiGLU(nn.Module):
    def __init__(self, d: int = 24, inter: int = 40, act: nn.Module | None = None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=False)
        self.up_proj = nn.Linear(d, inter, bias=False)
        self.down_proj = nn.Linear(inter, d, bias=True)
        self.act_fn = act or nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UpFirst(SwiGLU):
    """gate, up and down of another form: silu on up, not gate."""

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.gate_proj(x) * self.act_fn(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.attn = Attention()
        self.mlp = mlp or SwiGLU()
        self.norm = nn.LayerNorm(24)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.mlp(self.norm(x))


class Net(nn.Module):
    def __init__(self, mlp: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(mlp), Block())
        self.head = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(x))


def pair(targets: str | list[str] = "all-linear", rank: int = 4) -> tuple[nn.Module, nn.Module]:
    """A per-layer LoRA model and a fused one on the same tensors, B non-zero."""
    torch.manual_seed(0)
    plain = Net()
    inject(plain, targets, rank, alpha=6.0, impl="autograd")
    for _, layer in lora_layers(plain):
        nn.init.normal_(layer.lora_B, std=0.1)
    fused = copy.deepcopy(plain)
    fuse_modules(fused)
    return plain, fused


def grads_of(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    model(x).square().sum().backward()
    found = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"x": x.grad, **found}  # type: ignore[dict-item]


def assert_same_function(a: nn.Module, b: nn.Module, x: Tensor) -> None:
    assert rel_error(b(x), a(x)) <= TOL
    ga, gb = grads_of(a, x), grads_of(b, x)
    assert ga.keys() == gb.keys()
    assert len(ga) == 1 + 2 * 15  # x, and A and B of 7 layers in each of 2 blocks and the head
    for name, g in ga.items():
        assert g.abs().sum() > 0, name
        assert rel_error(gb[name], g) <= TOL, name


def test_fused_model_computes_the_per_layer_function_and_gradients() -> None:
    plain, fused = pair()
    assert fused_modules(fused) == {
        "blocks.0.attn": "qkv", "blocks.0.mlp": "mlp", "blocks.1.attn": "qkv",
        "blocks.1.mlp": "mlp",
    }  # fmt: skip
    assert isinstance(fused.blocks[0].mlp, FusedMLP)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(3, 7, 24)
    assert_same_function(plain, fused, x)


def test_fused_model_follows_an_optimizer_step() -> None:
    plain, fused = pair()
    x = torch.randn(2, 5, 24)
    for model in (plain, fused):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1)
        model(x).square().sum().backward()
        opt.step()
    assert_same_function(plain, fused, x)


def test_qkv_group_serves_each_x_its_own_outputs() -> None:
    _, fused = pair()
    attn = fused.blocks[0].attn
    x, y = torch.randn(4, 24), torch.randn(4, 24)
    unfuse_modules(ref := copy.deepcopy(fused))
    ref_attn = ref.blocks[0].attn
    with torch.no_grad():
        q = attn.q_proj(x)  # computes q, k and v of x
        k_y = attn.k_proj(y)  # another x: computed afresh, not x's k
        v_x = attn.v_proj(x)
        assert rel_error(k_y, ref_attn.k_proj(y)) <= TOL
        assert rel_error(q, ref_attn.q_proj(x)) <= TOL
        assert rel_error(v_x, ref_attn.v_proj(x)) <= TOL
        x.add_(1.0)  # x changed in place: its kept outputs are stale
        assert rel_error(attn.v_proj(x), ref_attn.v_proj(x)) <= TOL
    q = attn.q_proj(x)  # grad mode differs from the kept outputs': computed afresh
    assert q.grad_fn is not None


def test_merge_runs_per_layer_and_unfuse_restores() -> None:
    plain, fused = pair()
    x = torch.randn(2, 6, 24)
    want = plain(x).detach()
    merge(fused)
    assert rel_error(fused(x), want) <= TOL
    unmerge(fused)
    assert unfuse_modules(fused) == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn",
                                     "blocks.1.mlp"]  # fmt: skip
    assert fused_modules(fused) == {}
    assert type(fused.blocks[0].mlp) is SwiGLU
    assert "fused" not in repr(fused)
    assert_same_function(plain, fused, x)


def test_inject_fuse_gives_the_same_layers_fused() -> None:
    torch.manual_seed(0)
    model = Net()
    layers = inject(model, "all-linear", 4, fuse=True)
    assert len(layers) == 15
    assert set(fused_modules(model).values()) == {"qkv", "mlp"}
    assert all(isinstance(m, LoRALinear) for m in layers.values())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for name in layers for n in (f"{name}.lora_A", f"{name}.lora_B")
    ]


def refused(model: nn.Module, call: object, match: str) -> None:
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
    assert same(before, snapshot(model))


def test_inject_refuses_modules_that_cannot_fuse_and_changes_nothing() -> None:
    model = Net()
    refused(model, lambda: inject(model, ["q_proj", "v_proj", "gate_proj"], 4, fuse=True),
            r"blocks\.0\.attn: k_proj has no LoRA layer.*blocks\.0\.mlp: up_proj, down_proj "
            r"have no LoRA layer.*fuse_fallback=True")  # fmt: skip
    refused(model, lambda: inject(model, "all-linear", 4, fuse=True, use_dora=True),
            "without dropout: drop use_dora")  # fmt: skip
    refused(model, lambda: inject(model, "all-linear", 4, fuse=True, dropout=0.1),
            "without dropout")  # fmt: skip
    refused(model, lambda: inject(model, "all-linear", 4, fuse_fallback=True),
            "fuse_fallback=True is for fuse=True")  # fmt: skip


def test_fallback_leaves_modules_per_layer_and_names_each() -> None:
    torch.manual_seed(0)
    model = Net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inject(model, ["q_proj", "k_proj", "v_proj", "gate_proj"], 4, fuse=True,
               fuse_fallback=True)  # fmt: skip
    messages = [str(w.message) for w in caught]
    assert fused_modules(model) == {"blocks.0.attn": "qkv", "blocks.1.attn": "qkv"}
    assert len(messages) == 2
    assert all(f"blocks.{i}.mlp: up_proj" in " ".join(messages) for i in (0, 1))


@pytest.mark.parametrize(
    ("mlp", "match"),
    [
        (SwiGLU(act=nn.GELU()), r"blocks\.0\.mlp: act_fn is GELU, not silu"),
        (UpFirst(), r"blocks\.0\.mlp: its forward does not compute down_proj\(silu"),
        (SwiGLU(inter=40), None),
    ],
)
def test_fuse_modules_checks_the_mlp_computes_swiglu(mlp: nn.Module, match: str | None) -> None:
    torch.manual_seed(0)
    model = Net(mlp)
    inject(model, "all-linear", 4)
    for _, layer in lora_layers(model):
        nn.init.normal_(layer.lora_B, std=0.1)
    if match is None:
        assert fuse_modules(model).fused["blocks.0.mlp"] == "mlp"
        return
    refused(model, lambda: fuse_modules(model), match)
    report = fuse_modules(model, fallback=True)
    assert list(report.unfused) == ["blocks.0.mlp"]
    assert "blocks.1.mlp" in report.fused


def test_fuse_modules_refusals() -> None:
    plain, fused = pair()
    refused(fused, lambda: fuse_modules(fused), r"blocks\.0\.attn: q_proj is fused already")
    merge(plain)
    refused(plain, lambda: fuse_modules(plain), "q_proj is merged; unmerge it before fusing")
    unmerge(plain)
    with pytest.raises(FuseError, match="no module with LoRA on q_proj"):
        fuse_modules(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        fuse_modules("model")  # type: ignore[arg-type]
    wide = Net()
    wide.blocks[0].attn.v_proj = nn.Linear(12, 8)
    inject(wide, "all-linear", 4)
    refused(wide, lambda: fuse_modules(wide), r"blocks\.0\.attn: q, k and v must read one x")


def test_dora_layers_do_not_fuse() -> None:
    model = Net()
    inject(model, "all-linear", 4, use_dora=True)
    refused(model, lambda: fuse_modules(model), "q_proj is a DoRA layer")


@needs_peft
def test_fused_llama_computes_peft_function_and_generates_alike() -> None:
    peft = peft_model("llama")
    ours = copy.deepcopy(peft)
    from_peft(ours, impl="autograd")
    report = fuse_modules(ours)
    assert sorted(set(report.fused.values())) == ["mlp", "qkv"]
    assert len(report.fused) == 4 and not report.unfused
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    logits = {}
    grads = {}
    for name, model in (("peft", peft), ("ours", ours)):
        model.zero_grad(set_to_none=True)
        logits[name] = model(input_ids=ids).logits
        logits[name].square().mean().backward()
        grads[name] = [p.grad for p in model.parameters() if p.grad is not None]
    assert rel_error(logits["ours"], logits["peft"]) <= TOL
    assert len(grads["ours"]) == len(grads["peft"]) == 2 * 14
    for mine, theirs in zip(grads["ours"], grads["peft"], strict=True):
        assert rel_error(mine, theirs) <= 1e-4
    with torch.no_grad():
        tokens = [m.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
                  for m in (peft, ours)]  # fmt: skip
    assert torch.equal(tokens[0], tokens[1])
