"""What every oracle and check shares: float64 copies, the per-dtype tolerances, the relative
error, the gradients' container, and memory poisoned with NaN so an unwritten output shows."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# Max ‖y − y_ref‖ / ‖y_ref‖ against the float64 oracle, per dtype (DESIGN.md, section 3).
TOLERANCES: dict[str, float] = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 5e-3, "bf16": 2e-2}


def tolerance(dtype: torch.dtype, device: str | torch.device) -> float:
    """Relative-error tolerance for `dtype` on `device`; fp32 on CUDA with TF32 on gets 1e-3."""
    if dtype == torch.float16:
        return TOLERANCES["fp16"]
    if dtype == torch.bfloat16:
        return TOLERANCES["bf16"]
    if torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return TOLERANCES["tf32"]
    return TOLERANCES["fp32"]


def rel_error(y: Tensor, ref: Tensor) -> float:
    """‖y − ref‖ / ‖ref‖ in float64; NaN or inf in y gives inf, never a pass. An empty pair
    (T = 0) gives 0; a zero reference gives 0 only for an exactly zero y."""
    if y.shape != ref.shape:
        raise ValueError(f"shape {tuple(y.shape)} does not match the reference {tuple(ref.shape)}")
    y64 = y.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(y64).all()):
        return float("inf")
    diff, norm = torch.linalg.vector_norm(y64 - ref64), torch.linalg.vector_norm(ref64)
    if norm == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / norm)


def f64(t: Tensor) -> Tensor:
    """t detached, as float64 on the CPU."""
    return t.detach().to("cpu", torch.float64)


@dataclass(frozen=True)
class Grads:
    """Gradients of sum(y · grad_out) with respect to x (..., in), A (r, in), B (out, r) and,
    for DoRA, m (out,)."""

    x: Tensor
    A: Tensor
    B: Tensor
    m: Tensor | None = None


@contextmanager
def poisoned_memory() -> Iterator[None]:
    """Fill fresh memory from torch.empty & co. with NaN, so an unwritten output shows.

    Uses torch's deterministic mode (warn-only) with fill_uninitialized_memory; restores both.
    """
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    deterministic: Any = torch.utils.deterministic  # the flag is missing from torch's stubs
    was_fill = deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            # warn-only mode reports ops without a deterministic kernel; we want the fill only
            warnings.filterwarnings("ignore", message=".*determinis", category=UserWarning)
            yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
        deterministic.fill_uninitialized_memory = was_fill
