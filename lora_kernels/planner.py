"""What LoRA on a preset model costs, by arithmetic: trainable parameters, the adapter file,
training memory beside full fine-tuning, and the extra inference FLOPs per token.

The activation figure counts only what the linear layers save for their own backward:
LoRA's adapted layers save their input x (for dA; layers reading one tensor share it) and
x Aᵀ (T, r) (for dB); full fine-tuning saves every linear layer's input (for dW). Attention
scores, norms, activation functions, logits and the frozen model's own saved tensors are left
out: both ways of training need them, and they depend on the attention kernel. No torch here.

A quantized base (`base_dtype` nf4, int8 or fp8, QLoRA) holds every block's linear weights in
that format (the head, embeddings, norms and biases stay in `dtype`): NF4 half a byte a weight
and an fp32 absmax per block of 64; int8 and fp8 a byte a weight and an fp32 scale per row.
Training then also holds one dequantized weight at a time, the largest layer's (qlora_lean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lora_kernels.presets import LinearSpec, Preset

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
BASE_DTYPES = ("nf4", "int8", "fp8")  # a quantized base (QLoRA); "" keeps `dtype`
NF4_BLOCK = 64


def quantized_bytes(spec: LinearSpec, base_dtype: str) -> int:
    """Bytes of one linear weight (out, in) held in `base_dtype`: the codes and their scales."""
    weights = spec.in_features * spec.out_features
    if base_dtype == "nf4":
        return weights // 2 + 4 * math.ceil(weights / NF4_BLOCK)
    return weights + 4 * spec.out_features


OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}  # tensors of state per parameter (plain SGD: none)


@dataclass(frozen=True)
class Memory:
    """Bytes of one way of training: weights frozen and trained, gradients, optimizer
    state, and the activations the linear layers save for backward."""

    frozen: int
    trained: int
    gradients: int
    optimizer: int
    activations: int
    dequantized: int = 0  # a quantized base: the largest weight dequantized for its GEMM

    @property
    def total(self) -> int:
        return (self.frozen + self.trained + self.gradients + self.optimizer + self.activations
                + self.dequantized)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """LoRA of rank `rank` on the `targets` of every block of `model`."""

    model: str
    targets: list[str]  # block-relative module names
    rank: int
    alpha: float
    scale: float
    dtype: str
    optimizer: str
    tokens: int  # per training step
    base_dtype: str  # the frozen linear weights' format: nf4, int8, fp8, or dtype
    adapted_layers: int
    trainable: int
    total: int  # the model's parameters plus the adapter's
    adapter_bytes: int  # tensor data of the adapter file
    lora: Memory
    full: Memory  # full fine-tuning with the same optimizer and dtype
    base_flops_per_token: int  # the linear layers' (and head's) forward, 2 FLOPs a weight
    extra_flops_per_token: int  # the unmerged adapter's; merged adds none

    @property
    def fraction(self) -> float:
        return self.trainable / self.total

    @property
    def extra_flops_share(self) -> float:
        """The unmerged adapter's FLOPs over the linear layers' own, per token."""
        return self.extra_flops_per_token / self.base_flops_per_token


def _check_choice(name: str, value: str, allowed: dict) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def plan(
    preset: Preset,
    targets: list[str] | str,
    rank: int,
    *,
    alpha: float | None = None,
    use_rslora: bool = False,
    dtype: str = "bf16",
    optimizer: str = "adamw",
    tokens: int = 2048,
    base_dtype: str | None = None,
) -> Plan:
    """The plan of LoRA on `preset`; alpha defaults to the rank (s = 1). Weights, gradients,
    optimizer state and activations are all counted at `dtype`; with `base_dtype` (nf4, int8
    or fp8) LoRA's frozen linear weights are held quantized (QLoRA; full fine-tuning is
    counted at `dtype`)."""
    _check_choice("dtype", dtype, DTYPE_BYTES)
    if base_dtype is not None and base_dtype not in BASE_DTYPES:
        raise ValueError(f"base_dtype must be one of {', '.join(BASE_DTYPES)}, got {base_dtype!r}")
    _check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
        raise ValueError(f"tokens must be an int > 0 (tokens per training step), got {tokens!r}")
    alpha = float(rank if alpha is None else alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    names = preset.resolve(targets)
    for name in names:
        spec = preset.linears[name]
        limit = min(spec.in_features, spec.out_features)
        if rank > limit:
            raise ValueError(
                f"rank {rank} exceeds min(in, out) = {limit} of {name} "
                f"({spec.in_features} -> {spec.out_features}); allowed: 1..{limit}"
            )
    size, states, n = DTYPE_BYTES[dtype], OPTIMIZER_STATES[optimizer], preset.blocks
    specs = [preset.linears[m] for m in names]
    trainable = n * sum(rank * (s.in_features + s.out_features) for s in specs)
    base = preset.total_params

    def saved_inputs(chosen: list) -> int:
        return sum({s.reads: s.in_features for s in chosen}.values())

    lora_act = n * (saved_inputs(specs) + rank * len(specs))
    every = list(preset.linears.values())
    full_act = n * saved_inputs(every) + (preset.hidden if preset.head is not None else 0)
    head_flops = 2 * preset.head.in_features * preset.head.out_features if preset.head else 0
    frozen, dequantized = base * size, 0
    if base_dtype is not None:
        linear_weights = n * sum(s.in_features * s.out_features for s in every)
        held = n * sum(quantized_bytes(s, base_dtype) for s in every)
        frozen = (base - linear_weights) * size + held
        dequantized = max(s.in_features * s.out_features for s in every) * size
    return Plan(
        model=preset.name,
        targets=names,
        rank=rank,
        alpha=alpha,
        scale=alpha / (rank**0.5 if use_rslora else rank),
        dtype=dtype,
        optimizer=optimizer,
        tokens=tokens,
        base_dtype=base_dtype or dtype,
        adapted_layers=n * len(names),
        trainable=trainable,
        total=base + trainable,
        adapter_bytes=trainable * size,
        lora=Memory(
            frozen=frozen,
            trained=trainable * size,
            gradients=trainable * size,
            optimizer=states * trainable * size,
            activations=tokens * lora_act * size,
            dequantized=dequantized,
        ),
        full=Memory(
            frozen=0,
            trained=base * size,
            gradients=base * size,
            optimizer=states * base * size,
            activations=tokens * full_act * size,
        ),
        base_flops_per_token=2 * n * sum(s.in_features * s.out_features for s in every)
        + head_flops,
        extra_flops_per_token=2 * n * sum(rank * (s.in_features + s.out_features) for s in specs),
    )
