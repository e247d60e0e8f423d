"""LoRA on a quantized base (QLoRA): each impl's forward and training step timed in pairs with
the quantized base's own (dequantize, then the GEMM: what bitsandbytes' layer runs on the
CPU), the dense base of the same shape beside them (what dequantization costs), the bytes
autograd keeps for backward, the error of merging into the quantized weight, and a whole
model's training step against PEFT's QLoRA."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.families.models import MODEL_DTYPES
from bench.harness.cases import DTYPES, SHAPES, Keyed
from bench.harness.rounds import Budget
from lora_kernels import LoRAWeights
from lora_kernels.quant import QLoRAWeights

MODES = ("infer", "train")
DENSE = "dense"  # the float base layer of the same shape (not an impl: F.linear on W)
MERGE = "merge"  # the merge-error job
MODEL = "model"  # the whole-model training step: ours against PEFT's QLoRA


@dataclass(frozen=True)
class QuantCase(Keyed):
    """One layer shape at `tokens` tokens and rank `rank`, its base in format `fmt`."""

    shape: str
    tokens: int
    rank: int
    fmt: str
    dtype: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.shape} T={self.tokens} r={self.rank} {self.fmt} {self.dtype}"

    def lora(self) -> LoRAWeights:
        """The float layer (seeded; B non-zero) the quantized one is made from."""
        s = SHAPES[self.shape]
        return LoRAWeights.random(s.in_features, s.out_features, self.rank, bias=s.bias,
                                  seed=7, dtype=DTYPES[self.dtype], device=self.device)  # fmt: skip

    def weights(self) -> tuple[LoRAWeights, QLoRAWeights]:
        w = self.lora()
        return w, QLoRAWeights.quantize(w, self.fmt)

    def input(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.tokens)
        x = torch.randn(self.tokens, SHAPES[self.shape].in_features, generator=gen)
        return x.to(device=self.device, dtype=DTYPES[self.dtype])


@dataclass(frozen=True)
class QuantJob:
    """A timed impl (or DENSE) in `mode`; MERGE: the merge error; MODEL: the model's step."""

    case: QuantCase
    impl: str
    mode: str

    def __str__(self) -> str:
        return f"{self.impl} {self.mode} {self.case}"


@dataclass(frozen=True)
class QuantProfile:
    """A profile's layer case (shape, tokens, rank), the formats per device, those whose
    training step is timed too, the impls timed, the ranks of the merge error, and the model
    of the whole-model step ("" leaves it out) with its base's format, and when each job's
    paired rounds stop."""

    shape: str
    tokens: int
    rank: int
    formats: dict[str, tuple[str, ...]]
    train_formats: tuple[str, ...]
    impls: tuple[str, ...]
    merge_ranks: tuple[int, ...]
    model: str
    model_format: str
    budget: Budget


CUDA_FORMATS = ("nf4", "int8", "fp8")
QUANT_PROFILES: dict[str, QuantProfile] = {
    "tiny": QuantProfile(
        shape="gpt2-medium.c_proj", tokens=64, rank=8,
        formats={"cpu": ("nf4", "int8"), "cuda": ("nf4",)}, train_formats=("nf4",),
        impls=("qlora_lean", "peft_qlora"), merge_ranks=(8,), model="llama-tiny",
        model_format="int8", budget=Budget(0.2, 3, 5),  # its MLP's 96 inputs: no whole 4-bit block
    ),
    # A GQA key projection (4096 -> 1024) at a 512-token prefill, rank 8: the base dominates
    # as in a real model, and it fits the quick budget. The 4096² query projection at rank 16,
    # int8's training step, fp4, more ranks and the other impls run in full.
    "quick": QuantProfile(
        shape="llama3-8b.k_proj", tokens=512, rank=8,
        formats={"cpu": ("nf4", "int8"), "cuda": CUDA_FORMATS}, train_formats=("nf4", "fp8"),
        impls=("qlora_lean", "peft_qlora"), merge_ranks=(8,), model="llama-cpu",
        model_format="nf4", budget=Budget(1.0, 5, 40),
    ),
    "full": QuantProfile(
        shape="llama3-8b.q_proj", tokens=512, rank=16,
        formats={"cpu": ("nf4", "fp4", "int8"), "cuda": CUDA_FORMATS},
        train_formats=("nf4", "fp4", "int8", "fp8"),
        impls=("bnb_base", "qlora_dequant", "qlora_lean", "peft_qlora"),
        merge_ranks=(8, 16, 64, 256), model="llama-cpu", model_format="nf4",
        budget=Budget(4.0, 9, 100),
    ),
}  # fmt: skip


def quant_jobs(profile: str, devices: list[str]) -> list[QuantJob]:
    spec = QUANT_PROFILES[profile]
    jobs = []
    for device in devices:
        dtype = MODEL_DTYPES[device]
        for fmt in spec.formats[device]:
            case = QuantCase(spec.shape, spec.tokens, spec.rank, fmt, dtype, device)
            modes = MODES if fmt in spec.train_formats else ("infer",)
            jobs += [QuantJob(case, impl, mode) for mode in modes
                     for impl in (DENSE, *spec.impls)]  # fmt: skip
            merges = [QuantCase(spec.shape, spec.tokens, r, fmt, dtype, device)
                      for r in spec.merge_ranks]  # fmt: skip
            jobs += [QuantJob(c, MERGE, "infer") for c in merges]
        if spec.model:
            case = QuantCase(spec.model, 16, 16, spec.model_format, dtype, device)
            jobs.append(QuantJob(case, MODEL, "train"))
    return jobs
