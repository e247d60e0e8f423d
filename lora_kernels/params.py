"""Parameter counts: measured from a module, and the closed form r·(in + out)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ParamCount:
    """Trainable and total parameter counts of a module."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """Trainable share of the total, in [0, 1]."""
        return self.trainable / self.total if self.total else 0.0


def count_parameters(module: nn.Module) -> ParamCount:
    """Count the module's parameters, and those with requires_grad."""
    params = list(module.parameters())
    return ParamCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def lora_trainable(in_features: int, out_features: int, rank: int) -> int:
    """Closed form for the adapter's trainable parameters: A (r, in) plus B (out, r)."""
    return rank * (in_features + out_features)


def linear_total(in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
    """Closed form for all parameters of a LoRALinear: W, b and the adapter."""
    return (
        in_features * out_features
        + (out_features if bias else 0)
        + lora_trainable(in_features, out_features, rank)
    )
