"""Whole convolutional models with LoRA on their convolutions: ResNet-18 (torchvision's
layout, built here) with an adapter of rank r on each of its 20 convolutions, ours through
inject_conv or PEFT's lora.Conv2d, its training step timed in pairs with a full fine-tune step
of the same model (the question of PEFT #960: is LoRA training of a ResNet slower than
training all of it?)."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.families.resnet import ResNet18
from bench.harness.cases import DTYPES, Keyed
from bench.harness.rounds import Budget
from lora_kernels import rel_error
from lora_kernels.conv.layer import LoRAConv2d, inject_conv

PEFT = "peft"  # the variant run by PEFT's lora.Conv2d; every other is one of our Conv2d impls
CONV_MODEL_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}  # through 20 layers
# Batch norm in training mode subtracts the batch's mean in backward, so some adapters'
# gradients are small differences of large terms, and the function as written errs there in
# fp32 by more than the tolerance (1e-3 to 1e-2 at 8 to 32 images): an impl may err up to this
# many times what the written function does, tensor by tensor.
FLOOR_FACTOR = 4.0


@dataclass(frozen=True)
class ConvModelCase(Keyed):
    """`model` on a batch of `batch` `size`×`size` images, LoRA of rank `rank` on every
    convolution."""

    model: str
    batch: int
    size: int
    rank: int
    dtype: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.model} N={self.batch} {self.size}px r={self.rank} {self.dtype}"

    def images(self) -> tuple[Tensor, Tensor]:
        """Seeded images (batch, 3, size, size) and class labels (batch,)."""
        gen = torch.Generator().manual_seed(self.batch)
        x = torch.randn(self.batch, 3, self.size, self.size, generator=gen)
        labels = torch.randint(0, 1000, (self.batch,), generator=gen)
        return x.to(self.device, DTYPES[self.dtype]), labels.to(self.device)


@dataclass(frozen=True)
class ConvModelJob:
    case: ConvModelCase
    variant: str  # one of our Conv2d impls, or "peft"

    def __str__(self) -> str:
        return f"{self.variant} train {self.case}"


@dataclass(frozen=True)
class ConvModelProfile:
    """A profile's (batch, size) cases on a CPU and on CUDA, the variants, and the rounds."""

    cases: tuple[tuple[int, int], ...]
    cuda_cases: tuple[tuple[int, int], ...]
    variants: tuple[str, ...]
    budget: Budget


RANK = 8
CONV_MODEL_PROFILES: dict[str, ConvModelProfile] = {
    "tiny": ConvModelProfile(((2, 64),), ((2, 64),), ("conv_add", PEFT), Budget(0.2, 3, 5)),
    "quick": ConvModelProfile(((4, 224),), ((64, 224),), ("conv_add", PEFT), Budget(1.5, 5, 21)),
    "full": ConvModelProfile(
        ((8, 224), (32, 224)),
        ((64, 224), (256, 224)),
        ("conv_two_step", "conv_add", "conv_autograd", PEFT),
        Budget(4.0, 7, 41),
    ),
}  # fmt: skip
CONV_MODEL_DTYPES = {"cpu": "fp32", "cuda": "bf16"}


def conv_model_jobs(profile: str, devices: list[str]) -> list[ConvModelJob]:
    spec = CONV_MODEL_PROFILES[profile]
    jobs = []
    for device in devices:
        for batch, size in spec.cuda_cases if device == "cuda" else spec.cases:
            case = ConvModelCase("resnet18", batch, size, RANK, CONV_MODEL_DTYPES[device], device)
            jobs += [ConvModelJob(case, variant) for variant in spec.variants]
    return jobs


def peft_missing() -> str:
    """Why PEFT's variant cannot run here, or ""."""
    if importlib.util.find_spec("peft") is None:
        return "PEFT's lora.Conv2d needs peft (pip install 'lora-bench[peers]')"
    return ""


