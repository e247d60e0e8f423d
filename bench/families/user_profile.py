"""Where the time of `lora-bench model`'s calls goes: one generation (or training step) of the
frozen model, PEFT's, and the best of ours, each profiled with torch.profiler outside the timed
rounds and split into the parts of the layer breakdown over every adapted layer's shape (base
GEMM, shrink, expand, y add/copy/scale; attention, norms, the head and the rest under other
ops; Python and dispatch under outside ops)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from torch import nn

from bench.harness.breakdown import Dims, breakdown
from bench.harness.profiling import capture, records
from bench.harness.timing import make_round, synchronize, time_call
from bench.schema.entries import ProfileEntry

BASE_ROW = "base"  # the frozen model's row: the profile tables put it first, as base's
CALLS = 2  # profiled calls of each work: a whole generation or step is long enough


def layer_dims(peft: nn.Module, tokens: list[int]) -> list[Dims]:
    """The (T, in, out, r) of every adapted layer of PEFT's model at each token count."""
    shapes = set()
    for _, m in peft.named_modules():
        a = getattr(m, "lora_A", None)
        if isinstance(a, nn.ModuleDict) and len(a):
            A: Any = next(iter(a.values())).weight  # (r, in)
            B: Any = next(iter(m.lora_B.values())).weight  # (out, r)
            shapes.add((int(A.shape[1]), int(B.shape[0]), int(A.shape[0])))
    return [Dims(t, i, o, r) for t in tokens for i, o, r in sorted(shapes)]


def profiled(work: Callable[[], object], label: str, device: str, dims: list[Dims], train: bool,
             fields: dict[str, object], paired: tuple[float, float]) -> ProfileEntry:  # fmt: skip
    """One ProfileEntry of `work` (warm): CALLS calls unprofiled, then CALLS profiled."""
    synchronize(device)
    unprofiled = time_call(make_round(work, CALLS, device)) / CALLS
    name = f"lora-bench model {label}"
    prof, wall = capture(work, device, CALLS, name, False)
    parts = breakdown(records(prof, name, device), dims, train, CALLS, wall)
    return ProfileEntry(
        fullname=f"lora-bench model {fields['case']} {label} profile", impl=label, **fields,  # type: ignore[arg-type]
        **asdict(parts), peak_bytes=0, unprofiled_s=unprofiled, paired_s=paired[0],
        base_paired_s=paired[1], trace="", snapshot="",
    )  # fmt: skip
