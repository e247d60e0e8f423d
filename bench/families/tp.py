"""Tensor-parallel LoRA: each split of a column-parallel (the MLP's up projection) and a
row-parallel layer (its down projection), adapter replicated, sharded or fully sharded, timed
in pairs with the tensor-parallel frozen layer of the same split, in the same processes; and
the same splits serving a multi-adapter batch (each token its adapter, forward only). On a
CPU the ranks are gloo processes on one machine, sharing its cores and memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.harness.cases import DTYPES, Keyed
from bench.harness.rounds import Budget
from lora_kernels import LoRAWeights
from lora_kernels.multi import MultiLoRAWeights, random_index
from lora_kernels.tp import ADAPTERS, TPSplit

# Layers by name: (in, out, how the base splits). llama-cpu's MLP is Llama-3's at a CPU's
# scale (bench.families.models); llama3-8b's is the real one, for GPUs.
TP_LAYERS: dict[str, tuple[int, int, str]] = {
    "tiny.up_proj": (64, 96, "column"),
    "tiny.down_proj": (96, 64, "row"),
    "llama-cpu.up_proj": (1024, 3584, "column"),
    "llama-cpu.down_proj": (3584, 1024, "row"),
    "llama3-8b.up_proj": (4096, 14336, "column"),
    "llama3-8b.down_proj": (14336, 4096, "row"),
}
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}
TP_DTYPES = {"cpu": "fp32", "cuda": "bf16"}


@dataclass(frozen=True)
class TPCase(Keyed):
    """`layer` split over `world` ranks with its adapter `adapter`, at `tokens` tokens; with
    `adapters` n > 0, a batch of n adapters of rank `rank`, each token's drawn uniformly."""

    layer: str
    adapter: str
    world: int
    tokens: int
    rank: int
    dtype: str
    device: str
    adapters: int = 0

    @property
    def key(self) -> str:
        multi = f" n={self.adapters}" if self.adapters else ""
        return (f"{self.layer} {self.split.kind}/{self.adapter} tp={self.world} T={self.tokens} "
                f"r={self.rank}{multi} {self.dtype}")  # fmt: skip

    @property
    def split(self) -> TPSplit:
        return TPSplit(TP_LAYERS[self.layer][2], self.adapter, self.world)

    @property
    def backend(self) -> str:
        return BACKENDS[self.device]

    @property
    def in_features(self) -> int:
        return TP_LAYERS[self.layer][0]

    @property
    def out_features(self) -> int:
        return TP_LAYERS[self.layer][1]

    def weights(self) -> LoRAWeights:
        """The whole layer, seeded (B non-zero): every rank builds it and keeps its shard."""
        return LoRAWeights.random(self.in_features, self.out_features, self.rank, bias=False,
                                  seed=3, dtype=DTYPES[self.dtype], device=self.device)  # fmt: skip

    def multi_weights(self) -> MultiLoRAWeights:
        """The whole layer and its `adapters` adapters, seeded (B non-zero)."""
        ranks = [self.rank] * self.adapters
        dtype = DTYPES[self.dtype]
        return MultiLoRAWeights.random(self.in_features, self.out_features, ranks, bias=False,
                                       seed=3, dtype=dtype, device=self.device)  # fmt: skip

    def index(self) -> torch.Tensor:
        """Each token's adapter (T,), drawn uniformly, seeded: the same on every rank."""
        return random_index("uniform", self.tokens, self.adapters, seed=self.tokens,
                            device=self.device)  # fmt: skip

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole x (T, in) and upstream gradient (T, out), seeded."""
        gen = torch.Generator().manual_seed(self.tokens)
        x = torch.randn(self.tokens, self.in_features, generator=gen)
        dy = torch.randn(self.tokens, self.out_features, generator=gen)
        dtype = DTYPES[self.dtype]
        return x.to(self.device, dtype), dy.to(self.device, dtype)


@dataclass(frozen=True)
class TPJob:
    case: TPCase
    mode: str

    def __str__(self) -> str:
        return f"{self.mode} {self.case}"


@dataclass(frozen=True)
class TPProfile:
    """A profile's layers, world size, token counts, rank and modes, on a CPU and on CUDA;
    with `adapters` n > 0, also each split's forward on a batch of n adapters."""

    layers: tuple[str, ...]
    world: int
    tokens: tuple[int, ...]
    rank: int
    modes: tuple[str, ...]
    budget: Budget
    cuda_layers: tuple[str, ...] = ("llama3-8b.up_proj", "llama3-8b.down_proj")
    cuda_tokens: tuple[int, ...] = ()
    adapters: int = 0


LLAMA_CPU = ("llama-cpu.up_proj", "llama-cpu.down_proj")
TP_PROFILES: dict[str, TPProfile] = {
    "tiny": TPProfile(("tiny.up_proj", "tiny.down_proj"), 2, (32,), 8, ("train",),
                      Budget(0.05, 3, 5, target=0.05), adapters=3),
    # Not in the quick profile: its five minutes are spent (bench/families/budget.py), and
    # two processes on a 2-core CPU measure gloo over shared memory, not a link; the full
    # profile's run is committed as results/reference/epyc-32m/full-tp.md.
    "quick": TPProfile((), 2, (), 16, ("train",), Budget(1.0, 5, 40), cuda_tokens=(2048,)),
    "full": TPProfile(LLAMA_CPU, 2, (16, 512), 16, ("train", "infer"), Budget(2.0, 9, 100),
                      cuda_tokens=(16, 2048), adapters=4),
}  # fmt: skip


def tp_jobs(profile: str, devices: list[str]) -> list[TPJob]:
    """Every (layer, adapter, tokens, mode) of the profile on each device, then each
    (layer, adapter, tokens) serving a multi-adapter batch ("infer")."""
    spec = TP_PROFILES[profile]
    jobs = []
    for device in devices:
        layers, tokens = (spec.cuda_layers, spec.cuda_tokens) if device == "cuda" else (
            spec.layers, spec.tokens)  # fmt: skip
        modes = [(m, 0) for m in spec.modes] + ([("infer", spec.adapters)] if spec.adapters else [])
        jobs += [
            TPJob(TPCase(layer, adapter, spec.world, t, spec.rank, TP_DTYPES[device], device,
                         n), mode)
            for t in tokens for mode, n in modes for layer in layers for adapter in ADAPTERS
        ]  # fmt: skip
    return jobs
