"""LoRALinear: a frozen nn.Linear plus a trainable low-rank adapter, forward by registry impl."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_kernels.dora.eager import FactorCache, dropout_forward
from lora_kernels.dora.weights import DoRAWeights
from lora_kernels.plugins import get_impl
from lora_kernels.registry import Impl, Op
from lora_kernels.weights import (
    SUPPORTED_DTYPES,
    LoRAWeights,
    all_finite,
    check_dtype,
    check_rank,
    check_tensor,
    merge_stays_finite,
    scaling,
)

INITS = ("kaiming", "gaussian")


@dataclass
class _Built:
    """An op built for the tensors identified by `key`, and the input signatures
    (in, dtype, device) already checked against its weights."""

    key: tuple
    op: Op
    weights: LoRAWeights | DoRAWeights
    seen: set[tuple]
    factors: FactorCache | None = None  # DoRA with active dropout: the norm's pieces

    def check(self, x: Tensor) -> None:
        """Raise unless x fits the weights; each new (in, dtype, device) is checked once."""
        if not isinstance(x, Tensor) or x.dim() == 0:
            self.weights.check_input(x)
        signature = (x.shape[-1], x.dtype, x.device)
        if signature not in self.seen:
            self.weights.check_input(x)
            self.seen.add(signature)


def frozen_base(
    in_features: int,
    out_features: int,
    base: nn.Linear | None,
    bias: bool,
    device: str | torch.device | None,
    dtype: torch.dtype | None,
) -> nn.Linear:
    """`base` checked against in_features -> out_features, or a new nn.Linear; frozen.
    Refuses a dtype outside SUPPORTED_DTYPES and a device torch does not know, by name."""
    if dtype is not None:
        check_dtype(dtype)
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must name a torch device such as 'cpu' or 'cuda:0', got {device!r}"
            ) from None
    if base is None:
        base = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if base.weight.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"dtype: torch's default dtype is {base.weight.dtype}; pass dtype= one of "
                f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}"
            )
    elif not isinstance(base, nn.Linear):
        raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
    elif (base.in_features, base.out_features) != (in_features, out_features):
        raise ValueError(
            f"base is {base.in_features}->{base.out_features}, "
            f"but in_features->out_features is {in_features}->{out_features}"
        )
    else:
        check_tensor("base.weight", base.weight)
    return base.requires_grad_(False)


@dataclass
class _Folded:
    """The adapter merge() folded into W: copies of A and B, the scale and DoRA's factor."""

    A: Tensor
    B: Tensor
    scale: float
    factor: Tensor | None
    key: tuple  # LoRALinear._adapter_key() at the fold


def _fold(w: LoRAWeights | DoRAWeights) -> tuple[Tensor, Tensor | None]:
    """(merged W, DoRA's factor m / ‖W + s·B A‖ or None), without writing anything."""
    if not isinstance(w, DoRAWeights):
        return w.merged_weight(), None
    c = w.magnitude_scale()
    zero = int((c == 0).sum())
    if zero:
        raise ValueError(
            f"{zero} rows have m / ‖W + s·B A‖ = 0 (a zero magnitude or a zero row): "
            "merging would erase them from W, and unmerge() could not restore them"
        )
    return w.merged_weight(c), c


