"""LoRAWeights: the tensors of one adapted linear layer, validated in one place."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Self

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def check_rank(rank: object, in_features: int, out_features: int) -> int:
    """Return `rank` if it is an int in [1, min(in_features, out_features)]."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__} {rank!r}")
    limit = min(in_features, out_features)
    if not 1 <= rank <= limit:
        raise ValueError(
            f"rank must be in [1, min(in_features, out_features)] = [1, {limit}], got {rank}"
        )
    return rank


def scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """s = alpha / r, or alpha / sqrt(r) with rsLoRA; alpha must be finite and > 0."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__} {alpha!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    return alpha / (math.sqrt(rank) if use_rslora else rank)


@torch.no_grad()
def merge_stays_finite(W: Tensor, A: Tensor, B: Tensor, scale: float) -> bool:
    """True when W + s·B A (contracting r) is surely finite in W's dtype, from a bound that
    reads W once: every element is at most max|W| + |s|·r·max|B|·max|A|, held against half
    the dtype's largest value. False (a NaN or inf among them too) leaves a caller to the
    exact check. A linear's A is (r, in), a convolution's (r, in, kh, kw)."""
    if W.numel() == 0:
        return True
    adapter = abs(scale) * A.shape[0] * _abs_max(A) * _abs_max(B)
    return bool(_abs_max(W) + adapter < torch.finfo(W.dtype).max / 2)


def _abs_max(t: Tensor) -> Tensor:
    """max |t| as an fp32 scalar (NaN if t holds one; 0 when empty), without a |t| copy."""
    if t.numel() == 0:
        return torch.zeros((), device=t.device)
    lo, hi = torch.aminmax(t.detach())
    return torch.maximum(-lo, hi).float()


def all_finite(t: Tensor) -> bool:
    """True when t holds no NaN or inf. min and max propagate NaN and show ±inf, and unlike
    isfinite(t).all() they need no tensor-sized temporaries."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a supported dtype: fp32, fp16 or bf16."""
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def check_dtype(dtype: object) -> None:
    """TypeError unless dtype is one of SUPPORTED_DTYPES."""
    if dtype not in SUPPORTED_DTYPES:
        allowed = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"dtype must be one of {allowed}, got {dtype}")


