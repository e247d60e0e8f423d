"""The variants `lora-bench model` times on the user's model: PEFT's (unmerged and merged),
ours through from_peft (a short screen picks the best unmerged impl per mode), ours merged, and
our fused modules where the model has q, k and v and a SwiGLU MLP; DoRA's for a DoRA adapter.
Which of ours apply, and why the others do not."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.families import models
from lora_kernels import IMPLS, MULTI_IMPLS, FuseError, from_peft, fuse_modules

PEFT, PEFT_MERGED, PEFT_MIXED, FUSED = "peft", "peft_merged", "peft_mixed", "fused"
FROZEN = "frozen"  # compiled: the frozen model compiled, timed against itself eager
MERGED_IMPLS = ("merged", "dora_merged")  # ours that fold the adapter into W at build
LEFT_OUT = {  # ours that the screen does not try, and why
    "compiled": "compiles each adapted layer apart (minutes over a whole model); the layer "
    "bench times it",
    "delta_weight": "an anti-pattern (forms W + s·B A on every call); the layer bench times it",
    "dora_dense": "PEFT's own way (forms W + s·B A on every call): peft is that variant here",
}


@dataclass(frozen=True)
class Plan:
    """The variants of one mode: always timed (`fixed`), the candidates of ours the screen
    picks one from, and `left` (variant: why it is not timed)."""

    fixed: list[str]
    candidates: list[str]
    left: dict[str, str]


def plan(mode: str, device: str, dtype: torch.dtype, dora: bool, base_dtype: str | None = None
         ) -> Plan:  # fmt: skip
    """The variants for `mode` ("infer" or "train") of a LoRA (or DoRA) adapter, on a base
    quantized to `base_dtype` (QLoRA) when given."""
    variant = "qlora" if base_dtype else "dora" if dora else "lora"
    fixed, candidates, left = [PEFT], [], {}
    if mode == "infer":
        fixed.append(PEFT_MERGED)
    for name, impl in IMPLS.items():
        if impl.origin != "ours" or impl.variant != variant or not impl.lora_equivalent:
            continue
        reason = LEFT_OUT.get(name) or impl.unavailable_reason(device, dtype, mode)
        if base_dtype and base_dtype not in impl.formats:
            reason = f"takes {', '.join(sorted(impl.formats))}, not {base_dtype}"
        if reason:
            left[name] = reason
        elif name in MERGED_IMPLS:
            fixed.append(name)
        else:
            candidates.append(name)
    if dora or base_dtype:
        left[FUSED] = f"fuse_modules takes LoRA layers, not {'QLoRA' if base_dtype else 'DoRA'}"
    else:
        fixed.append(FUSED)
    return Plan(fixed, candidates, left)


def mixed_plan(device: str, dtype: torch.dtype) -> Plan:
    """The variants of a mixed batch: PEFT's, and our multi-adapter impls to screen."""
    candidates, left = [], {}
    for name, impl in MULTI_IMPLS.items():
        if impl.origin != "ours":
            continue
        reason = impl.unavailable_reason(device, dtype, "infer")
        if reason:
            left[name] = reason
        else:
            candidates.append(name)
    return Plan([PEFT_MIXED], candidates, left)


# Ours that build once what each call then reads: compiled whole, LoRALinear builds the op on
# the live tensors inside the traced call (no cache dynamo would guard on), so that work would
# run on every call; and the fused modules, whose shared call is skipped while compiling.
BUILDS_ONCE = {
    "merged": "merges W at build",
    "dora_merged": "merges W at build",
    "stacked": "stacks [W; A] at build",
    "dora_cached": "computes its norm factor at build",
    "dora_factored": "keeps W Aᵀ and ‖W‖² from build",
}
COMPILE_OURS = "addmm"  # ours compiled whole where the screen's pick does not compile


def compile_refusal(variant: str) -> str | None:
    """Why the variant is not compiled whole, or None."""
    if variant in BUILDS_ONCE:
        return (f"{BUILDS_ONCE[variant]}, which compiled whole would redo on every call; "
                f"{PEFT_MERGED if variant in MERGED_IMPLS else COMPILE_OURS} compiled stands "
                "for it")  # fmt: skip
    if variant == FUSED:
        return ("LoRALinear skips a fused module's shared call while compiling: compiled it "
                f"runs {models.FUSED_BASE_IMPL} per layer")  # fmt: skip
    return None


def set_trainable(peft: nn.Module, on: bool) -> None:
    """The adapter's tensors trainable (a training step) or not (generation): the variants
    share them with PEFT's model, and so these flags."""
    for name, p in peft.named_parameters():
        p.requires_grad_(on and "lora_" in name)


def build(variant: str, peft: Any) -> tuple[nn.Module, str]:  # peft: a PeftModel
    """The model of one variant on PEFT's tensors (merges take their own copy of the weights),
    and a note on it ("" or what fuse_modules left unfused). FuseError when nothing fuses."""
    if variant == PEFT:
        return peft, ""
    if variant == PEFT_MERGED:
        return peft_merged(peft), ""
    model = models.shared_copy(peft)
    if variant != FUSED:
        from_peft(model, impl=variant)
        return model, ""
    from_peft(model, impl=models.FUSED_BASE_IMPL)
    report = fuse_modules(model, fallback=True)
    why = _reasons(report.unfused)
    if not report.fused:
        raise FuseError(f"no module fuses ({why})")
    note = f"{len(report.fused)} modules fused"
    return model, note + (f"; {len(report.unfused)} left per layer ({why})" if why else "")


def _reasons(unfused: dict[str, str]) -> str:
    """fuse_modules' reasons without the module names, each once: "k_proj has no LoRA layer;
    fusing needs LoRA on each of q_proj, k_proj, v_proj"."""
    return "; ".join(dict.fromkeys(why.split(": ", 1)[-1] for why in unfused.values()))


def peft_merged(peft: Any) -> nn.Module:
    """PEFT's merge_and_unload on a copy of the model (its own weights)."""
    return merge_and_unload(copy.deepcopy(peft))


def merge_and_unload(peft: Any) -> nn.Module:
    """PEFT's merge_and_unload of this model (its weights change)."""
    with warnings.catch_warnings():  # into a 4-bit base: the error is measured, and said
        warnings.filterwarnings("ignore", "Merge lora module to", UserWarning)
        return peft.merge_and_unload()


def origin(variant: str) -> str:
    if variant == FROZEN:
        return FROZEN
    return "peer" if variant in (PEFT, PEFT_MERGED, PEFT_MIXED) else "ours"


def merged(variant: str) -> bool:
    return variant == PEFT_MERGED or variant in MERGED_IMPLS