class MergedCannotTrain(torch.autograd.Function):
    """y unchanged, tied to A and B so that a backward says why it cannot reach them: the
    layer (`what`) is merged."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, A: Tensor, B: Tensor, what: str) -> Tensor:
        ctx.what = what
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        raise RuntimeError(
            f"this {ctx.what} is merged: W holds s·B A, so no gradient reaches lora_A or "
            "lora_B; call unmerge() before training it"
        )


class LoRALinear(nn.Module):
    """LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) on a frozen linear layer.

    y = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ, s = alpha / r (alpha / sqrt(r) with rsLoRA).
    W (out, in) and b are frozen; A (r, in) and B (out, r) train. x: (..., in) -> (..., out).
    `adapter=(A, B)` uses those tensors (no copy) in place of a fresh kaiming A and zero B.
    Active dropout (training, p > 0) feeds the adapter another input than the base, so it runs
    the two-step form whatever `impl` says; `impl` is used whenever dropout is inactive.

    use_dora=True makes it DoRA (see DoRAWeights): y = (m / ‖W + s·B A‖) ⊙ (x (W + s·B A)ᵀ) + b
    with a trainable magnitude `lora_magnitude` (out,), initialised to the row norms of
    W + s·B A (‖W‖ for a fresh adapter, so the layer starts as the base layer), or `magnitude`.
    detach_norm=True treats the norm as a constant in backward (the paper's choice, and
    PEFT's). `impl` must then be a DoRA impl; the default is dora_factored (two_step for LoRA).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int = 8,
        *,
        alpha: float = 8.0,
        use_rslora: bool = False,
        dropout: float = 0.0,
        init: str = "kaiming",
        impl: str | None = None,
        bias: bool = True,
        base: nn.Linear | None = None,
        adapter: tuple[Tensor, Tensor] | None = None,
        use_dora: bool = False,
        detach_norm: bool = True,
        magnitude: Tensor | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.rank = check_rank(rank, in_features, out_features)
        self.alpha = alpha
        self.scale = scaling(alpha, self.rank, use_rslora)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise TypeError(f"dropout must be a number, got {type(dropout).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.base = base = frozen_base(in_features, out_features, base, bias, device, dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        if adapter is None:
            A = torch.empty(self.rank, in_features, device=w.device, dtype=w.dtype)
            B = torch.zeros(out_features, self.rank, device=w.device, dtype=w.dtype)
            if init == "kaiming":
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            else:
                nn.init.normal_(A, std=1 / self.rank)
        else:
            A, B = adapter
            LoRAWeights(w, base.bias, A, B, self.scale)  # shapes, dtypes and devices
        self.lora_A = A if isinstance(A, nn.Parameter) else nn.Parameter(A)
        self.lora_B = B if isinstance(B, nn.Parameter) else nn.Parameter(B)
        if not isinstance(use_dora, bool):
            raise TypeError(f"use_dora must be a bool, got {use_dora!r}")
        if magnitude is not None and not use_dora:
            raise ValueError("magnitude is DoRA's; pass use_dora=True with it")
        self.use_dora = use_dora
        self.detach_norm = detach_norm
        if use_dora:
            lora = LoRAWeights(w, base.bias, self.lora_A, self.lora_B, self.scale)
            m = DoRAWeights.from_lora(lora, magnitude, detach_norm=detach_norm).m
            self.lora_magnitude = m if isinstance(m, nn.Parameter) else nn.Parameter(m.detach())
        self._dropout_p = float(dropout)
        self._ops: dict[str, _Built] = {}
        self.impl = impl or ("dora_factored" if use_dora else "two_step")
        self.merged = False
        # set_adapter() of an adapter that does not cover this layer: the base layer alone
        self.adapter_off = False
        self._folded: _Folded | None = None  # what merge() folded into W, to take it out
        # fuse_modules: the shared call of a fused module (q, k and v) this layer is part of
        self._fused: Callable[[LoRALinear, Tensor], Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int = 8, **kwargs: Any) -> LoRALinear:
        """Adapt an existing nn.Linear in place of a copy; its weight and bias are frozen."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(linear.in_features, linear.out_features, rank, base=linear, **kwargs)

    @property
    def impl(self) -> str:
        return self._impl.name

    @impl.setter
    def impl(self, name: str) -> None:
        impl = get_impl(name)
        if not impl.lora_equivalent:
            raise ValueError(f"impl {name!r} drops the adapter; pick a LoRA-equivalent impl")
        variant = "dora" if self.use_dora else "lora"
        if impl.variant != variant:
            from lora_kernels.registry import IMPLS

            fits = [n for n, i in IMPLS.items() if i.variant == variant and i.lora_equivalent]
            raise ValueError(
                f"impl {name!r} computes {impl.variant}, but this layer is {variant} "
                f"(use_dora={self.use_dora}); pick one of: {', '.join(fits)}"
            )
        self._impl: Impl = impl
        self._ops.clear()

    def weights(self) -> LoRAWeights | DoRAWeights:
        """The live tensors as LoRAWeights, or DoRAWeights with use_dora (no copies)."""
        lora = LoRAWeights(self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scale)
        if not self.use_dora:
            return lora
        return DoRAWeights.from_lora(lora, self._parameters["lora_magnitude"],
                                     detach_norm=self.detach_norm)  # fmt: skip

    def _built(self, mode: str) -> _Built:
        """The op of `mode`, rebuilt (and the weights validated) when a tensor is replaced or
        updated in place: an optimizer step bumps `_version`, so a merged or compiled op never
        serves stale weights. Costs a few dict and attribute reads when nothing changed."""
        base_layer: Any = self._modules["base"]
        base: dict[str, Any] = base_layer._parameters
        W, b, A, B = base["weight"], base["bias"], *self._lora
        m = self._parameters.get("lora_magnitude")
        key = (id(W), W._version, id(A), A._version, id(B), B._version, id(b),
               0 if b is None else b._version, id(m), 0 if m is None else m._version)  # fmt: skip
        built = self._ops.get(mode)
        if built is None or built.key != key:
            weights = self.weights()
            built = _Built(key, self._impl.build(weights, mode), weights, set())
            self._ops[mode] = built
        return built

    def forward(self, x: Tensor) -> Tensor:
        A, B = self._lora
        if self.adapter_off:
            self._built("infer").check(x)
            return self.base(x)
        if self.merged:
            if self._folded is None or self._folded.key != self._adapter_key():
                self._refold()  # the adapter changed since merge(): W follows it
            self._built("infer").check(x)
            y = self.base(x)
            if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
                return MergedCannotTrain.apply(y, A, B, "LoRALinear")
            return y
        if self.training and self._dropout_p > 0:
            built = self._built("train")
            built.check(x)
            if self.use_dora:
                built.factors = built.factors or FactorCache(built.weights)  # type: ignore[arg-type]
                return dropout_forward(x, self.dropout(x), built.weights, built.factors)  # type: ignore[arg-type]
            xa = F.linear(self.dropout(x), A)  # (..., r)
            return self.base(x) + self.scale * F.linear(xa, B)
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        compiling = torch.compiler.is_compiling()
        if self._fused is not None and not compiling:
            return self._fused(self, x)
        needs_grad = A.requires_grad or B.requires_grad or x.requires_grad
        mode = "train" if needs_grad and torch.is_grad_enabled() else "infer"
        if compiling:
            # Traced into the caller's graph: the impl's op built on the live tensors, with
            # no cache keyed on ids and versions, which dynamo would guard on and recompile
            # for (an adapter copied in place, a hot swap, would cost a recompile).
            return self._impl.build(self.weights(), mode)(x)
        built = self._built(mode)
        built.check(x)
        return built.op(x)

    @property
    def _lora(self) -> tuple[Tensor, Tensor]:
        """(A, B), read from the parameter dict: nn.Module.__getattr__ costs about 0.5 µs a
        name, which a decode step pays per layer."""
        params: dict[str, Any] = self._parameters
        return params["lora_A"], params["lora_B"]

    def _apply(self, fn, recurse=True):  # nn.Module's signature
        self._ops.clear()  # .to(), .half(), .cuda() swap tensor data behind the same objects
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """The merged W, without writing it: W + s·B A, or with DoRA
        (m / ‖W + s·B A‖) ⊙ (W + s·B A), computed in fp32. Raises ValueError when it is not
        finite, or (DoRA) when a row's factor is 0, which unmerge() could not undo."""
        return self._merged()[0]

    def _merged(self) -> tuple[Tensor, Tensor | None]:
        """(merged W, DoRA's factor m / ‖W + s·B A‖ or None); see merged_weight."""
        return _fold(self.weights())

    def _adapter_key(self) -> tuple:
        """What identifies the adapter now: its tensors, their versions and the scale."""
        A, B = self._lora
        m = self._parameters.get("lora_magnitude")
        return (id(A), A._version, id(B), B._version, id(m), 0 if m is None else m._version,
                self.scale)  # fmt: skip

    def _remember_fold(self, factor: Tensor | None) -> None:
        A, B = self._lora
        self._folded = _Folded(A.detach().clone(), B.detach().clone(), self.scale, factor,
                               self._adapter_key())  # fmt: skip

    def _unfolded_weight(self) -> Tensor:
        """W as it was before merge(): the merged W less the adapter that merge() folded in
        (not the adapter of now, which may have changed since). Exact up to fp32 rounding."""
        if self._folded is None:
            raise ValueError("the layer is marked merged but holds no record of what it merged")
        f = self._folded
        W = self.base.weight.float()
        if f.factor is not None:
            W = W.div(f.factor.to(W.device)[:, None])
        W = W.addmm_(f.B.float(), f.A.float(), alpha=-f.scale).to(self.base.weight.dtype)
        if not all_finite(W):
            raise ValueError("unmerging gives non-finite weights; W is left merged")
        return W

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into W (see merged_weight); W is untouched if that raises. The
        folded adapter is kept (r·(in + out) values), so unmerge() restores W even if lora_A
        or lora_B change meanwhile; a merged forward follows such a change."""
        if self.merged:
            raise ValueError("merge() called on a layer that is already merged; unmerge() first")
        W, (A, B) = self.base.weight, self._lora
        factor = None
        if (not self.use_dora and W.dtype == torch.float32
                and merge_stays_finite(W, A, B, self.scale)):  # fmt: skip
            W.addmm_(B, A, alpha=self.scale)  # merged_weight's values, written in place
        else:
            merged, factor = self._merged()
            W.copy_(merged)
        self._remember_fold(factor)
        self.merged = True

    @torch.no_grad()
    def adopt_merged(self) -> None:
        """Mark the layer merged because W already holds the current adapter (PEFT merged it);
        LoRA only, as DoRA's factor cannot be recovered from W."""
        if self.use_dora:
            raise ValueError("adopt_merged() is for LoRA layers; DoRA's factor is not in W")
        self._remember_fold(None)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take out of W the adapter that merge() folded in (DoRA: divide by the factor
        m / ‖W + s·B A‖ it used, then subtract s·B A); exact up to fp32 rounding."""
        if not self.merged:
            raise ValueError("unmerge() called on a layer that is not merged; merge() first")
        self.base.weight.copy_(self._unfolded_weight())
        self._folded = None
        self.merged = False

    @torch.no_grad()
    def _refold(self) -> None:
        """Replace the folded adapter with the current one, computed in full before W is
        written, so a refusal (non-finite, a zero DoRA factor) leaves W as it was."""
        original = dataclasses.replace(self.weights(), W=self._unfolded_weight())
        merged, factor = _fold(original)
        self.base.weight.copy_(merged)
        self._remember_fold(factor)

    def extra_repr(self) -> str:
        return (
            f"in={self.base.in_features}, out={self.base.out_features}, r={self.rank}, "
            f"alpha={self.alpha}, scale={self.scale:.4g}, impl={self.impl}, merged={self.merged}"
            + (f", dora=True, detach_norm={self.detach_norm}" if self.use_dora else "")
            + (", fused=qkv" if self._fused is not None else "")
            + (", adapter_off=True" if self.adapter_off else "")
        )
