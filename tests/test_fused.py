"""Module-level LoRA (q, k and v together; a SwiGLU MLP): every FUSED_IMPLS entry against the
module's float64 oracle, forward and the gradients of x and of every A and B, on grouped-query
shapes with a rank per projection; what they keep for backward; and what they refuse."""

from __future__ import annotations

import pytest
import torch

from lora_kernels import LoRAWeights, rel_error, tolerance
from lora_kernels.fused import FUSED_IMPLS, MLPWeights, ModuleWeights, QKVWeights, module_reference


def lw(in_f: int, out_f: int, rank: int, seed: int, bias: bool = False) -> LoRAWeights:
    return LoRAWeights.random(in_f, out_f, rank, bias=bias, seed=seed)


# (hidden, kv width, ranks of q, k, v): multi-head, grouped-query, ranks that differ, r = 1
QKV_SHAPES = [(32, 32, (4, 4, 4)), (64, 16, (8, 2, 1)), (48, 24, (1, 16, 3))]
# (hidden, inter, ranks of gate, up, down)
MLP_SHAPES = [(32, 48, (4, 4, 4)), (40, 96, (8, 1, 16)), (16, 24, (1, 2, 3))]


def qkv(hidden: int, kv: int, ranks: tuple[int, ...], seed: int) -> QKVWeights:
    q, k, v = ranks
    return QKVWeights(lw(hidden, hidden, q, seed, bias=True), lw(hidden, kv, k, seed + 1),
                      lw(hidden, kv, v, seed + 2, bias=True))  # fmt: skip


def mlp(hidden: int, inter: int, ranks: tuple[int, ...], seed: int) -> MLPWeights:
    g, u, d = ranks
    return MLPWeights(lw(hidden, inter, g, seed), lw(hidden, inter, u, seed + 1, bias=True),
                      lw(inter, hidden, d, seed + 2))  # fmt: skip


def cases() -> list[tuple[str, ModuleWeights]]:
    out: list[tuple[str, ModuleWeights]] = []
    for i, (h, kv, r) in enumerate(QKV_SHAPES):
        out += [
            (name, qkv(h, kv, r, 10 * i)) for name, f in FUSED_IMPLS.items() if f.module == "qkv"
        ]
    for i, (h, inter, r) in enumerate(MLP_SHAPES):
        out += [
            (name, mlp(h, inter, r, 10 * i)) for name, f in FUSED_IMPLS.items() if f.module == "mlp"
        ]
    return out


@pytest.mark.parametrize(("name", "w"), cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_fused_impl_computes_the_module(name: str, w: ModuleWeights) -> None:
    impl = FUSED_IMPLS[name]
    reason = impl.unavailable_reason("cpu", torch.float32, "train")
    if reason:
        pytest.skip(reason)
    w.requires_grad_()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, w.in_features, generator=gen).requires_grad_()
    before = {n: t.detach().clone() for n, t in w.trainable().items()}
    outs = impl.build(w, "train")(x)
    grads = tuple(torch.randn(o.shape, generator=gen) for o in outs)
    want, want_grads = module_reference(w, x, grads)
    tol = tolerance(torch.float32, "cpu")
    assert [o.shape for o in outs] == [o.shape for o in want]
    assert max(rel_error(o, r) for o, r in zip(outs, want, strict=True)) <= tol
    torch.autograd.backward(outs, grads)
    got = {"x": x.grad, **{n: t.grad for n, t in w.trainable().items()}}
    assert got.keys() == want_grads.keys()
    errors = {
        n: rel_error(g, want_grads[n]) if g is not None else float("inf") for n, g in got.items()
    }
    assert max(errors.values()) <= tol, errors
    assert all(torch.equal(t, before[n]) for n, t in w.trainable().items())


def test_an_output_left_out_of_the_loss_gets_no_gradient_trouble() -> None:
    w = qkv(32, 16, (4, 2, 2), 1).requires_grad_()
    x = torch.randn(5, 32, requires_grad=True)
    q, _k, v = FUSED_IMPLS["qkv_fused"].build(w, "train")(x)
    (q.sum() + v.sum()).backward()  # k takes no part: its B gets zeros or none, never NaN
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.q.A.grad).all()
    assert w.k.B.grad is None or not w.k.B.grad.any()


def saved_numel(name: str, w: ModuleWeights, x: torch.Tensor) -> int:
    """Elements of the storages autograd keeps for one call's backward, each once."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        FUSED_IMPLS[name].build(w, "train")(x)
    return sum(seen.values())


def test_the_fused_mlp_keeps_less_than_the_per_layer_graph() -> None:
    w = mlp(64, 256, (8, 8, 8), 2).requires_grad_()
    x = torch.randn(32, 64, requires_grad=True)
    fused, layers = saved_numel("mlp_fused", w, x), saved_numel("mlp_layers", w, x)
    assert layers - fused >= 32 * 256  # silu(gate) is recomputed, not kept
    w3 = qkv(64, 16, (8, 8, 8), 3).requires_grad_()
    assert saved_numel("qkv_fused", w3, x) < saved_numel("qkv_layers", w3, x)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: QKVWeights(lw(32, 32, 4, 1), lw(16, 8, 2, 2), lw(32, 8, 2, 3)),
         r"q, k and v must read one x: their in_features differ"),
        (lambda: MLPWeights(lw(32, 48, 4, 1), lw(32, 40, 4, 2), lw(48, 32, 4, 3)),
         "gate and up must both map in -> inter"),
        (lambda: MLPWeights(lw(32, 48, 4, 1), lw(32, 48, 4, 2), lw(40, 32, 4, 3)),
         "down must read gate's output"),
        (lambda: MLPWeights(lw(32, 48, 4, 1), lw(32, 48, 4, 2), lw(48, 32, 4, 3), act="gelu"),
         r"act must be one of \('silu',\)"),
    ],
)  # fmt: skip
def test_modules_that_do_not_fit_say_why(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_an_impl_refuses_the_other_module() -> None:
    with pytest.raises(TypeError, match="is a qkv module: it builds on QKVWeights"):
        FUSED_IMPLS["qkv_fused"].build(mlp(32, 48, (4, 4, 4), 1))  # type: ignore[arg-type]
