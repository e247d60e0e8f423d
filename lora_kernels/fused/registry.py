"""The FusedImpl record and FUSED_IMPLS, the one list of module-level implementations (q, k
and v together; a gated MLP), which the tests and the benchmarks iterate as they do IMPLS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from torch import Tensor

from lora_kernels.fused.weights import MLPWeights, ModuleWeights, QKVWeights
from lora_kernels.registry import Impl

MODULES = ("qkv", "mlp")
# op(x) -> outputs: x (..., in); QKV gives (q, k, v), an MLP (y,), each (..., out_i)
ModuleOp = Callable[[Tensor], tuple[Tensor, ...]]


@dataclass(frozen=True)
class FusedImpl(Impl):
    """One implementation of a whole module: `build(weights, mode)` returns op(x) -> outputs.
    `module` is "qkv" (QKVWeights) or "mlp" (MLPWeights)."""

    module: str = "qkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.module not in MODULES:
            raise ValueError(f"impl {self.name!r}: module must be one of {MODULES}")

    def build(self, weights: ModuleWeights, mode: str = "infer") -> ModuleOp:  # type: ignore[override]
        kind = {"qkv": QKVWeights, "mlp": MLPWeights}[self.module]
        if not isinstance(weights, kind):
            raise TypeError(
                f"impl {self.name!r} is a {self.module} module: it builds on {kind.__name__}, "
                f"got {type(weights).__name__}"
            )
        return cast(ModuleOp, super().build(weights, mode))  # type: ignore[arg-type]


FUSED_IMPLS: dict[str, FusedImpl] = {}


def get_fused_impl(name: str) -> FusedImpl:
    """The module-level impl called `name`; the error lists the known names."""
    try:
        return FUSED_IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown fused impl {name!r}; known: {', '.join(FUSED_IMPLS)}") from None
