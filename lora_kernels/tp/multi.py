"""TPMultiLoRALinear: one rank's part of a tensor-parallel multi-adapter layer (serving, as
MultiLoRALinear: the stacks are buffers, nothing trains). Every rank gets the whole batch's
per-token adapter index; the stacks are split as TPSplit splits one adapter's A and B, with
r_max for r: A (n, r_max, in) -> A[:, a_rows, a_cols], B (n, out, r_max) -> B[:, b_rows]."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lora_kernels.multi.index import sort_by_adapter
from lora_kernels.multi.weights import INDEX_DTYPES, MultiLoRAWeights
from lora_kernels.tp.comm import Traffic, group_rank
from lora_kernels.tp.layer import TPLinear
from lora_kernels.tp.split import TPSplit


class TPMultiLoRALinear(TPLinear):
    """This rank's part of y_t = x_t Wᵀ + b + s_i · (x_t A_iᵀ) B_iᵀ, i = adapter_ids_t (-1: the
    base layer alone), split by `split` over `group` (the default group when None).

    Column: x (..., in), whole on every rank -> (..., out / tp), this rank's slice of y.
    Row: x_i (..., in / tp), this rank's slice of x -> y (..., out), whole on every rank.
    adapter_ids (...) or (T,): the same on every rank. The padding past each adapter's rank
    is zeroed and s_i folded into B_i when the stacks are cut. The collectives are those of
    the LoRA split of the same name, with r_max for r (expected_traffic(..., train=False)).
    """

    lora_A: Tensor  # buffers, registered in __init__ (so are weight and bias)
    lora_B: Tensor

    def __init__(
        self,
        weights: MultiLoRAWeights,
        split: TPSplit,
        group: Any = None,
        traffic: Traffic | None = None,
    ) -> None:
        super().__init__()
        rank = group_rank(split.world, group, f"TPMultiLoRALinear {split}")
        w = weights
        c = split.slices(w.in_features, w.out_features, w.r_max, rank)
        A, B = w.padded()
        B = B * w.scale_tensor()[:, None, None]
        W = w.W.detach()[c.out] if split.kind == "column" else w.W.detach()[:, c.inp]
        b = w.b if w.b is None or split.kind == "row" else w.b[c.out]
        self.split, self.group, self.traffic = split, group, traffic
        self.out, self.inp, self.adapters = c.out, c.inp, w.adapters
        self.register_buffer("weight", W.clone())
        self.register_buffer("bias", None if b is None else b.detach().clone())
        self.register_buffer("lora_A", A[:, c.a_rows, c.a_cols].contiguous())  # (n, r', in')
        self.register_buffer("lora_B", B[:, c.b_rows].contiguous())  # (n, out', r_max)

    def forward(self, x: Tensor, adapter_ids: Tensor) -> Tensor:
        lead = x.shape[:-1]
        index = self._index(adapter_ids, x)
        y = self._forward(x.reshape(-1, x.shape[-1]), index)
        return y.view(*lead, y.shape[-1])

    def _index(self, adapter_ids: Tensor, x: Tensor) -> Tensor:
        """adapter_ids as int64 (T,), checked: shape, dtype, device and range [-1, n)."""
        want = self.weight.shape[1]  # in, or in / tp for a row-parallel layer
        if x.dim() < 1 or x.shape[-1] != want:
            raise ValueError(f"x must be (..., {want}) on this rank ({self.split}), got "
                             f"{tuple(x.shape)}")  # fmt: skip
        tokens = x.numel() // want
        if not isinstance(adapter_ids, Tensor) or adapter_ids.dtype not in INDEX_DTYPES:
            got = getattr(adapter_ids, "dtype", type(adapter_ids).__name__)
            raise TypeError(f"adapter_ids must be an int64 or int32 tensor, got {got}")
        if tuple(adapter_ids.shape) not in (tuple(x.shape[:-1]), (tokens,)):
            raise ValueError(f"adapter_ids has shape {tuple(adapter_ids.shape)}; x's tokens "
                             f"need {tuple(x.shape[:-1])} or {(tokens,)}")  # fmt: skip
        if adapter_ids.device != x.device:
            raise ValueError(f"adapter_ids is on {adapter_ids.device}, x on {x.device}")
        index = adapter_ids.reshape(-1).long()
        if index.numel() and not bool(((index >= -1) & (index < self.adapters)).all()):
            raise ValueError(f"adapter_ids must be in [-1, {self.adapters}); -1 is the base "
                             f"layer alone, got values in [{int(index.min())}, "
                             f"{int(index.max())}]")  # fmt: skip
        return index

    def _forward(self, x: Tensor, index: Tensor) -> Tensor:
        """x (T, in) or (T, in / tp), index (T,) -> (T, out / tp) or (T, out)."""
        order, counts, starts = sort_by_adapter(index, self.adapters)
        segments = [(i, order[s : s + n]) for i, (n, s) in
                    enumerate(torch.stack([counts, starts], 1).tolist()) if n]  # fmt: skip

        def shrink(x: Tensor, cols: slice | None) -> Tensor:
            A = self.lora_A if cols is None else self.lora_A[:, :, cols]
            return _shrink(x, A, segments)

        def expand(y: Tensor, xa: Tensor, rows: slice | None) -> Tensor:
            B = self.lora_B if rows is None else self.lora_B[:, rows]
            return _expand(y, xa, B, segments)

        return self.split_forward(x, shrink, expand)

    def extra_repr(self) -> str:
        return (f"{self.split}, adapters={self.adapters}, W_i {tuple(self.weight.shape)}, "
                f"A_i {tuple(self.lora_A.shape)}, B_i {tuple(self.lora_B.shape)}")  # fmt: skip


Segments = list[tuple[int, Tensor]]  # (adapter, its tokens), adapters with tokens only


def _shrink(x: Tensor, A: Tensor, segments: Segments) -> Tensor:
    """x (T, k), A (n, r, k) -> (T, r): each token's x_t A_iᵀ, zero for the -1 tokens."""
    xa = x.new_zeros(x.shape[0], A.shape[1])
    for i, tokens in segments:
        xa.index_copy_(0, tokens, x.index_select(0, tokens) @ A[i].t())
    return xa


def _expand(y: Tensor, xa: Tensor, B: Tensor, segments: Segments) -> Tensor:
    """y (T, m) += each token's xa_t B_iᵀ, B (n, m, r), in place; returns y."""
    for i, tokens in segments:
        y.index_add_(0, tokens, xa.index_select(0, tokens) @ B[i].t())
    return y
