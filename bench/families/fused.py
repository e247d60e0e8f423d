"""Whole modules with LoRA on each projection (attention's q, k and v from one x; a SwiGLU
MLP): each module-level impl's training step and forward timed in pairs with the frozen
module's, with the bytes a step keeps for backward and its peak."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.families.models import MODEL_DTYPES, MODELS
from bench.harness.cases import DTYPES, Keyed
from bench.harness.rounds import Budget
from lora_kernels import LoRAWeights
from lora_kernels.fused import FUSED_IMPLS, MLPWeights, ModuleWeights, QKVWeights

PROJECTIONS = {"qkv": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


@dataclass(frozen=True)
class FusedCase(Keyed):
    """The `module` ("qkv" or "mlp") of a block of `model`, at `tokens` tokens, rank `rank` on
    every projection."""

    module: str
    model: str
    tokens: int
    rank: int
    dtype: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.model} {self.module} T={self.tokens} r={self.rank} {self.dtype}"

    def weights(self) -> ModuleWeights:
        """Seeded random weights of the module's shapes (B non-zero), A and B requiring grad."""
        linears = MODELS[self.model].linears
        prefix = "self_attn" if self.module == "qkv" else "mlp"
        projs = []
        for i, name in enumerate(PROJECTIONS[self.module]):
            s = linears[f"{prefix}.{name}"]
            projs.append(LoRAWeights.random(s.in_features, s.out_features, self.rank,
                                            bias=s.bias, seed=11 + i, dtype=DTYPES[self.dtype],
                                            device=self.device).requires_grad_())  # fmt: skip
        a, b, c = projs
        return QKVWeights(a, b, c) if self.module == "qkv" else MLPWeights(a, b, c)

    def input(self, train: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.tokens)
        x = torch.randn(self.tokens, MODELS[self.model].hidden, generator=gen)
        return x.to(device=self.device, dtype=DTYPES[self.dtype]).requires_grad_(train)


@dataclass(frozen=True)
class FusedJob:
    case: FusedCase
    impl: str
    mode: str

    def __str__(self) -> str:
        return f"{self.impl} {self.mode} {self.case}"


@dataclass(frozen=True)
class FusedProfile:
    """A profile's model and token counts (on a CPU, and on CUDA), rank, modes and rounds."""

    model: str
    tokens: tuple[int, ...]
    rank: int
    modes: tuple[str, ...]
    budget: Budget
    cuda_model: str = "llama3-8b-2blocks"  # Llama-3-8B's real sizes
    cuda_tokens: tuple[int, ...] = ()


FUSED_PROFILES: dict[str, FusedProfile] = {
    "tiny": FusedProfile("llama-tiny", (64,), 8, ("train",), Budget(0.2, 3, 5)),
    # The training step at a prefill of 512 tokens, where the targets are set; decode and
    # the forward run in full.
    "quick": FusedProfile("llama-cpu", (512,), 16, ("train",), Budget(1.0, 5, 40),
                          cuda_tokens=(2048,)),
    "full": FusedProfile("llama-cpu", (16, 512), 16, ("train", "infer"), Budget(4.0, 9, 100),
                         cuda_tokens=(1, 2048, 8192)),
}  # fmt: skip


def fused_jobs(profile: str, devices: list[str]) -> list[FusedJob]:
    spec = FUSED_PROFILES[profile]
    jobs = []
    for device in devices:
        model, tokens = (spec.cuda_model, spec.cuda_tokens) if device == "cuda" else (
            spec.model, spec.tokens)  # fmt: skip
        jobs += [
            FusedJob(FusedCase(module, model, t, spec.rank, MODEL_DTYPES[device], device),
                     name, mode)
            for t in tokens for module in ("qkv", "mlp") for mode in spec.modes
            for name, impl in FUSED_IMPLS.items() if impl.module == module
        ]  # fmt: skip
    return jobs
