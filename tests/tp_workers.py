"""What each rank runs in the tensor-parallel tests (module-level, so that spawned processes
can import it)."""

from __future__ import annotations

import os
import signal
import time

import torch
import torch.distributed as dist

from lora_kernels import LoRAWeights
from lora_kernels.multi import MultiLoRAWeights, random_index
from lora_kernels.tp import TPLoRALinear, TPMultiLoRALinear, TPSplit, Traffic


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


def multi_case_weights(case: dict) -> MultiLoRAWeights:
    """The case's adapters, their padding poisoned with nan (it must never be read)."""
    w = MultiLoRAWeights.random(case["in"], case["out"], case["ranks"], bias=case["bias"],
                                seed=case["seed"])  # fmt: skip
    A, B = w.A.clone(), w.B.clone()
    for i, r in enumerate(w.ranks):
        A[i, r:], B[i, :, r:] = float("nan"), float("nan")
    return MultiLoRAWeights(w.W, w.b, A, B, w.ranks, w.scales)


def multi_case_inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """x (*lead, in) and its per-token adapter index (*lead), some tokens on the base alone."""
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    x = torch.randn(*case["lead"], case["in"], generator=gen)
    tokens = torch.Size(case["lead"]).numel()
    index = random_index("uniform", tokens, len(case["ranks"]), base_share=0.25, seed=case["seed"])
    return x, index.view(case["lead"])


def multi_step(index: int, world: int, cases: list[dict]) -> list[dict]:
    """Per case: this rank's TPMultiLoRALinear forward and its frozen layer's on the case's x
    and index, and the bytes the forward's collectives put in."""
    out = []
    for case in cases:
        traffic = Traffic()
        split = TPSplit(case["kind"], case["adapter"], world)
        layer = TPMultiLoRALinear(multi_case_weights(case), split, traffic=traffic)
        x, ids = multi_case_inputs(case)
        x_i = x if split.kind == "column" else x[..., layer.inp]
        with torch.no_grad():
            y = layer(x_i, ids)
            moved = dict(traffic.bytes)
            out.append({"y": y, "base": layer.base_forward(x_i), "traffic": moved})
    return out


def multi_refusals(index: int, world: int) -> list[str]:
    """The errors a TPMultiLoRALinear gives for bad adapter ids and x, in order."""
    w = MultiLoRAWeights.random(8, 6, [2, 4], seed=3)
    layer = TPMultiLoRALinear(w, TPSplit("row", "sharded", world))
    x = torch.randn(2, 3, 8 // world)
    ids = torch.zeros(6, dtype=torch.int64)
    bad = [(x, ids.float()), (x, ids[:5]), (x, ids + 2), (torch.randn(2, 3, 8), ids)]
    out = []
    for xb, ids in bad:
        try:
            layer(xb, ids)
        except (TypeError, ValueError) as err:
            out.append(str(err))
    return out


def one_dies(index: int, world: int) -> None:
    """Rank 1 leaves before the collective; the others wait on it."""
    if index == 1:
        os._exit(3)
    dist.all_reduce(torch.ones(1))


def one_crashes(index: int, world: int) -> None:
    """Rank 1 is killed by SIGSEGV, as a crash in native code would; the others wait on it."""
    if index == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
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


def aborts_at_exit(index: int, world: int) -> int:
    """Returns its rank, then aborts in the interpreter's teardown, as a rank that took a
    torch profile with gloo up now and then did."""
    import atexit

    atexit.register(os.abort)
    return index
