"""What each rank runs in the tensor-parallel tests (module-level, so that spawned processes
can import it)."""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from lora_kernels import LoRAWeights
from lora_kernels.tp import TPLoRALinear, TPSplit, Traffic


def case_weights(case: dict) -> LoRAWeights:
    return LoRAWeights.random(case["in"], case["out"], case["r"], bias=case["bias"],
                              seed=case["seed"])  # fmt: skip


def case_inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """x (*lead, in) and the upstream gradient (*lead, out), seeded."""
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(*case["lead"], case["in"], generator=gen)
    return x, torch.randn(*case["lead"], case["out"], generator=gen)


def step(index: int, world: int, cases: list[dict]) -> list[dict]:
    """Per case: this rank's forward and backward of its TPLoRALinear on the case's x and
    upstream gradient, its gradients, the slices it holds and the bytes its collectives put in."""
    out = []
    for case in cases:
        split = TPSplit(case["kind"], case["adapter"], world)
        traffic = Traffic()
        layer = TPLoRALinear(case_weights(case), split, traffic=traffic)
        x, dy = case_inputs(case)
        x_i = (x if split.kind == "column" else x[..., layer.inp]).clone().requires_grad_()
        y = layer(x_i)
        y.backward(dy[..., layer.out] if split.kind == "column" else dy)
        moved = dict(traffic.bytes)  # of the step: the frozen layer's call below is not
        with torch.no_grad():
            base = layer.base_forward(x_i)
        out.append({"y": y.detach(), "base": base, "dx": x_i.grad, "dA": layer.lora_A.grad,
                    "dB": layer.lora_B.grad, "traffic": moved})  # fmt: skip
    return out


def one_dies(index: int, world: int) -> None:
    """Rank 1 leaves before the collective; the others wait on it."""
    if index == 1:
        os._exit(3)
    dist.all_reduce(torch.ones(1))


def one_stalls(index: int, world: int) -> None:
    """Rank 1 never joins the collective within the timeout."""
    if index == 1:
        time.sleep(30)
        return
    dist.all_reduce(torch.ones(1))


def one_raises(index: int, world: int) -> None:
    if index == 1:
        raise ValueError("rank 1 refuses")
    dist.barrier()
