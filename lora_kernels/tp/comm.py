"""The collectives a tensor-parallel layer needs, as autograd functions on a process group,
each counting what it moves in a Traffic record: the payload of every call (the tensor each
rank puts in; a ring all-reduce sends about 2·(tp − 1)/tp of it per rank, an all-gather
(tp − 1)/tp of its output).

- copy_to: identity forward, all-reduce of the gradient backward (x read whole by every rank
  of a column-parallel layer: each rank's dx is partial); `replicated` is the same for an
  adapter tensor every rank holds whole;
- reduce_from: all-reduce forward, identity backward (partial outputs summed, the sum used
  the same way on every rank);
- reduce_both: all-reduce forward and backward (partial shrinks summed, the sum used
  differently on each rank: the gradient is the sum of theirs);
- gather_last: all-gather along the last dimension forward; backward the all-reduce of the
  gradient and this rank's slice of it (a reduce-scatter, which gloo lacks, as an all-reduce).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class Traffic:
    """Bytes each collective put in, by "phase op" ("forward all_reduce", ...), and calls."""

    bytes: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)

    def add(self, what: str, t: Tensor) -> None:
        self.bytes[what] += t.numel() * t.element_size()
        self.calls[what] += 1

    def clear(self) -> None:
        self.bytes.clear()
        self.calls.clear()

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


def group_rank(world: int, group: Any, what: str) -> int:
    """This process's rank in `group` (None: the default group) after checking that
    torch.distributed is initialised and the group has `world` ranks; `what` names the caller."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{what} needs torch.distributed initialised (a process group)")
    size = dist.get_world_size(group)
    if size != world:
        raise ValueError(f"{what} is for {world} ranks, the group has {size}")
    return dist.get_rank(group)


def _all_reduce(t: Tensor, group: Any, traffic: Traffic | None, phase: str) -> Tensor:
    t = t.contiguous()
    if traffic is not None:
        traffic.add(f"{phase} all_reduce", t)
    dist.all_reduce(t, group=group)
    return t


class _CopyTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, traffic: Traffic | None, phase: str) -> Tensor:
        ctx.group, ctx.traffic, ctx.phase = group, traffic, phase
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        return _all_reduce(g.clone(), ctx.group, ctx.traffic, ctx.phase), None, None, None


class _ReduceFrom(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, traffic: Traffic | None, both: bool) -> Tensor:
        ctx.group, ctx.traffic, ctx.both = group, traffic, both
        return _all_reduce(x.clone(), group, traffic, "forward")

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        if ctx.both:
            g = _all_reduce(g.clone(), ctx.group, ctx.traffic, "backward")
        return g, None, None, None


class _GatherLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any, traffic: Traffic | None) -> Tensor:
        world, index = dist.get_world_size(group), dist.get_rank(group)
        ctx.group, ctx.traffic, ctx.index, ctx.width = group, traffic, index, x.shape[-1]
        parts = [torch.empty_like(x) for _ in range(world)]
        x = x.contiguous()
        if traffic is not None:
            traffic.add("forward all_gather", x)
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:
        g = _all_reduce(g.clone(), ctx.group, ctx.traffic, "backward")
        w, i = ctx.width, ctx.index
        return g[..., i * w : (i + 1) * w].contiguous(), None, None


def copy_to(x: Tensor, group: Any = None, traffic: Traffic | None = None) -> Tensor:
    """x, whose gradient is all-reduced over the group in backward."""
    return _CopyTo.apply(x, group, traffic, "backward")


def reduce_from(x: Tensor, group: Any = None, traffic: Traffic | None = None) -> Tensor:
    """The sum of x over the group; the gradient passes through unchanged."""
    return _ReduceFrom.apply(x, group, traffic, False)


def reduce_both(x: Tensor, group: Any = None, traffic: Traffic | None = None) -> Tensor:
    """The sum of x over the group; the gradient is summed over the group too."""
    return _ReduceFrom.apply(x, group, traffic, True)


def gather_last(x: Tensor, group: Any = None, traffic: Traffic | None = None) -> Tensor:
    """The ranks' x side by side along the last dimension, in rank order."""
    return _GatherLast.apply(x, group, traffic)


def replicated(p: Tensor, group: Any = None, traffic: Traffic | None = None) -> Tensor:
    """p, as a rank uses a tensor every rank holds whole but computes only part of the
    gradient of: its gradient is summed over the group in backward, each backward's part
    once (so accumulation over micro-batches stays right)."""
    return _CopyTo.apply(p, group, traffic, "backward grad")
