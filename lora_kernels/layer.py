"""LoRALinear: a frozen nn.Linear plus a trainable low-rank adapter, forward by registry impl."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_kernels.registry import Impl, Op, get_impl
from lora_kernels.weights import LoRAWeights, check_rank, scaling

INITS = ("kaiming", "gaussian")


class LoRALinear(nn.Module):
    """LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) on a frozen linear layer.

    y = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ, s = alpha / r (alpha / sqrt(r) with rsLoRA).
    W (out, in) and b are frozen; A (r, in) and B (out, r) train. x: (..., in) -> (..., out).
    Active dropout (training, p > 0) feeds the adapter another input than the base, so it runs
    the two-step form whatever `impl` says; `impl` is used whenever dropout is inactive.
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
        impl: str = "two_step",
        bias: bool = True,
        base: nn.Linear | None = None,
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
        if base is None:
            base = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        elif not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        elif (base.in_features, base.out_features) != (in_features, out_features):
            raise ValueError(
                f"base is {base.in_features}->{base.out_features}, "
                f"but in_features->out_features is {in_features}->{out_features}"
            )
        self.base = base.requires_grad_(False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(self.rank, in_features, device=w.device, dtype=w.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(out_features, self.rank, device=w.device, dtype=w.dtype)
        )
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            nn.init.normal_(self.lora_A, std=1 / self.rank)
        self.impl = impl
        self.merged = False
        self._cache: tuple[tuple, Op] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int = 8, **kwargs: object) -> LoRALinear:
        """Adapt an existing nn.Linear in place of a copy; its weight and bias are frozen."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        return cls(linear.in_features, linear.out_features, rank, base=linear, **kwargs)

    @property
    def impl(self) -> str:
        return self._impl.name

    @impl.setter
    def impl(self, name: str) -> None:
        self._impl: Impl = get_impl(name)
        if not self._impl.lora_equivalent:
            raise ValueError(f"impl {name!r} drops the adapter; pick a LoRA-equivalent impl")
        self._cache = None

    def weights(self) -> LoRAWeights:
        """The live tensors as a LoRAWeights (no copies)."""
        return LoRAWeights(self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scale)

    def _op(self, mode: str) -> Op:
        # Rebuild when a tensor is replaced or updated in place (an optimizer step bumps
        # _version), so a merged or compiled op never serves stale weights.
        tensors = (self.base.weight, self.base.bias, self.lora_A, self.lora_B)
        key = (self.impl, mode, *((id(t), t._version) for t in tensors if t is not None))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._impl.build(self.weights(), mode))
        return self._cache[1]

    def forward(self, x: Tensor) -> Tensor:
        weights = self.weights()
        weights.check_input(x)
        if self.merged:
            return self.base(x)
        if self.training and isinstance(self.dropout, nn.Dropout):
            xa = F.linear(self.dropout(x), self.lora_A)  # (..., r)
            return self.base(x) + self.scale * F.linear(xa, self.lora_B)
        needs_grad = x.requires_grad or self.lora_A.requires_grad or self.lora_B.requires_grad
        mode = "train" if torch.is_grad_enabled() and needs_grad else "infer"
        return self._op(mode)(x)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold s · B A into W (computed in fp32); W is untouched if the result is not finite."""
        if self.merged:
            raise ValueError("merge() called on a layer that is already merged; unmerge() first")
        self.base.weight.copy_(self.weights().merged_weight(+1.0))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract s · B A from W again; exact up to fp32 rounding."""
        if not self.merged:
            raise ValueError("unmerge() called on a layer that is not merged; merge() first")
        self.base.weight.copy_(self.weights().merged_weight(-1.0))
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in={self.base.in_features}, out={self.base.out_features}, r={self.rank}, "
            f"alpha={self.alpha}, scale={self.scale:.4g}, impl={self.impl}, merged={self.merged}"
        )