def models(case: ConvModelCase, variant: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(the LoRA model, the full fine-tune model, the oracle): one seeded ResNet-18 and copies,
    the LoRA model with an adapter of rank r on every convolution (alpha = r, so s = 1), B
    seeded non-zero so that the adapters change the output, run by our impl `variant` or,
    with "peft", by PEFT's lora.Conv2d holding the same A and B. The oracle is the LoRA model
    in float64 on the CPU, each adapted convolution the function as written (OracleConv)."""
    torch.manual_seed(0)
    full: nn.Module = ResNet18().to(case.device, DTYPES[case.dtype]).train()
    lora = copy.deepcopy(full)
    names = inject_conv(lora, case.rank, alpha=case.rank)
    for name, p in lora.named_parameters():  # A and B train; batch norm and the head do not
        p.requires_grad_(name.endswith(("lora_A", "lora_B")))
    gen = torch.Generator().manual_seed(1)
    for name in names:
        layer = lora.get_submodule(name)
        assert isinstance(layer, LoRAConv2d)
        B = torch.randn(layer.lora_B.shape, generator=gen) * 0.05
        layer.lora_B.data.copy_(B.to(layer.lora_B))
    oracle = float64_oracle(lora, names)
    if variant == PEFT:
        lora = peft_model(lora, names)
    else:
        for name in names:
            layer = lora.get_submodule(name)
            assert isinstance(layer, LoRAConv2d)
            layer.impl = variant
    for p in full.parameters():
        p.requires_grad_(True)
    return lora, full, oracle


class OracleConv(nn.Module):
    """A LoRAConv2d's function as written, in float64 through autograd: conv(x, W, b) +
    s · conv1×1(conv(x, A), B) at the base's geometry; lora_A and lora_B train."""

    def __init__(self, layer: LoRAConv2d) -> None:
        super().__init__()
        self.base = copy.deepcopy(layer.base).to("cpu", torch.float64)
        self.lora_A = nn.Parameter(layer.lora_A.detach().to("cpu", torch.float64))
        self.lora_B = nn.Parameter(layer.lora_B.detach().to("cpu", torch.float64))
        self.scale = layer.scale

    def forward(self, x: Tensor) -> Tensor:
        c = self.base
        xa = F.conv2d(x, self.lora_A, None, c.stride, c.padding, c.dilation)
        return c(x) + self.scale * F.conv2d(xa, self.lora_B)


def float64_oracle(lora: nn.Module, names: list[str]) -> nn.Module:
    """A float64 CPU copy of `lora` whose LoRAConv2d layers are OracleConv."""
    oracle = copy.deepcopy(lora)
    for name in names:
        layer = lora.get_submodule(name)
        assert isinstance(layer, LoRAConv2d)
        oracle.set_submodule(name, OracleConv(layer))
    return oracle.to("cpu", torch.float64)


def peft_model(ours: nn.Module, names: list[str]) -> nn.Module:
    """A PEFT model of `ours`'s base with lora.Conv2d on `names`, holding copies of our A, B
    and scale."""
    from peft import LoraConfig, get_peft_model

    layers: dict[str, LoRAConv2d] = {}
    for name in names:
        layer = ours.get_submodule(name)
        assert isinstance(layer, LoRAConv2d)
        layers[name] = layer
    base = copy.deepcopy(ours)
    for name, layer in layers.items():  # back to plain convolutions
        base.set_submodule(name, copy.deepcopy(layer.base))
    first = next(iter(layers.values()))
    config = LoraConfig(r=first.rank, lora_alpha=first.alpha, target_modules=names)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, layer in layers.items():
            peft_layer = model.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            peft_layer.scaling["default"] = layer.scale
    return model


def train_step(model: nn.Module, x: Tensor, labels: Tensor) -> Callable[[], None]:
    """One training step: gradients dropped, cross-entropy forward and backward, and an
    AdamW step over the parameters that train (every one in a full fine-tune, A and B with
    LoRA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, foreach=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).float(), labels).backward()
        opt.step()

    return step


def errors_against(
    lora: nn.Module, oracle: nn.Module, x: Tensor, labels: Tensor
) -> dict[str, float]:
    """Relative errors of the logits and of each trained tensor's gradient against the float64
    oracle (inf for a tensor the oracle trains and `lora` does not; a tensor only `lora`
    trains is named "trains: NAME")."""
    logits, grads = lora_grads(lora, x, labels)
    want_logits, want = lora_grads(oracle, x.detach().cpu().double(), labels.cpu())
    errors = {"logits": rel_error(logits, want_logits)}
    errors |= {k: rel_error(grads[k], g) if k in grads else float("inf") for k, g in want.items()}
    return errors | {f"trains: {k}": float("inf") for k in set(grads) - set(want)}


def allowed_errors(
    oracle: nn.Module, case: ConvModelCase, x: Tensor, labels: Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """(what each error may be, the floor): the floor is the error of the function as written
    (the oracle's own modules) in the case's dtype; an impl may err by the dtype's tolerance,
    or FLOOR_FACTOR times the floor if that is more."""
    written = copy.deepcopy(oracle).to(case.device, DTYPES[case.dtype])
    floor = errors_against(written, oracle, x, labels)
    tol = CONV_MODEL_TOLERANCE[case.dtype]
    return {k: max(tol, FLOOR_FACTOR * e) for k, e in floor.items()}, floor


def lora_grads(model: nn.Module, x: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """(logits, the gradient of each tensor that trains and got one, by its module's name and
    A or B) of one forward and backward, no optimizer step; PEFT's names and ours map to one
    form."""
    for p in model.parameters():
        p.grad = None
    logits = model(x)
    F.cross_entropy(logits.float(), labels).backward()
    grads: dict[str, Tensor] = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            key = name.removeprefix("base_model.model.")
            key = key.replace(".lora_A.default.weight", ".lora_A").replace(
                ".lora_B.default.weight", ".lora_B")  # fmt: skip
            grads[key] = p.grad
    return logits.detach(), grads
