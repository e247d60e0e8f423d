"""What the harness asks of a weights object or an Impl beyond the fields every version of
lora_kernels has. `lora-bench ab` runs this harness over the base commit's kernels, back to
the plugin interface (09cf713): their LoRAWeights have no copy() or trainable() and their
Impls no variant, so the harness asks through these functions, never the methods."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor


def variant_of(impl: Any) -> str:
    """The function an impl computes, "lora" or "dora"; kernels from before DoRA know only
    LoRA."""
    return getattr(impl, "variant", "lora")


def trainable(w: Any) -> list[Tensor]:
    """The tensors of w that train: A and B, and DoRA's magnitude m."""
    return [w.A, w.B, *([w.m] if variant_of(w) == "dora" else [])]


def copy_weights(w: Any) -> Any:
    """w with every tensor in fresh memory, the same values and requires_grad flags."""
    fresh = {}
    for f in dataclasses.fields(w):
        t = getattr(w, f.name)
        if isinstance(t, Tensor):
            fresh[f.name] = t.detach().clone().requires_grad_(t.requires_grad)
    return dataclasses.replace(w, **fresh)
