"""The tensors of a whole module with LoRA on each projection: attention's q, k and v, read
from one x, and a SwiGLU MLP's gate, up and down. Each projection is a LoRAWeights; these
check that they fit together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lora_kernels.weights import LoRAWeights

ACTIVATIONS = ("silu",)  # the MLP's gate activation: SwiGLU, silu(gate) * up


def _one_place(named: dict[str, LoRAWeights]) -> None:
    dtypes = {n: w.dtype for n, w in named.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"the projections must share one dtype, got {dtypes}")
    devices = {n: w.device for n, w in named.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"the projections must be on one device, got {devices}")


@dataclass(frozen=True)
class ModuleWeights:
    """What QKVWeights and MLPWeights share: their projections, by name, in order."""

    variant: ClassVar[str] = "lora"

    def projections(self) -> dict[str, LoRAWeights]:
        raise NotImplementedError

    def trainable(self) -> dict[str, Tensor]:
        """A and B of every projection, by name: A_q, B_q, ..."""
        return {f"{t}_{n}": getattr(w, t) for n, w in self.projections().items() for t in "AB"}

    def requires_grad_(self, flag: bool = True) -> ModuleWeights:
        for t in self.trainable().values():
            t.requires_grad_(flag)
        return self

    @property
    def first(self) -> LoRAWeights:
        return next(iter(self.projections().values()))

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def dtype(self) -> torch.dtype:
        return self.first.dtype

    @property
    def device(self) -> torch.device:
        return self.first.device

    def check_input(self, x: Tensor) -> None:
        """Raise unless x is (..., in) in the module's dtype, on its device."""
        self.first.check_input(x)


@dataclass(frozen=True)
class QKVWeights(ModuleWeights):
    """q, k and v projections of one input x (..., in): each (out_i, in), rank and scale its
    own (grouped-query attention's k and v are narrower than q)."""

    q: LoRAWeights
    k: LoRAWeights
    v: LoRAWeights

    def __post_init__(self) -> None:
        named = self.projections()
        for name, w in named.items():
            if not isinstance(w, LoRAWeights):
                raise TypeError(f"{name} must be LoRAWeights, got {type(w).__name__}")
        ins = {n: w.in_features for n, w in named.items()}
        if len(set(ins.values())) > 1:
            raise ValueError(f"q, k and v must read one x: their in_features differ, {ins}")
        _one_place(named)

    def projections(self) -> dict[str, LoRAWeights]:
        return {"q": self.q, "k": self.k, "v": self.v}


@dataclass(frozen=True)
class MLPWeights(ModuleWeights):
    """A gated MLP: y = down(act(gate(x)) * up(x)); gate and up (inter, in), down (out, inter),
    each with its adapter. act is "silu" (Llama's SwiGLU)."""

    gate: LoRAWeights
    up: LoRAWeights
    down: LoRAWeights
    act: str = "silu"

    def __post_init__(self) -> None:
        named = self.projections()
        for name, w in named.items():
            if not isinstance(w, LoRAWeights):
                raise TypeError(f"{name} must be LoRAWeights, got {type(w).__name__}")
        g, u, d = self.gate, self.up, self.down
        if (g.in_features, g.out_features) != (u.in_features, u.out_features):
            raise ValueError(
                f"gate and up must both map in -> inter: gate {g.in_features}->{g.out_features}, "
                f"up {u.in_features}->{u.out_features}"
            )
        if d.in_features != g.out_features:
            raise ValueError(
                f"down must read gate's output: down takes {d.in_features}, gate gives "
                f"{g.out_features}"
            )
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        _one_place(named)

    def projections(self) -> dict[str, LoRAWeights]:
        return {"gate": self.gate, "up": self.up, "down": self.down}
