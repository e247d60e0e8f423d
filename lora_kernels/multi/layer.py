"""MultiLoRALinear: one frozen linear layer serving many LoRA adapters in one batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lora_kernels.layer import frozen_base
from lora_kernels.multi.registry import MultiImpl, MultiOp, get_multi_impl
from lora_kernels.multi.weights import MultiLoRAWeights
from lora_kernels.weights import check_rank, scaling

Adapter = tuple[Tensor, Tensor, float]  # A (r, in), B (out, r), scale


class MultiLoRALinear(nn.Module):
    """A frozen linear layer and n LoRA adapters (S-LoRA, Punica): each token picks one.

    y_t = x_t Wᵀ + b + s_i · (x_t A_iᵀ) B_iᵀ with i = adapter_ids_t; -1 is the base layer alone.
    x (..., in) with adapter_ids (...) per token, or (batch,) per sequence when x is
    (batch, seq, in) -> y (..., out). A is stacked (n, r_max, in), B (n, out, r_max), each
    adapter at its own rank (r_max: the largest, unless given). For serving: the stacks are
    buffers, nothing trains.
    """

    lora_A: Tensor  # buffers, registered in __init__
    lora_B: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ranks: Sequence[int] | None = None,
        *,
        alpha: float = 8.0,
        use_rslora: bool = False,
        impl: str = "segments",
        bias: bool = True,
        base: nn.Linear | None = None,
        adapters: Sequence[Adapter] | None = None,
        names: Sequence[str] | None = None,
        r_max: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if (ranks is None) == (adapters is None):
            raise ValueError("pass exactly one of ranks (fresh adapters) and adapters")
        self.base = base = frozen_base(in_features, out_features, base, bias, device, dtype)
        if adapters is None:
            adapters = _fresh(base.weight, ranks or (), alpha, use_rslora)
        w = MultiLoRAWeights.stack(base.weight, base.bias, adapters, r_max)
        self.register_buffer("lora_A", w.A)  # (n, r_max, in)
        self.register_buffer("lora_B", w.B)  # (n, out, r_max)
        self.ranks, self.scales = w.ranks, w.scales
        names = [str(i) for i in range(w.adapters)] if names is None else list(names)
        if len(names) != w.adapters or len(set(names)) != len(names):
            raise ValueError(f"names must be {w.adapters} distinct names, got {names}")
        self.names = names
        self._built: tuple[tuple, MultiLoRAWeights, MultiOp] | None = None
        self.impl = impl

    @classmethod
    def from_adapters(
        cls, base: nn.Linear, adapters: Sequence[Adapter], **kwargs: Any
    ) -> MultiLoRALinear:
        """Serve `adapters` [(A_i (r_i, in), B_i (out, r_i), s_i), ...] of `base`, copied into
        stacks; base's weight and bias are used as they are (frozen)."""
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        return cls(base.in_features, base.out_features, base=base, adapters=adapters, **kwargs)

    @classmethod
    def from_peft(
        cls,
        layer: nn.Module,
        adapters: Sequence[str] | None = None,
        *,
        impl: str = "segments",
        r_max: int | None = None,
    ) -> MultiLoRALinear:
        """Serve the LoRA adapters a PEFT LoRA Linear layer holds (default: all, in its order),
        named as in PEFT, on its base weight (shared; a Conv1D's through a transposed view)."""
        from lora_kernels.multi.peft import peft_adapters

        base, loaded, names = peft_adapters(layer, adapters)
        return cls.from_adapters(base, loaded, names=names, impl=impl, r_max=r_max)

    @property
    def impl(self) -> str:
        return self._impl.name

    @impl.setter
    def impl(self, name: str) -> None:
        self._impl: MultiImpl = get_multi_impl(name)
        self._built = None

    def weights(self) -> MultiLoRAWeights:
        """The live tensors as a MultiLoRAWeights (no copies)."""
        b = self.base
        return MultiLoRAWeights(b.weight, b.bias, self.lora_A, self.lora_B, self.ranks, self.scales)

    def index(self, names: Sequence[str | None]) -> Tensor:
        """Adapter ids (len(names),) int64 on the layer's device for adapter names; None is
        -1, the base layer alone."""
        ids = {name: i for i, name in enumerate(self.names)}
        unknown = [n for n in names if n is not None and n not in ids]
        if unknown:
            raise ValueError(f"unknown adapters {unknown}; known: {', '.join(self.names)}")
        out = [-1 if n is None else ids[n] for n in names]
        return torch.tensor(out, dtype=torch.int64, device=self.lora_A.device)

    def _current(self) -> tuple[MultiLoRAWeights, MultiOp]:
        """The weights, validated, and the impl's op on them; both rebuilt only when a tensor
        is replaced or updated in place."""
        b = self.base
        tensors = (b.weight, b.bias, self.lora_A, self.lora_B)
        key = tuple((id(t), t._version) for t in tensors if t is not None)
        if self._built is None or self._built[0] != key:
            w = self.weights()
            self._built = (key, w, self._impl.build(w))
        return self._built[1], self._built[2]

    def forward(self, x: Tensor, adapter_ids: Tensor) -> Tensor:
        w, op = self._current()
        per_sequence = isinstance(x, Tensor) and x.dim() > 2 and isinstance(adapter_ids, Tensor)
        if per_sequence and adapter_ids.shape == x.shape[:1]:
            adapter_ids = adapter_ids[:, None].expand(x.shape[:2]).reshape(x.shape[:-1])
        elif per_sequence:
            tokens = (x.numel() // x.shape[-1],)
            allowed = {tuple(x.shape[:1]), tuple(x.shape[:-1]), tokens}
            if tuple(adapter_ids.shape) not in allowed:
                raise ValueError(
                    f"adapter_ids has shape {tuple(adapter_ids.shape)}: give one id per sequence, "
                    f"shape (batch,) = {tuple(x.shape[:1])}, or one per token, shape "
                    f"{tuple(x.shape[:-1])} or {tokens}"
                )
        return op(x, w.check_index(adapter_ids, x))  # checks x too

    def _apply(self, fn, recurse=True):  # nn.Module's signature
        self._built = None  # .to(), .half(), .cuda() swap tensor data behind the same objects
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (
            f"in={self.base.in_features}, out={self.base.out_features}, "
            f"adapters={len(self.names)}, ranks={list(self.ranks)}, impl={self.impl}"
        )


def _fresh(W: Tensor, ranks: Sequence[int], alpha: float, use_rslora: bool) -> list[Adapter]:
    """New adapters at `ranks`: A kaiming-uniform, B zero (each a no-op until trained or set)."""
    if isinstance(ranks, int) or len(ranks) == 0:
        raise ValueError(f"ranks must be a non-empty sequence of ints, got {ranks!r}")
    out_f, in_f = W.shape
    adapters = []
    for r in ranks:
        r = check_rank(r, in_f, out_f)
        A = torch.empty(r, in_f, device=W.device, dtype=W.dtype)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        adapters.append((A, torch.zeros(out_f, r, device=W.device, dtype=W.dtype),
                         scaling(alpha, r, use_rslora)))  # fmt: skip
    return adapters
