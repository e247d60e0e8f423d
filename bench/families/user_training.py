"""A training step on the user's model: forward, cross-entropy, backward and AdamW on the
adapter, of PEFT's model and ours, checked against PEFT's logits and LoRA gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.families import models
from bench.families import user_variants as uv
from bench.families.model_runner import cuda_peak, tensor_bytes
from bench.families.user_phase import Phase, case_name, seconds_of, timed
from bench.families.user_request import FailedError
from lora_kernels import rel_error

CPU_MEMORY = "tensors: parameters, their gradients, and what autograd saved"
CUDA_MEMORY = "torch.cuda.max_memory_allocated over one step"


def adapter_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's gradients by layer and tensor, PEFT's names and ours alike (DoRA's
    magnitude is PEFT's lora_magnitude_vector and our lora_magnitude)."""
    grads = models.lora_grads(model)
    return {k.replace("lora_magnitude_vector", "lora_magnitude"): g for k, g in grads.items()}


@dataclass
class TrainBuilt:
    work: Callable[[], object]
    error: float
    build_s: float
    call_s: float
    peak: int


class Training(Phase):
    """A training step: forward, cross-entropy, backward, and AdamW on the adapter (lr 0, so
    the variants keep sharing one adapter)."""

    mode = "train"
    phases = ("train",)

    @property
    def dims_tokens(self) -> list[int]:
        return [self.r.batch * self.r.tokens]

    def frozen_work(self) -> Callable[[], object]:
        return self.frozen

    def work_of(self, built: Any) -> Callable[[], object]:
        return built.work

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        uv.set_trainable(self.peft, True)
        r = self.r
        ids = self.random_ids(r.tokens)
        with torch.no_grad():
            embeds = self.base.get_input_embeddings()(ids)  # type: ignore[operator]
        self.inputs = models.Inputs(embeds, ids)
        self.case = case_name(self.p, f"B={r.batch} T={r.tokens}")
        self.frozen = models.train_work(self.base, self.inputs)
        self.frozen()
        self.frozen_s = seconds_of(self.frozen, r.device)
        self.logits = models.forward(self.peft, self.inputs)
        self.peft.zero_grad(set_to_none=True)
        models.backward(self.peft, self.inputs)
        self.grads = {k: g.clone() for k, g in adapter_grads(self.peft).items()}
        self.peft.zero_grad(set_to_none=True)

    def prepare_variant(self, name: str) -> TrainBuilt:
        model, build_s = self.build_timed(name)
        errors = {"logits": rel_error(models.forward(model, self.inputs), self.logits)}
        model.zero_grad(set_to_none=True)
        models.backward(model, self.inputs)
        mine = adapter_grads(model)
        model.zero_grad(set_to_none=True)
        if mine.keys() != self.grads.keys():
            raise FailedError("its LoRA parameters are not PEFT's; not timed")
        errors.update({k: rel_error(mine[k], g) for k, g in self.grads.items()})
        worst = max(errors, key=lambda k: errors[k])
        if not errors[worst] <= self.tolerance:
            raise FailedError(f"rel error {errors[worst]:.3g} ({worst}) against peft > "
                         f"{self.tolerance:g}; not timed")  # fmt: skip
        work = models.train_work(model, self.inputs)
        work()  # warm: AdamW's state
        if torch.device(self.r.device).type == "cuda":
            peak = cuda_peak(work)
        else:
            peak = tensor_bytes(model, work)
        return TrainBuilt(work, errors[worst], build_s, seconds_of(work, self.r.device), peak)

    def works(self, built: TrainBuilt) -> tuple[Callable[[], object], Callable[[], object]]:
        return built.work, self.frozen

    def per_call(self, built: TrainBuilt) -> float:
        return max(built.call_s, self.frozen_s)

    def record(self, name: str, built: TrainBuilt) -> None:
        timer = timed(self.works(built), self.r.device, self.r.seconds, self.per_call(built))
        method = CUDA_MEMORY if torch.device(self.r.device).type == "cuda" else CPU_MEMORY
        self.out.entries.append(self.entry(
            name, self.case, "train", timer.paired(), steps=1,
            tokens=self.r.batch * self.r.tokens, tokens_equal=1.0, rel_error=built.error,
            build_s=built.build_s, compile_s=0.0, peak_bytes=built.peak, memory_method=method,
        ))  # fmt: skip
