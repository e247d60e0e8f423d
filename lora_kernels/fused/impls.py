"""Module-level implementations: q, k and v with one stacked shrink, and a SwiGLU MLP in one
autograd function; our per-layer `autograd` and PEFT's layers on the same modules as the
reference and the peer. x (..., in) -> outputs (..., out_i)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.fused.registry import FUSED_IMPLS, FusedImpl, ModuleOp
from lora_kernels.fused.weights import MLPWeights, ModuleWeights, QKVWeights
from lora_kernels.impls.peers import _peft_layer, peer_missing
from lora_kernels.registry import IMPLS, Op, register
from lora_kernels.weights import LoRAWeights


def _rows(w: ModuleWeights, fn: Callable[[Tensor], tuple[Tensor, ...]]) -> ModuleOp:
    """An op that runs fn on x flattened to (T, in) and gives each output back as (..., out)."""

    def op(x: Tensor) -> tuple[Tensor, ...]:
        outs = fn(x.reshape(-1, w.in_features))
        return tuple(o.view(*x.shape[:-1], o.shape[-1]) for o in outs)

    return op


def _base(p: LoRAWeights, x: Tensor) -> Tensor:
    """x Wᵀ + b, (T, out)."""
    return x @ p.W.t() if p.b is None else torch.addmm(p.b, x, p.W.t())


def _grad_of_b(xa: Tensor, g: Tensor, s: float) -> Tensor:
    """s · gᵀ xa as (xaᵀ g)ᵀ: BLAS runs the skinny product fastest this way round."""
    return (xa.t() @ g).mul_(s).t()


class QKVFunction(torch.autograd.Function):
    """(q, k, v) of x (T, in): one shrink x [A_q; A_k; A_v]ᵀ (x read once), three base GEMMs,
    each expand added in place. Saves x, the stacked shrink (T, r_q + r_k + r_v), A and the Bs.
    Backward: the three s·g B side by side, one dA GEMM over x, dx accumulated in place."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, Aq: Tensor, Bq: Tensor, Ak: Tensor, Bk: Tensor,
                Av: Tensor, Bv: Tensor, w: QKVWeights) -> tuple[Tensor, ...]:  # fmt: skip
        A = torch.cat([Aq, Ak, Av])  # (R, in)
        xa = x @ A.t()  # (T, R)
        outs, r0 = [], 0
        for p, B in zip(w.projections().values(), (Bq, Bk, Bv), strict=True):
            r = B.shape[1]
            outs.append(_base(p, x).addmm_(xa[:, r0 : r0 + r], B.t(), alpha=p.scale))
            r0 += r
        ctx.save_for_backward(x, xa, A, Bq, Bk, Bv)
        ctx.w = w
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        x, xa, A, *Bs = ctx.saved_tensors
        projs = list(ctx.w.projections().values())
        need = ctx.needs_input_grad
        G = x.new_zeros(x.shape[0], A.shape[0])  # s·g B of each projection, side by side
        dx, r0 = None, 0
        dBs: list[Tensor | None] = []
        for i, (p, B, g) in enumerate(zip(projs, Bs, grads, strict=True)):
            r = B.shape[1]
            if g is None:  # that output took no part in the loss
                dBs.append(None)
                r0 += r
                continue
            g = g.contiguous()
            G[:, r0 : r0 + r] = (g @ B).mul_(p.scale)
            dBs.append(_grad_of_b(xa[:, r0 : r0 + r], g, p.scale) if need[2 + 2 * i] else None)
            if need[0]:
                dx = g @ p.W if dx is None else dx.addmm_(g, p.W)
            r0 += r
        dA = G.t() @ x if any(need[1:7:2]) else None  # (R, in)
        if dx is not None:
            dx.addmm_(G, A)
        dAs: list[Tensor | None] = [None, None, None]
        if dA is not None:
            dAs = list(dA.split([B.shape[1] for B in Bs]))
        return (dx, dAs[0], dBs[0], dAs[1], dBs[1], dAs[2], dBs[2], None)


def build_qkv_fused(w: QKVWeights) -> ModuleOp:
    def fn(x2: Tensor) -> tuple[Tensor, ...]:
        q, k, v = w.q, w.k, w.v
        return QKVFunction.apply(x2, q.A, q.B, k.A, k.B, v.A, v.B, w)

    return _rows(w, fn)


