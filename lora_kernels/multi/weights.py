"""MultiLoRAWeights: one frozen linear layer and a stack of LoRA adapters, validated in one
place, with the per-token adapter index that picks an adapter for each token."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lora_kernels.weights import (
    LayerTensors,
    LoRAWeights,
    check_dtype,
    check_rank,
    check_tensor,
    scaling,
)

INDEX_DTYPES = (torch.int64, torch.int32)


@dataclass(frozen=True)
class MultiLoRAWeights(LayerTensors):
    """W (out, in), b (out,) or None, A (n, r_max, in), B (n, out, r_max), and per adapter a
    rank r_i <= r_max and a scale s_i.

    Token t with adapter a_t = i computes y_t = x_t Wᵀ + b + s_i · (x_t A_i[:r_i]ᵀ) B_i[:, :r_i]ᵀ;
    a_t = -1 computes the base layer alone. Rows of A_i and columns of B_i past r_i are padding:
    they may hold anything, and every implementation must ignore them.
    """

    W: Tensor
    b: Tensor | None
    A: Tensor
    B: Tensor
    ranks: tuple[int, ...]
    scales: tuple[float, ...]

    def __post_init__(self) -> None:
        self._check_types()
        if self.W.dim() != 2:
            raise ValueError(f"W must be 2-D (out, in), got shape {tuple(self.W.shape)}")
        out_f, in_f = self.W.shape
        if self.A.dim() != 3 or self.A.shape[2] != in_f:
            raise ValueError(
                f"A must be a stack (n, r_max, in) with in = {in_f}, got {tuple(self.A.shape)}"
            )
        n, r_max = self.A.shape[:2]
        if n == 0:
            raise ValueError("the adapter stack is empty: A has shape (0, ...); need n >= 1")
        check_rank(r_max, in_f, out_f)
        if tuple(self.B.shape) != (n, out_f, r_max):
            raise ValueError(
                f"B must have shape (n, out, r_max) = {(n, out_f, r_max)}, got "
                f"{tuple(self.B.shape)}"
            )
        if self.b is not None and tuple(self.b.shape) != (out_f,):
            raise ValueError(f"b must have shape (out,) = {(out_f,)}, got {tuple(self.b.shape)}")
        self._check_one_place()
        self._check_ranks(n, r_max)
        if not isinstance(self.scales, tuple) or len(self.scales) != n:
            raise ValueError(f"scales must be a tuple of one scale per adapter ({n})")
        for i, s in enumerate(self.scales):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise ValueError(f"scales[{i}] must be a finite number, got {s!r}")

    def _check_ranks(self, n: int, r_max: int) -> None:
        if not isinstance(self.ranks, tuple) or len(self.ranks) != n:
            raise ValueError(f"ranks must be a tuple of one rank per adapter ({n}), got "
                             f"{self.ranks!r}")  # fmt: skip
        for i, r in enumerate(self.ranks):
            if isinstance(r, bool) or not isinstance(r, int):
                raise TypeError(f"ranks[{i}] must be an int, got {type(r).__name__} {r!r}")
            if not 1 <= r <= r_max:
                raise ValueError(
                    f"ranks[{i}] = {r}: an adapter's rank must be in [1, r_max] = [1, {r_max}], "
                    "the stack's width"
                )

    @property
    def adapters(self) -> int:
        return self.A.shape[0]

    @property
    def r_max(self) -> int:
        return self.A.shape[1]

    def adapter(self, i: int) -> LoRAWeights:
        """Adapter i alone as LoRAWeights: A_i[:r_i] (r_i, in), B_i[:, :r_i] (out, r_i), views."""
        r = self.ranks[i]
        return LoRAWeights(self.W, self.b, self.A[i, :r], self.B[i, :, :r], self.scales[i])

    def padded(self) -> tuple[Tensor, Tensor]:
        """(A, B) with the padding past each rank set to zero: new tensors when any adapter is
        narrower than r_max, else the stacks themselves. Detached."""
        A, B = self.A.detach(), self.B.detach()
        if all(r == self.r_max for r in self.ranks):
            return A, B
        ranks = torch.tensor(self.ranks, device=self.device)
        keep = torch.arange(self.r_max, device=self.device) < ranks[:, None]  # (n, r_max)
        zero = A.new_zeros(())  # where, not a product: padding may hold inf or nan
        return A.where(keep[:, :, None], zero), B.where(keep[:, None, :], zero)

    def scale_tensor(self) -> Tensor:
        """The scales as a tensor (n,) of the weights' dtype and device."""
        return torch.tensor(self.scales, dtype=self.dtype, device=self.device)

    def check_index(self, index: Tensor, x: Tensor) -> Tensor:
        """The adapter index of x's tokens as an int64 tensor (T,), T = x.numel() / in.

        index must be an int64 or int32 tensor on x's device, of shape x.shape[:-1] or (T,),
        with values in [-1, n): -1 is the base layer alone. Nothing is modified.
        """
        self.check_input(x)
        if not isinstance(index, Tensor):
            raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
        if index.dtype not in INDEX_DTYPES:
            raise TypeError(f"index must be an integer tensor (int64 or int32), got {index.dtype}")
        tokens = x.numel() // self.in_features
        shapes = list(dict.fromkeys([tuple(x.shape[:-1]), (tokens,)]))
        if tuple(index.shape) not in shapes:
            allowed = " or ".join(str(s) for s in shapes)
            raise ValueError(
                f"index has shape {tuple(index.shape)}: it needs one adapter id per token, "
                f"shape {allowed}"
            )
        if index.device != x.device:
            raise ValueError(f"index is on {index.device}; x is on {x.device}")
        flat = index.reshape(tokens).to(torch.int64)
        if tokens:
            lo, hi = (int(v) for v in torch.aminmax(flat))
            if lo < -1 or hi >= self.adapters:
                bad = lo if lo < -1 else hi
                raise ValueError(
                    f"index holds {bad}: adapter ids must be in [-1, {self.adapters - 1}] "
                    f"(-1: base layer only; {self.adapters} adapters)"
                )
        return flat

    @classmethod
    def stack(
        cls,
        W: Tensor,
        b: Tensor | None,
        adapters: Sequence[tuple[Tensor, Tensor, float]],
        r_max: int | None = None,
    ) -> MultiLoRAWeights:
        """Stack adapters (A_i (r_i, in), B_i (out, r_i), s_i) of the base layer W, b into new
        (n, r_max, in) and (n, out, r_max) tensors, zero-padded past each rank; r_max is the
        largest rank unless given (at least that, as a server sized for bigger adapters)."""
        if len(adapters) == 0:
            raise ValueError("no adapters to stack; need at least one (A, B, scale)")
        W = check_tensor("W", W)
        if W.dim() != 2:
            raise ValueError(f"W must be 2-D (out, in), got shape {tuple(W.shape)}")
        out_f, in_f = W.shape
        for i, (A, B, _) in enumerate(adapters):
            check_tensor(f"adapter {i}: A", A)
            check_tensor(f"adapter {i}: B", B)
            if A.dim() != 2 or B.dim() != 2 or A.shape[1] != in_f or B.shape[0] != out_f \
                    or A.shape[0] != B.shape[1]:  # fmt: skip
                raise ValueError(
                    f"adapter {i} has A {tuple(A.shape)} and B {tuple(B.shape)}; every adapter "
                    f"must fit the base layer (out, in) = {(out_f, in_f)}: A (r, {in_f}), "
                    f"B ({out_f}, r)"
                )
        ranks = tuple(int(A.shape[0]) for A, _, _ in adapters)
        if r_max is None:
            r_max = max(ranks)
        elif isinstance(r_max, bool) or not isinstance(r_max, int) or r_max < max(ranks):
            raise ValueError(f"r_max must be an int >= the largest rank {max(ranks)}, "
                             f"got {r_max!r}")  # fmt: skip
        A_stack = torch.zeros(len(adapters), r_max, in_f, dtype=W.dtype, device=W.device)
        B_stack = torch.zeros(len(adapters), out_f, r_max, dtype=W.dtype, device=W.device)
        for i, (A, B, _) in enumerate(adapters):
            if A.dtype != W.dtype or A.device != W.device or B.dtype != W.dtype \
                    or B.device != W.device:  # fmt: skip
                raise TypeError(
                    f"adapter {i} is {A.dtype}/{B.dtype} on {A.device}/{B.device}; the base "
                    f"layer is {W.dtype} on {W.device}: they must match"
                )
            A_stack[i, : ranks[i]] = A.detach()
            B_stack[i, :, : ranks[i]] = B.detach()
        scales = tuple(float(s) for _, _, s in adapters)
        return cls(W, b, A_stack, B_stack, ranks, scales)

    @classmethod
    def random(
        cls,
        in_features: int,
        out_features: int,
        ranks: Sequence[int],
        *,
        alpha: float = 16.0,
        use_rslora: bool = False,
        bias: bool = True,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> MultiLoRAWeights:
        """Seeded random weights of len(ranks) adapters. W, b and A are uniform in ±1/sqrt(in)
        (nn.Linear's range) and s_i·B_i in ±1/sqrt(r_i), as LoRAWeights.random draws them. The
        padding past each rank holds random values too, so an implementation that reads it
        computes the wrong function and shows it."""
        if isinstance(ranks, int) or not ranks:
            raise ValueError(f"ranks must be a non-empty sequence of ints, got {ranks!r}")
        ranks = tuple(check_rank(r, in_features, out_features) for r in ranks)
        check_dtype(dtype)
        gen = torch.Generator().manual_seed(seed)

        def uniform(shape: tuple[int, ...], bound: float | Tensor) -> Tensor:
            return (torch.rand(shape, generator=gen) * 2 - 1) * bound

        n, r_max, bound = len(ranks), max(ranks), 1 / math.sqrt(in_features)
        scales = tuple(scaling(alpha, r, use_rslora) for r in ranks)
        spread = torch.tensor([1 / (math.sqrt(r) * s) for r, s in zip(ranks, scales, strict=True)])
        W, b, A, B = (
            uniform((out_features, in_features), bound),
            uniform((out_features,), bound) if bias else None,
            uniform((n, r_max, in_features), bound),
            uniform((n, out_features, r_max), spread[:, None, None]),
        )
        W, A, B = (t.to(device=device, dtype=dtype) for t in (W, A, B))
        b = None if b is None else b.to(device=device, dtype=dtype)
        return cls(W, b, A, B, ranks, scales)
