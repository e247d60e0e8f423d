"""The multi-adapter bench's cases: one layer serving n adapters in a batch whose per-token
adapter index follows a distribution; what each case times (our multi-adapter impls, PEFT's
mixed batch, and single-adapter impls on the same shape as the reference of what mixing
costs) and how each variant's work is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.harness.cases import DTYPES, SHAPES, Keyed
from bench.harness.rounds import Budget
from lora_kernels import (
    DISTRIBUTIONS,
    IMPLS,
    MULTI_IMPLS,
    LoRAWeights,
    MultiLoRAWeights,
    random_index,
)

SINGLE = "single:"  # prefix of a single-adapter reference variant, e.g. "single:addmm"
MIXED_RANKS = (4, 8, 16)  # "mixed": adapters take these ranks in turn (r_max 16)


@dataclass(frozen=True)
class MultiCase(Keyed):
    """`adapters` adapters of rank `ranks` ("8", or "mixed") on `shape`, serving a batch of
    `tokens` tokens whose adapter index follows `distribution`."""

    shape: str
    tokens: int
    adapters: int
    distribution: str
    ranks: str
    dtype: str
    device: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}")
        if self.ranks != "mixed" and not self.ranks.isdigit():
            raise ValueError(f"ranks must be 'mixed' or a rank, got {self.ranks!r}")

    @property
    def key(self) -> str:
        """The case without its device: how runs of two devices are matched."""
        return (f"{self.shape} T={self.tokens} n={self.adapters} {self.distribution} "
                f"r={self.ranks} {self.dtype}")  # fmt: skip

    @property
    def rank_list(self) -> tuple[int, ...]:
        if self.ranks == "mixed":
            return tuple(MIXED_RANKS[i % len(MIXED_RANKS)] for i in range(self.adapters))
        return (int(self.ranks),) * self.adapters

    @property
    def r_max(self) -> int:
        return max(self.rank_list)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def single(self) -> MultiCase:
        """The case of the single-adapter references: one adapter of rank r_max, all tokens."""
        return MultiCase(self.shape, self.tokens, 1, "identical", str(self.r_max), self.dtype,
                         self.device)  # fmt: skip


@dataclass(frozen=True)
class MultiProfile:
    """The multi-adapter cases of a bench profile, (tokens, adapters, distribution, ranks)
    on one shape; which multi-adapter impls and single-adapter references run; and the
    paired rounds' budget."""

    shape: str
    grid: tuple[tuple[int, int, str, str], ...]
    impls: tuple[str, ...] | None  # None: every multi-adapter impl that runs on the device
    singles: tuple[str, ...]  # single-adapter impls timed as the reference
    budget: Budget


FULL_GRID = tuple(
    (t, n, d, "8")
    for t in (16, 128, 512, 2048)
    for n in (1, 4, 16, 64)
    for d in (DISTRIBUTIONS[:1] if n == 1 else DISTRIBUTIONS)
) + tuple(
    (t, n, d, "mixed") for t in (16, 512, 2048) for n in (16, 64) for d in ("uniform", "zipf")
)

# The anchor: 1024² (GPT-2 medium's attention output), r=8.
MULTI_PROFILES: dict[str, MultiProfile] = {
    "tiny": MultiProfile("gpt2-medium.c_proj", ((256, 4, "uniform", "mixed"),), ("segments",),
                         ("addmm",), Budget(0.05, 3, 5, target=0.05)),
    # Decode (16 sequences of one token, 16 adapters of mixed ranks) and the prefill target
    # (64 adapters at T=2048, uniform); the rest of the grid runs in full.
    "quick": MultiProfile(
        "gpt2-medium.c_proj",
        ((16, 16, "uniform", "mixed"), (2048, 64, "uniform", "8")),
        None, ("addmm", "expand_first"), Budget(0.6, 7, 41),
    ),
    "full": MultiProfile("gpt2-medium.c_proj", FULL_GRID, None,
                         ("two_step", "addmm", "expand_first", "triton_fused", "cuda_graph"),
                         Budget(1.0, 9, 61)),
}  # fmt: skip
MULTI_DTYPES = {"cpu": "fp32", "cuda": "bf16"}


@dataclass(frozen=True)
class MultiJob:
    """One variant (a multi-adapter impl, or a single-adapter reference) on one case."""

    case: MultiCase
    variant: str

    def __str__(self) -> str:
        return f"{self.variant} {self.case}"


def variants(device: str, dtype: torch.dtype, impls: tuple[str, ...] | None) -> list[str]:
    """The multi-adapter impls that run on device and dtype (those in `impls` when given),
    ours then the peer."""
    return [
        name for name, impl in MULTI_IMPLS.items()
        if (impls is None or name in impls) and not impl.unavailable_reason(device, dtype, "infer")
    ]  # fmt: skip


def multi_jobs(profile: str, devices: list[str]) -> list[MultiJob]:
    """Every job of the profile: each case's multi-adapter variants, then, once per (tokens,
    r_max), the single-adapter references that run on the device."""
    spec = MULTI_PROFILES[profile]
    jobs: list[MultiJob] = []
    for device in devices:
        dtype = MULTI_DTYPES[device]
        singles: dict[MultiCase, None] = {}
        for tokens, adapters, dist, ranks in spec.grid:
            case = MultiCase(spec.shape, tokens, adapters, dist, ranks, dtype, device)
            jobs += [MultiJob(case, v) for v in variants(device, DTYPES[dtype], spec.impls)]
            singles[case.single()] = None
        for case in singles:
            jobs += [
                MultiJob(case, SINGLE + name) for name in spec.singles
                if not IMPLS[name].unavailable_reason(device, DTYPES[dtype], "infer")
            ]  # fmt: skip
    return jobs


@dataclass
class Batch:
    """A case's weights, input x (T, in), or (sequences, L, in) for one adapter per sequence,
    and checked index (T,)."""

    weights: MultiLoRAWeights
    x: Tensor
    index: Tensor

    @classmethod
    def of(cls, case: MultiCase) -> Batch:
        shape = SHAPES[case.shape]
        w = MultiLoRAWeights.random(shape.in_features, shape.out_features, case.rank_list,
                                    bias=shape.bias, dtype=case.torch_dtype,
                                    device=case.device)  # fmt: skip
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(case.tokens, shape.in_features, generator=gen)
        x = x.to(device=case.device, dtype=case.torch_dtype)
        index = random_index(case.distribution, case.tokens, case.adapters, seed=2,
                             device=case.device)  # fmt: skip
        seqs = min(case.adapters, case.tokens)  # per_sequence's default
        if case.distribution == "per_sequence" and case.tokens % seqs == 0:
            x = x.view(seqs, case.tokens // seqs, -1)  # (sequences, L, in): PEFT's layout
        return cls(w, x, w.check_index(index, x))

    def single_weights(self) -> LoRAWeights:
        """Adapter 0 as a single adapter: the single-adapter references' weights."""
        return self.weights.adapter(0)


Work = Callable[[], Tensor]


def build_work(variant: str, batch: Batch) -> tuple[Work, Work]:
    """(work, base_work) of a variant on the batch: op(x, index) or a single-adapter op(x),
    and the base GEMM x Wᵀ + b on the same tensors."""
    w, x, index = batch.weights, batch.x, batch.index
    if variant.startswith(SINGLE):
        op = IMPLS[variant.removeprefix(SINGLE)].build(batch.single_weights())
        work = lambda: op(x)  # noqa: E731
    else:
        multi_op = MULTI_IMPLS[variant].build(w)
        work = lambda: multi_op(x, index)  # noqa: E731
    return work, lambda: F.linear(x, w.W, w.b)