class MLPFunction(torch.autograd.Function):
    """y = down(silu(gate(x)) * up(x)) of x (T, in), an adapter on each projection. One shrink
    x [A_gate; A_up]ᵀ; saves x, that shrink, gate's and up's outputs g and u, h = silu(g) * u
    and h A_downᵀ, and recomputes silu(g) in backward rather than keeping a fourth T x inter
    tensor (autograd's per-layer graph keeps g, silu(g), u and h)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, Ag: Tensor, Bg: Tensor, Au: Tensor, Bu: Tensor,
                Ad: Tensor, Bd: Tensor, w: MLPWeights) -> Tensor:  # fmt: skip
        A = torch.cat([Ag, Au])  # (r_g + r_u, in)
        xa = x @ A.t()
        rg = Ag.shape[0]
        g = _base(w.gate, x).addmm_(xa[:, :rg], Bg.t(), alpha=w.gate.scale)  # (T, inter)
        u = _base(w.up, x).addmm_(xa[:, rg:], Bu.t(), alpha=w.up.scale)
        h = F.silu(g).mul_(u)
        ha = h @ Ad.t()  # (T, r_d)
        y = _base(w.down, h).addmm_(ha, Bd.t(), alpha=w.down.scale)
        ctx.save_for_backward(x, xa, g, u, h, ha, A, Bg, Bu, Ad, Bd)
        ctx.w = w
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, xa, g, u, h, ha, A, Bg, Bu, Ad, Bd = ctx.saved_tensors
        w, need = ctx.w, ctx.needs_input_grad
        dy = dy.contiguous()
        sd, sg, su = w.down.scale, w.gate.scale, w.up.scale
        gd = (dy @ Bd).mul_(sd)  # (T, r_d)
        dBd = _grad_of_b(ha, dy, sd) if need[6] else None
        dh = (dy @ w.down.W).addmm_(gd, Ad)  # (T, inter)
        dAd = gd.t() @ h if need[5] else None
        du = F.silu(g).mul_(dh)
        # dg = silu'(g) · dh · u, written over dh: no third T x inter buffer
        dg = torch.ops.aten.silu_backward.grad_input(dh.mul_(u), g, grad_input=dh)
        rg = Bg.shape[1]
        G = torch.cat([(dg @ Bg).mul_(sg), (du @ Bu).mul_(su)], dim=1)  # (T, r_g + r_u)
        dBg = _grad_of_b(xa[:, :rg], dg, sg) if need[2] else None
        dBu = _grad_of_b(xa[:, rg:], du, su) if need[4] else None
        dAg = dAu = None
        if need[1] or need[3]:
            dAg, dAu = (G.t() @ x).split([rg, Bu.shape[1]])
        dx = None
        if need[0]:
            dx = (dg @ w.gate.W).addmm_(du, w.up.W).addmm_(G, A)
        return (dx, dAg, dBg, dAu, dBu, dAd, dBd, None)


def build_mlp_fused(w: MLPWeights) -> ModuleOp:
    def fn(x2: Tensor) -> tuple[Tensor, ...]:
        g, u, d = w.gate, w.up, w.down
        return (MLPFunction.apply(x2, g.A, g.B, u.A, u.B, d.A, d.B, w),)

    return _rows(w, fn)


# --- per layer: ours (the reference of the fused ones) and PEFT's ------------------------------


def _layered(w: ModuleWeights, layer: Callable[[LoRAWeights], Op]) -> ModuleOp:
    """The module out of one op per projection, built by `layer`."""
    ops = {n: layer(p) for n, p in w.projections().items()}
    if isinstance(w, QKVWeights):
        return lambda x: tuple(op(x) for op in ops.values())
    return lambda x: (ops["down"](F.silu(ops["gate"](x)) * ops["up"](x)),)


def build_qkv_layers(w: QKVWeights) -> ModuleOp:
    return _layered(w, lambda p: IMPLS["autograd"].build(p, "train"))


def build_mlp_layers(w: MLPWeights) -> ModuleOp:
    return _layered(w, lambda p: IMPLS["autograd"].build(p, "train"))


def build_peft_module(w: ModuleWeights) -> ModuleOp:
    return _layered(w, _peft_layer)


def _register(name: str, what: str, builder: Callable[[Any], ModuleOp], module: str,
              **kwargs: Any) -> None:  # fmt: skip
    """Add a module-level impl to FUSED_IMPLS (its op gives a tuple, not one tensor)."""
    register(FusedImpl(name, what, cast(Any, builder), module=module, **kwargs), FUSED_IMPLS)


PEER = {"requires": peer_missing("peft"), "origin": "peer", "source": "peft"}
_register("qkv_fused", "q, k and v: one stacked shrink of x, three expands in place, backward "
          "by hand", build_qkv_fused, "qkv")  # fmt: skip
_register("qkv_layers", "our per-layer `autograd` impl on each of q, k and v", build_qkv_layers,
          "qkv")  # fmt: skip
_register("peft_qkv", "HF PEFT lora.Linear on each of q, k and v", build_peft_module, "qkv",
          **PEER)  # fmt: skip
_register("mlp_fused", "gate, up and down with SwiGLU in one autograd function: one shrink of "
          "x, silu recomputed in backward, dx in place", build_mlp_fused, "mlp")  # fmt: skip
_register("mlp_layers", "our per-layer `autograd` impl on each of gate, up and down",
          build_mlp_layers, "mlp")  # fmt: skip
_register("peft_mlp", "HF PEFT lora.Linear on each of gate, up and down", build_peft_module,
          "mlp", **PEER)  # fmt: skip
