"""TPLoRALinear: one rank's part of a tensor-parallel LoRA layer on a torch.distributed process
group (NCCL on GPUs, gloo on a CPU). Each rank builds it from the whole layer's weights and
keeps copies of its own shard only (see TPSplit for what each split holds and moves)."""

from __future__ import annotations

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


def _frozen(t: Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=False)


class TPLoRALinear(nn.Module):
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

    def base_forward(self, x: Tensor) -> Tensor:
        """The frozen tensor-parallel layer of the same split, without the adapter."""
        if self.split.kind == "column":
            return F.linear(copy_to(x, self.group, self.traffic), self.weight, self.bias)
        y = reduce_from(F.linear(x, self.weight), self.group, self.traffic)
        return y if self.bias is None else y + self.bias

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self._forward(x.reshape(-1, x.shape[-1]))
        return y.view(*lead, y.shape[-1])

    def _forward(self, x: Tensor) -> Tensor:
        """x (T, in) or (T, in / tp) -> (T, out / tp) or (T, out). Each expand is added in
        place into the output: one output-sized tensor a call, as the frozen layer's."""
        A: Tensor = self.lora_A
        B: Tensor = self.lora_B
        s = self.scale
        adapter, group, traffic = self.split.adapter, self.group, self.traffic
        if "A" in self.split.replicated:
            A = replicated(A, group, traffic)
        if "B" in self.split.replicated:
            B = replicated(B, group, traffic)
        if self.split.kind == "column":
            xr = copy_to(x, group, traffic)
            xa = xr @ A.t()  # (T, r), or (T, r / tp) fully sharded
            if adapter == "fully_sharded":
                xa = gather_last(xa, group, traffic)
            B_i = B[self.out] if adapter == "replicated" else B
            return F.linear(xr, self.weight, self.bias).addmm_(xa, B_i.t(), alpha=s)
        partial = x @ self.weight.t()  # (T, out), this rank's part of the sum
        if adapter == "sharded":  # expanded here, summed by the base's own all-reduce
            partial.addmm_(x @ A.t(), B.t(), alpha=s)
            y = reduce_from(partial, group, traffic)
        elif adapter == "fully_sharded":  # each rank expands its columns of y
            xa = reduce_both(x @ A.t(), group, traffic)
            start, stop = self.out.start, self.out.stop
            partial.narrow(-1, start, stop - start).addmm_(xa, B.t(), alpha=s)
            y = reduce_from(partial, group, traffic)
        else:  # replicated: the whole shrink on every rank, expanded after the sum
            xa = reduce_from(x @ A[:, self.inp].t(), group, traffic)
            y = reduce_from(partial, group, traffic).addmm_(xa, B.t(), alpha=s)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"{self.split}, W_i {tuple(self.weight.shape)}, A_i {tuple(self.lora_A.shape)}, "
                f"B_i {tuple(self.lora_B.shape)}, scale={self.scale:.4g}")  # fmt: skip
