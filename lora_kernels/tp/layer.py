"""TPLoRALinear: one rank's part of a tensor-parallel LoRA layer on a torch.distributed process
group (NCCL on GPUs, gloo on a CPU). Each rank builds it from the whole layer's weights and
keeps copies of its own shard only (see TPSplit for what each split holds and moves).
TPLinear holds what it shares with TPMultiLoRALinear: the frozen layer and where each
split's collectives go."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lora_kernels.tp.comm import (
    Traffic,
    copy_to,
    gather_last,
    group_rank,
    reduce_both,
    reduce_from,
    replicated,
)
from lora_kernels.tp.split import TPSplit
from lora_kernels.weights import LoRAWeights

Shrink = Callable[[Tensor, slice | None], Tensor]  # x, A's columns to use (None: all) -> xa
Expand = Callable[[Tensor, Tensor, slice | None], Tensor]  # y += xa B[rows]ᵀ in place -> y


def _frozen(t: Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


class TPLinear(nn.Module):
    """What the tensor-parallel layers share: this rank's frozen W_i and b_i of `split` over
    `group`, the columns `out` and `inp` it holds, and where each split's collectives go.
    Subclasses set the attributes and bring their own shrink and expand."""

    split: TPSplit
    group: Any
    traffic: Traffic | None
    out: slice
    inp: slice
    weight: Tensor
    bias: Tensor | None

    def base_forward(self, x: Tensor) -> Tensor:
        """The frozen tensor-parallel layer of the same split, without the adapter."""
        if self.split.kind == "column":
            return F.linear(copy_to(x, self.group, self.traffic), self.weight, self.bias)
        y = reduce_from(F.linear(x, self.weight), self.group, self.traffic)
        return y if self.bias is None else y + self.bias

    def split_forward(self, x: Tensor, shrink: Shrink, expand: Expand) -> Tensor:
        """x (T, in) or (T, in / tp) -> (T, out / tp) or (T, out): the frozen layer and the
        adapter's shrink and expand (added in place into the output: one output-sized tensor
        a call, as the frozen layer's), with the split's collectives between them."""
        adapter, group, traffic = self.split.adapter, self.group, self.traffic
        if self.split.kind == "column":
            xr = copy_to(x, group, traffic)
            xa = shrink(xr, None)  # (T, r), or (T, r / tp) fully sharded
            if adapter == "fully_sharded":
                xa = gather_last(xa, group, traffic)
            rows = self.out if adapter == "replicated" else None
            return expand(F.linear(xr, self.weight, self.bias), xa, rows)
        partial = x @ self.weight.t()  # (T, out), this rank's part of the sum
        if adapter == "sharded":  # expanded here, summed by the base's own all-reduce
            y = reduce_from(expand(partial, shrink(x, None), None), group, traffic)
        elif adapter == "fully_sharded":  # each rank expands its columns of y
            xa = reduce_both(shrink(x, None), group, traffic)
            expand(partial.narrow(-1, self.out.start, self.out.stop - self.out.start), xa, None)
            y = reduce_from(partial, group, traffic)
        else:  # replicated: the whole shrink on every rank, expanded after the sum
            xa = reduce_from(shrink(x, self.inp), group, traffic)
            y = expand(reduce_from(partial, group, traffic), xa, None)
        return y if self.bias is None else y + self.bias


class TPLoRALinear(TPLinear):
    """This rank's part of y = x Wᵀ + b + s · (x Aᵀ) Bᵀ split by `split` over `group` (the
    default group when None). Column: x (..., in), whole on every rank -> y_i (..., out / tp),
    this rank's slice of y. Row: x_i (..., in / tp), this rank's slice of x -> y (..., out),
    whole on every rank. W_i and b_i are frozen; lora_A and lora_B (this rank's A_i and B_i)
    train, and a replicated one gets its gradient summed over the group in backward (each
    rank computes part of it).
    `traffic` counts the bytes every collective of the layer puts in."""

    def __init__(
        self,
        weights: LoRAWeights,
        split: TPSplit,
        group: Any = None,
        traffic: Traffic | None = None,
    ) -> None:
        super().__init__()
        shard = split.shard(weights, group_rank(split.world, group, f"TPLoRALinear {split}"))
        self.split, self.group, self.scale = split, group, weights.scale
        self.traffic = traffic
        self.out, self.inp = shard.out, shard.inp
        self.weight = nn.Parameter(shard.W.detach().clone(), requires_grad=False)
        self.bias = _frozen(shard.b)
        self.lora_A = nn.Parameter(shard.A.detach().clone())
        self.lora_B = nn.Parameter(shard.B.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self._forward(x.reshape(-1, x.shape[-1]))
        return y.view(*lead, y.shape[-1])

    def _forward(self, x: Tensor) -> Tensor:
        """x (T, in) or (T, in / tp) -> (T, out / tp) or (T, out)."""
        A: Tensor = self.lora_A
        B: Tensor = self.lora_B
        if "A" in self.split.replicated:
            A = replicated(A, self.group, self.traffic)
        if "B" in self.split.replicated:
            B = replicated(B, self.group, self.traffic)

        def shrink(x: Tensor, cols: slice | None) -> Tensor:
            return x @ (A if cols is None else A[:, cols]).t()

        def expand(y: Tensor, xa: Tensor, rows: slice | None) -> Tensor:
            return y.addmm_(xa, (B if rows is None else B[rows]).t(), alpha=self.scale)

        return self.split_forward(x, shrink, expand)

    def extra_repr(self) -> str:
        return (f"{self.split}, W_i {tuple(self.weight.shape)}, A_i {tuple(self.lora_A.shape)}, "
                f"B_i {tuple(self.lora_B.shape)}, scale={self.scale:.4g}")  # fmt: skip