def check_tensor(name: str, t: object) -> Tensor:
    """t, if it is a torch.Tensor of a supported dtype; TypeError naming it otherwise."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        allowed = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"{name} has dtype {t.dtype}; allowed: {allowed}")
    return t


def seeded_uniform(seed: int, dtype: torch.dtype, device: str | torch.device
                   ) -> Callable[[tuple[int, ...], float], Tensor]:  # fmt: skip
    """uniform(shape, bound): tensors uniform in ±bound, drawn in fp32 one after the other
    from one generator seeded `seed`, then cast to dtype on device (dtype checked here)."""
    check_dtype(dtype)
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape: tuple[int, ...], bound: float) -> Tensor:
        t = (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
        return t.to(device=device, dtype=dtype)

    return uniform


def _check_shape(name: str, t: Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {meaning} = {expected}, got {tuple(t.shape)}")


class LayerTensors:
    """What LoRAWeights and MultiLoRAWeights share: a base layer W (out, in), b, and adapter
    tensors A and B, all of one dtype on one device. `variant` names the function they define
    ("lora", or "dora" for DoRAWeights): an impl builds only on weights of its own variant."""

    variant: ClassVar[str] = "lora"
    W: Tensor
    b: Tensor | None
    A: Tensor
    B: Tensor

    def _named(self) -> dict[str, Tensor | None]:
        return {"W": self.W, "b": self.b, "A": self.A, "B": self.B}

    def trainable(self) -> dict[str, Tensor]:
        """The tensors that train, by name: A and B."""
        return {"A": self.A, "B": self.B}

    def copy(self) -> Self:
        """The same values in fresh memory, each tensor with the same requires_grad."""
        fresh = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            t = getattr(self, f.name)
            if isinstance(t, Tensor):
                fresh[f.name] = t.detach().clone().requires_grad_(t.requires_grad)
        return dataclasses.replace(self, **fresh)  # type: ignore[type-var]

    def requires_grad_(self, flag: bool = True) -> Self:
        """Make the trainable tensors require grad, in place; W and b stay frozen."""
        for t in self.trainable().values():
            t.requires_grad_(flag)
        return self

    def _check_types(self) -> None:
        """W, A, B and b (unless None) are tensors of a supported dtype."""
        for name, t in self._named().items():
            if name != "b" or t is not None:
                check_tensor(name, t)

    def _check_one_place(self) -> None:
        """Every tensor (W, b, A, B, and DoRA's m) shares one dtype and one device."""
        tensors = {n: t for n, t in self._named().items() if t is not None}
        names = ", ".join(self._named())
        dtypes = {n: t.dtype for n, t in tensors.items()}
        if len(set(dtypes.values())) > 1:
            raise TypeError(f"{names} must share one dtype, got {dtypes}")
        devices = {n: t.device for n, t in tensors.items()}
        if len(set(devices.values())) > 1:
            raise ValueError(f"{names} must be on one device, got {devices}")

    @property
    def in_features(self) -> int:
        return self.W.shape[1]

    @property
    def out_features(self) -> int:
        return self.W.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.W.dtype

    @property
    def device(self) -> torch.device:
        return self.W.device

    def output_shape(self, x: Tensor) -> tuple[int, ...]:
        """The shape of the layer's output for x: (..., out)."""
        return (*x.shape[:-1], self.out_features)

    def check_input(self, x: Tensor) -> None:
        """Raise unless x is (..., in) with the weights' dtype and device."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape (..., in) with in = {self.in_features}, got {tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"x has dtype {x.dtype}; the weights have {self.dtype}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device}; the weights are on {self.device}")

    def check_finite(self) -> None:
        """Raise ValueError naming the first of W, b, A, B that holds NaN or inf."""
        for name, t in self._named().items():
            if t is not None and not all_finite(t):
                raise ValueError(f"{name} holds non-finite values (NaN or inf); all must be finite")


@dataclass(frozen=True)
class LoRAWeights(LayerTensors):
    """W (out, in), b (out,) or None, A (r, in), B (out, r) and the scale s.

    Computes y = x Wᵀ + b + s · (x Aᵀ) Bᵀ. All tensors share one dtype and one device.
    """

    W: Tensor
    b: Tensor | None
    A: Tensor
    B: Tensor
    scale: float

    def __post_init__(self) -> None:
        self._check_types()
        if self.W.dim() != 2:
            raise ValueError(f"W must be 2-D (out, in), got shape {tuple(self.W.shape)}")
        out_f, in_f = self.W.shape
        if self.A.dim() != 2:
            raise ValueError(f"A must be 2-D (r, in), got shape {tuple(self.A.shape)}")
        rank = check_rank(self.A.shape[0], in_f, out_f)
        _check_shape("A", self.A, (rank, in_f), "(r, in)")
        _check_shape("B", self.B, (out_f, rank), "(out, r)")
        if self.b is not None:
            _check_shape("b", self.b, (out_f,), "(out,)")
        self._check_one_place()
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise TypeError(f"scale must be a number, got {type(self.scale).__name__}")
        if not math.isfinite(self.scale):
            raise ValueError(f"scale must be finite, got {self.scale}")

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def merged_weight(self, sign: float = 1.0) -> Tensor:
        """W + sign · s · B A, computed in fp32 and cast to W's dtype; (out, in).

        Raises ValueError when the result is not finite, so a caller can check before writing.
        """
        with torch.no_grad():
            merged = torch.addmm(
                self.W.float(), self.B.float(), self.A.float(), alpha=sign * self.scale
            )
            merged = merged.to(self.W.dtype)
            if not all_finite(merged):
                raise ValueError(
                    "merging gives non-finite weights (NaN or inf in A, B or W, or overflow in "
                    f"{self.W.dtype}); W, A and B must be finite and the sum representable"
                )
        return merged

    @classmethod
    def random(
        cls,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        alpha: float = 16.0,
        use_rslora: bool = False,
        bias: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> LoRAWeights:
        """Seeded random weights; B is non-zero so the adapter term is exercised.

        W, b and A are uniform in ±1/sqrt(in) (nn.Linear's range); B is uniform in ±1/sqrt(r),
        so the adapter's output is of the same order as the base output.
        """
        rank = check_rank(rank, in_features, out_features)
        scale = scaling(alpha, rank, use_rslora)
        uniform = seeded_uniform(seed, dtype, device)
        bound = 1 / math.sqrt(in_features)
        return cls(
            W=uniform((out_features, in_features), bound),
            b=uniform((out_features,), bound) if bias else None,
            A=uniform((rank, in_features), bound),
            B=uniform((out_features, rank), 1 / math.sqrt(rank)) / scale,
            scale=scale,
        )
