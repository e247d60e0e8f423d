"""The Impl record and the IMPLS registry: the one list of implementations, ours, the peers
(other projects' LoRA layers) and plugins, in that order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from torch import Tensor

from lora_kernels.quant.formats import FORMATS
from lora_kernels.weights import SUPPORTED_DTYPES, LayerTensors, LoRAWeights, dtype_name

if TYPE_CHECKING:
    from lora_kernels.conv.dora_weights import ConvDoRAWeights
    from lora_kernels.conv.weights import ConvLoRAWeights
    from lora_kernels.dora.weights import DoRAWeights
    from lora_kernels.quant.weights import QLoRAWeights

Op = Callable[[Tensor], Tensor]
MODES = ("infer", "train")
DEVICES = ("cpu", "cuda")
ALL_DEVICES = frozenset(DEVICES)
ALL_DTYPES = frozenset(SUPPORTED_DTYPES)
ORIGINS = ("ours", "peer", "plugin")
VARIANTS = ("lora", "dora", "qlora", "conv", "conv_dora")
OWN_INPUTS = ("qlora", "conv", "conv_dora")  # variants whose weights no other variant takes


def _subset(name: str, value: object, allowed: tuple, impl: str) -> None:
    if not isinstance(value, frozenset) or not value:
        raise TypeError(f"impl {impl!r}: {name} must be a non-empty frozenset, got {value!r}")
    extra = [v for v in value if v not in allowed]
    if extra:
        raise ValueError(f"impl {impl!r}: {name} {extra} not allowed; allowed: {list(allowed)}")


@dataclass(frozen=True)
class Impl:
    """One implementation: `build(weights, mode)` returns `op(x) -> y`, x (..., in) -> (..., out).

    Everything done once (merge, compile, graph capture) happens in `builder`, never in `op`.
    `lora_equivalent` is False only for `base`, which drops the adapter on purpose.
    `compiles` marks builders that generate code (slow per new shape; tests use few shapes).
    `requires` says why the impl cannot run here (a missing package), or None.
    `origin` is "ours", "peer" or "plugin"; `source` names the package or module it came from.
    `variant` is the function computed: "lora" builds on LoRAWeights, "dora" on DoRAWeights,
    "qlora" on QLoRAWeights (a quantized base), of one of the impl's `formats`, "conv" on
    ConvLoRAWeights (a 2-D convolution: x (N, in, H, W) -> (N, out, H_out, W_out)),
    "conv_dora" on ConvDoRAWeights (DoRA on that convolution).
    `exact_norm` (DoRA) is False for impls that can only treat the norm as a constant in
    backward; they refuse to train weights with detach_norm=False.
    """

    name: str
    description: str
    builder: Callable[[Any], Callable[..., Tensor]]  # weights of `variant` -> op
    devices: frozenset[str] = ALL_DEVICES
    dtypes: frozenset[torch.dtype] = ALL_DTYPES
    modes: frozenset[str] = frozenset(MODES)
    lora_equivalent: bool = True
    compiles: bool = False
    requires: Callable[[], str | None] = lambda: None
    origin: str = "ours"
    source: str = "lora-bench"
    variant: str = "lora"
    exact_norm: bool = True
    formats: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(
                f"impl name must be a Python identifier (it is part of test ids), got {self.name!r}"
            )
        if not isinstance(self.description, str) or not self.description.strip():
            raise TypeError(f"impl {self.name!r}: description must be a non-empty str")
        if "\n" in self.description:
            raise ValueError(f"impl {self.name!r}: description must be one line")
        if not callable(self.builder):
            raise TypeError(f"impl {self.name!r}: builder must be callable, got {self.builder!r}")
        _subset("devices", self.devices, DEVICES, self.name)
        _subset("dtypes", self.dtypes, SUPPORTED_DTYPES, self.name)
        _subset("modes", self.modes, MODES, self.name)
        if self.origin not in ORIGINS:
            raise ValueError(f"impl {self.name!r}: origin must be one of {ORIGINS}")
        if self.variant not in VARIANTS:
            raise ValueError(f"impl {self.name!r}: variant must be one of {VARIANTS}")
        if self.variant == "qlora":
            _subset("formats", self.formats, FORMATS, self.name)
        elif self.formats:
            raise ValueError(f"impl {self.name!r}: formats are for variant 'qlora' only")

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

    def build(
        self,
        weights: LoRAWeights | DoRAWeights | QLoRAWeights | ConvLoRAWeights | ConvDoRAWeights,
        mode: str = "infer",
    ) -> Op:
        """Validate that this impl supports the weights' variant, device, dtype and `mode`;
        build the op."""
        self.check_variant(weights, mode)
        reason = self.unavailable_reason(weights.device, weights.dtype, mode)
        if reason:
            raise ValueError(reason)
        return self.builder(weights)

    def check_variant(self, weights: object, mode: str) -> None:
        """Raise unless the weights are of this impl's variant (and, for a DoRA impl that
        trains them, of a norm gradient it computes)."""
        variant = getattr(weights, "variant", None)
        if variant == self.variant == "qlora":
            fmt = weights.fmt  # type: ignore[attr-defined]
            if fmt not in self.formats:
                raise ValueError(
                    f"impl {self.name!r} takes bases in {sorted(self.formats)}, not {fmt!r}"
                )
            return
        if variant == self.variant:
            if mode == "train" and not self.exact_norm and not weights.detach_norm:  # type: ignore[attr-defined]
                raise ValueError(
                    f"impl {self.name!r} treats the norm as a constant in backward; "
                    "train it with detach_norm=True, or pick an impl with exact_norm"
                )
            return
        if variant is None:
            raise TypeError(f"impl {self.name!r} builds on weights, got {type(weights).__name__}")
        mine = ", ".join(i.name for i in IMPLS.values() if i.variant == variant)
        if variant in OWN_INPUTS or self.variant in OWN_INPUTS:
            raise ValueError(
                f"impl {self.name!r} computes {self.variant}, but the weights are "
                f"{type(weights).__name__} ({variant}); pick one of: {mine}"
            )
        if self.variant == "lora":
            raise ValueError(
                f"impl {self.name!r} computes LoRA and would ignore DoRA's magnitude; "
                f"{type(weights).__name__} need a DoRA impl: {mine}"
            )
        raise ValueError(
            f"impl {self.name!r} computes DoRA: it needs DoRAWeights (LoRA's tensors and a "
            f"magnitude m), got {type(weights).__name__}; DoRAWeights.from_lora(w) adds m"
        )


def rows_op(w: LayerTensors | QLoRAWeights, fn: Callable[[Tensor], Tensor]) -> Op:
    """An op that runs fn on x flattened to (T, in) rows and gives y back as (..., out)."""

    def op(x: Tensor) -> Tensor:
        return fn(x.reshape(-1, w.in_features)).view(*x.shape[:-1], w.out_features)

    return op


IMPLS: dict[str, Impl] = {}


AnyImpl = TypeVar("AnyImpl", bound=Impl)


def register(impl: AnyImpl, registry: dict[str, AnyImpl] | None = None) -> AnyImpl:
    """Add `impl` to the registry (IMPLS by default); names are unique."""
    registry = cast("dict[str, AnyImpl]", IMPLS) if registry is None else registry
    if not isinstance(impl, Impl):
        raise TypeError(f"only an Impl can be registered, got {type(impl).__name__}")
    if impl.name in registry:
        other = registry[impl.name]
        raise ValueError(
            f"impl {impl.name!r} from {impl.source} is already registered by {other.source} "
            f"({other.origin}); names must be unique"
        )
    registry[impl.name] = impl
    return impl


LABELS = {"lora": "LoRA", "dora": "DoRA", "conv": "Conv2d LoRA", "conv_dora": "Conv2d DoRA"}


def impls_table(impls: list[Impl] | None = None) -> str:
    """GitHub-markdown table of impls (default: all registered): name, origin, what it computes
    (LoRA, DoRA, Conv2d LoRA or DoRA, or QLoRA and the base formats it takes), description, devices,
    dtypes, modes."""
    from tabulate import tabulate

    rows = [
        [
            f"`{impl.name}`",
            impl.origin if impl.origin == "ours" else f"{impl.origin}: {impl.source}",
            LABELS.get(impl.variant)
            or "QLoRA: " + ", ".join(f for f in FORMATS if f in impl.formats),
            impl.description,
            ", ".join(sorted(impl.devices)),
            ", ".join(dtype_name(d) for d in SUPPORTED_DTYPES if d in impl.dtypes),
            ", ".join(m for m in MODES if m in impl.modes),
        ]
        for impl in (IMPLS.values() if impls is None else impls)
    ]
    headers = ["impl", "origin", "computes", "what it does", "devices", "dtypes", "modes"]
    return tabulate(rows, headers, tablefmt="github")
