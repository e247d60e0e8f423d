"""The Impl record and the IMPLS registry: the one list of forward implementations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lora_kernels.weights import SUPPORTED_DTYPES, LoRAWeights, dtype_name

Op = Callable[[Tensor], Tensor]
MODES = ("infer", "train")
ALL_DEVICES = frozenset({"cpu", "cuda"})
ALL_DTYPES = frozenset(SUPPORTED_DTYPES)


@dataclass(frozen=True)
class Impl:
    """One forward implementation: `build(weights, mode)` returns `op(x) -> y`.

    Everything done once (merge, compile, graph capture) happens in `builder`, never in `op`.
    `lora_equivalent` is False only for `base`, which drops the adapter on purpose.
    `compiles` marks builders that generate code (slow per new shape; tests use few shapes).
    """

    name: str
    description: str
    builder: Callable[[LoRAWeights], Op]
    devices: frozenset[str] = ALL_DEVICES
    dtypes: frozenset[torch.dtype] = ALL_DTYPES
    modes: frozenset[str] = frozenset(MODES)
    lora_equivalent: bool = True
    compiles: bool = False
    requires: Callable[[], str | None] = lambda: None

    def unavailable_reason(self, device: str | torch.device, dtype: torch.dtype, mode: str) -> str:
        """Why this impl cannot run here, or "" when it can."""
        device_type = torch.device(device).type
        if mode not in MODES:
            return f"mode must be one of {MODES}, got {mode!r}"
        if device_type not in self.devices:
            return (
                f"impl {self.name!r} supports devices {sorted(self.devices)}, not {device_type!r}"
            )
        if dtype not in self.dtypes:
            allowed = sorted(str(d) for d in self.dtypes)
            return f"impl {self.name!r} supports dtypes {allowed}, not {dtype}"
        if mode not in self.modes:
            return f"impl {self.name!r} supports modes {sorted(self.modes)}, not {mode!r}"
        return self.requires() or ""

    def build(self, weights: LoRAWeights, mode: str = "infer") -> Op:
        """Validate that this impl supports the weights' device, dtype and `mode`; build the op."""
        reason = self.unavailable_reason(weights.device, weights.dtype, mode)
        if reason:
            raise ValueError(reason)
        return self.builder(weights)


def rows_op(w: LoRAWeights, fn: Callable[[Tensor], Tensor]) -> Op:
    """An op that runs fn on x flattened to (T, in) rows and gives y back as (..., out)."""

    def op(x: Tensor) -> Tensor:
        return fn(x.reshape(-1, w.in_features)).view(*x.shape[:-1], w.out_features)

    return op


IMPLS: dict[str, Impl] = {}


def register(impl: Impl) -> Impl:
    """Add `impl` to IMPLS; names are unique."""
    if impl.name in IMPLS:
        raise ValueError(f"impl {impl.name!r} is already registered")
    IMPLS[impl.name] = impl
    return impl


def get_impl(name: str) -> Impl:
    """The registered impl called `name`; the error lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"impl name must be a str, got {type(name).__name__}")
    try:
        return IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown impl {name!r}; known: {', '.join(IMPLS)}") from None


def impls_table() -> str:
    """GitHub-markdown table of the registry: name, description, devices, dtypes, modes."""
    from tabulate import tabulate

    rows = [
        [
            f"`{impl.name}`",
            impl.description,
            ", ".join(sorted(impl.devices)),
            ", ".join(dtype_name(d) for d in SUPPORTED_DTYPES if d in impl.dtypes),
            ", ".join(m for m in MODES if m in impl.modes),
        ]
        for impl in IMPLS.values()
    ]
    return tabulate(rows, ["impl", "what it does", "devices", "dtypes", "modes"], tablefmt="github")
