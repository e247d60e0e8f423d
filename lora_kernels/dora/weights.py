"""DoRAWeights: a LoRA layer's tensors plus DoRA's magnitude vector m, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from lora_kernels.dora.norm import magnitude_scale, sq_norms
from lora_kernels.weights import LayerTensors, LoRAWeights, all_finite, check_tensor


class MagnitudeTensors(LayerTensors):
    """What DoRA adds to a layer's tensors, linear or convolution: a magnitude m (out,) that
    trains with A and B, and whether the norm is a constant in backward (detach_norm)."""

    m: Tensor
    detach_norm: bool

    def _check_magnitude(self) -> None:
        """m is a finite (out,) tensor beside the others; detach_norm a bool."""
        check_tensor("m", self.m)
        if tuple(self.m.shape) != (self.out_features,):
            raise ValueError(
                f"m must have shape (out,) = ({self.out_features},), got {tuple(self.m.shape)}"
            )
        self._check_one_place()
        if not isinstance(self.detach_norm, bool):
            raise TypeError(f"detach_norm must be a bool, got {self.detach_norm!r}")
        if self.m.device.type != "meta" and not all_finite(self.m):
            raise ValueError("m holds non-finite values (NaN or inf); the magnitude must be finite")

    def _named(self) -> dict[str, Tensor | None]:
        return {**super()._named(), "m": self.m}

    def trainable(self) -> dict[str, Tensor]:
        """The tensors that train, by name: A, B and m."""
        return {"A": self.A, "B": self.B, "m": self.m}


@dataclass(frozen=True)
class DoRAWeights(MagnitudeTensors):
    """W (out, in), b (out,) or None, A (r, in), B (out, r), the scale s and the magnitude m (out,).

    DoRA (Liu et al. 2024, https://arxiv.org/abs/2402.09353) computes, with V = W + s·B A,
    y = (m / ‖V‖) ⊙ (x Vᵀ) + b, the norm taken per output row, over `in` (PEFT's convention).
    A zero row of V gives that output the bias alone (its factor m / ‖V‖ is taken as 0).
    detach_norm=True treats ‖V‖ as a constant in backward, as the paper suggests (section 4.3)
    and PEFT does; False gives the exact gradient. A, B and m train; W and b are frozen.
    """

    variant: ClassVar[str] = "dora"
    W: Tensor
    b: Tensor | None
    A: Tensor
    B: Tensor
    scale: float
    m: Tensor
    detach_norm: bool = True

    def __post_init__(self) -> None:
        LoRAWeights(self.W, self.b, self.A, self.B, self.scale)  # everything but m
        self._check_magnitude()

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def lora(self) -> LoRAWeights:
        """The same tensors without m: the LoRA layer this DoRA layer decomposes."""
        return LoRAWeights(self.W, self.b, self.A, self.B, self.scale)

    def magnitude_scale(self) -> Tensor:
        """m / ‖W + s·B A‖ per row (out,), fp32, no gradient; formed without the out×in matrix."""
        with torch.no_grad():
            return magnitude_scale(self.m, sq_norms(self.W, self.A, self.B, self.scale))

    def merged_weight(self, c: Tensor | None = None) -> Tensor:
        """(m / ‖V‖) ⊙ V with V = W + s·B A, computed in fp32 and cast to W's dtype; (out, in).
        `c` is magnitude_scale() when the caller has it already.

        Raises ValueError when the result is not finite, so a caller can check before writing.
        """
        with torch.no_grad():
            c = self.magnitude_scale() if c is None else c
            V = torch.addmm(self.W.float(), self.B.float(), self.A.float(), alpha=self.scale)
            merged = V.mul_(c[:, None]).to(self.W.dtype)
            if not all_finite(merged):
                raise ValueError(
                    "merging gives non-finite weights (overflow in "
                    f"{self.W.dtype}); (m / ‖W + s·B A‖) ⊙ (W + s·B A) must be representable"
                )
        return merged

    @classmethod
    def from_lora(
        cls, lora: LoRAWeights, m: Tensor | None = None, *, detach_norm: bool = True
    ) -> DoRAWeights:
        """DoRA on a LoRA layer's tensors (no copies). m defaults to ‖W + s·B A‖ per row, the
        paper's initialisation (‖W‖ while B is zero): the layer then computes the LoRA output."""
        if not isinstance(lora, LoRAWeights):
            raise TypeError(f"lora must be LoRAWeights, got {type(lora).__name__}")
        if m is None:
            with torch.no_grad():
                sq = sq_norms(lora.W, lora.A, lora.B, lora.scale)
                m = sq.clamp_min(0).sqrt().to(lora.W.dtype)
        return cls(lora.W, lora.b, lora.A, lora.B, lora.scale, m, detach_norm)

    @classmethod
    def with_random_m(
        cls, lora: LoRAWeights, seed: int = 0, *, detach_norm: bool = True
    ) -> DoRAWeights:
        """DoRA on lora's tensors with m = ‖W + s·B A‖ per row times a seeded factor in
        [0.5, 1.5): every row is rescaled, none by exactly 1, so a wrong norm or a dropped m
        shows."""
        gen = torch.Generator().manual_seed(seed + 7)
        factor = 0.5 + torch.rand(lora.out_features, generator=gen, dtype=torch.float64)
        norms = cls.from_lora(lora).m.double().cpu()
        m = (norms * factor).to(device=lora.device, dtype=lora.dtype)
        return cls.from_lora(lora, m, detach_norm=detach_norm)

    @classmethod
    def random(
        cls,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        detach_norm: bool = True,
        seed: int = 0,
        **kwargs: object,
    ) -> DoRAWeights:
        """Seeded random weights (LoRAWeights.random's, with the same keywords) and a seeded
        random m (see with_random_m)."""
        lora = LoRAWeights.random(in_features, out_features, rank, seed=seed, **kwargs)  # type: ignore[arg-type]
        return cls.with_random_m(lora, seed, detach_norm=detach_norm)
