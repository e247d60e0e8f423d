"""A diffusion UNet with LoRA as diffusers applies it: a diffusers UNet2DConditionModel built
from a config (seeded random weights, no download), PEFT's LoRA put on its attention (to_q,
to_k, to_v, to_out.0) or on its attention and convolutions through diffusers' `add_adapter`,
and ours on the same tensors through from_peft; a denoising step and a training step of each
against the frozen UNet's, and diffusers' fuse_lora/unfuse_lora against our merge/unmerge."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.harness.cases import DTYPES, Keyed
from bench.harness.rounds import Budget
from lora_kernels import from_peft

SD15_BLOCKS = {
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
    "attention_head_dim": 8,
}
# (config, latent side, text tokens): SD 1.5's UNet at its real widths for GPUs (a 512×512
# image's 64×64 latent, CLIP's 77 tokens of 768), its architecture at 0.3 of the widths
# for a CPU, and a tiny one for the bench's own tests.
UNETS: dict[str, tuple[dict[str, Any], int, int]] = {
    "sd15": ({**SD15_BLOCKS, "block_out_channels": (320, 640, 1280, 1280),
              "cross_attention_dim": 768}, 64, 77),
    "sd15-cpu": ({**SD15_BLOCKS, "block_out_channels": (96, 192, 384, 384),
                  "cross_attention_dim": 192}, 32, 77),
    "unet-tiny": ({"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                   "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "layers_per_block": 1,
                   "block_out_channels": (32, 64), "cross_attention_dim": 32,
                   "attention_head_dim": 8, "norm_num_groups": 8}, 16, 8),
}  # fmt: skip
ATTN = ("to_q", "to_k", "to_v", "to_out.0")
# LoRA on the convolutions as well (LoCon's reach): each ResNet block's two 3×3 and its 1×1
# shortcut, the down- and upsamplers, and the transformer blocks' 1×1 projections in and out.
CONVS = ("conv1", "conv2", "conv_shortcut", "conv", "proj_in", "proj_out")
TARGETS = {"attn": ATTN, "attn+conv": ATTN + CONVS}
PEFT = "peft"
UNET_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def diffusers_missing() -> str:
    """Why the UNet family cannot run here, or ""."""
    for package, extra in (("diffusers", "diffusion"), ("peft", "peers")):
        if importlib.util.find_spec(package) is None:
            return f"the UNet bench needs {package} (pip install 'lora-bench[{extra}]')"
    return ""


@dataclass(frozen=True)
class UNetCase(Keyed):
    """`model` denoising a batch of `batch` latents, LoRA of rank `rank` on `targets`."""

    model: str
    targets: str
    batch: int
    rank: int
    dtype: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.model} {self.targets} N={self.batch} r={self.rank} {self.dtype}"

    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Seeded (latents (N, 4, side, side), timesteps (N,), text states (N, tokens, dim),
        the noise a training step predicts)."""
        config, side, tokens = UNETS[self.model]
        gen = torch.Generator().manual_seed(self.batch)
        latents = torch.randn(self.batch, 4, side, side, generator=gen)
        text = torch.randn(self.batch, tokens, config["cross_attention_dim"], generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        steps = torch.randint(0, 1000, (self.batch,), generator=gen)
        dtype = DTYPES[self.dtype]
        return (latents.to(self.device, dtype), steps.to(self.device),
                text.to(self.device, dtype), noise.to(self.device, dtype))  # fmt: skip


@dataclass(frozen=True)
class UNetJob:
    case: UNetCase
    variant: str  # "peft", or ours: "<linear impl>" or "<linear impl>/<conv impl>"
    mode: str  # "infer" (a denoising call), "train", or "fuse" (fuse_lora/unfuse_lora against ours)

    def __str__(self) -> str:
        return f"{self.variant} {self.mode} {self.case}"

    @property
    def impls(self) -> tuple[str, str | None]:
        """(our linear impl, our conv impl or None) of an ours variant."""
        linear, _, conv = self.variant.partition("/")
        return linear, conv or None


@dataclass(frozen=True)
class UNetProfile:
    """A profile's (model, batch) on a CPU and on CUDA, its targets, rank, our impl pairs,
    modes and rounds."""

    cpu: tuple[str, int] | None  # None: not on a CPU in this profile
    cuda: tuple[str, int]
    ours: tuple[tuple[str, str], ...]  # (linear impl, conv impl)
    modes: tuple[str, ...]
    budget: Budget
    rank: int = 16


UNET_PROFILES: dict[str, UNetProfile] = {
    "tiny": UNetProfile(("unet-tiny", 1), ("unet-tiny", 1), (("addmm", "conv_add"),),
                        ("infer", "train", "fuse"), Budget(0.2, 3, 5)),
    # On a CPU the UNet's ten quick jobs took 66 s: they run in full there.
    "quick": UNetProfile(None, ("sd15", 2), (("addmm", "conv_add"),),
                         ("infer", "train", "fuse"), Budget(1.0, 5, 21)),
    "full": UNetProfile(("sd15-cpu", 2), ("sd15", 2),
                        (("addmm", "conv_add"), ("two_step", "conv_two_step"),
                         ("autograd", "conv_autograd")),
                        ("infer", "train", "fuse"), Budget(3.0, 7, 41)),
}  # fmt: skip
UNET_DTYPES = {"cpu": "fp32", "cuda": "bf16"}


def unet_jobs(profile: str, devices: list[str]) -> list[UNetJob]:
    spec = UNET_PROFILES[profile]
    jobs = []
    for device in devices:
        where = spec.cuda if device == "cuda" else spec.cpu
        if where is None:
            continue
        model, batch = where
        for targets in TARGETS:
            case = UNetCase(model, targets, batch, spec.rank, UNET_DTYPES[device], device)
            ours = [linear if targets == "attn" else f"{linear}/{conv}"
                    for linear, conv in spec.ours]  # fmt: skip
            for mode in spec.modes:
                # fuse: one row per case, our merge/unmerge against diffusers' fuse/unfuse
                variants = ours[:1] if mode == "fuse" else [PEFT, *ours]
                jobs += [UNetJob(case, v, mode) for v in variants]
    return jobs


def frozen_unet(case: UNetCase) -> nn.Module:
    """The case's UNet2DConditionModel with seeded random weights, frozen."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet: Any = UNet2DConditionModel(**UNETS[case.model][0])
    return unet.to(case.device, DTYPES[case.dtype]).eval().requires_grad_(False)


def peft_unet(base: nn.Module, case: UNetCase) -> nn.Module:
    """A copy of `base` with PEFT's LoRA on the case's targets as diffusers puts it
    (`add_adapter`), B seeded non-zero so that the adapters change the output."""
    from peft import LoraConfig

    unet: Any = copy.deepcopy(base)
    targets = list(TARGETS[case.targets])
    config = LoraConfig(r=case.rank, lora_alpha=case.rank, target_modules=targets)
    unet.add_adapter(config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02).to(p))
    return unet


def ours_unet(peft: nn.Module, job: UNetJob) -> nn.Module:
    """A copy of PEFT's UNet with each of its LoRA layers ours (from_peft), on copies of the
    same tensors, run by the job's impls."""
    unet = copy.deepcopy(peft)
    linear, conv = job.impls
    from_peft(unet, impl=linear, conv_impl=conv)
    return unet


def denoise(unet: nn.Module, inputs: tuple[Tensor, ...]) -> Callable[[], Tensor]:
    """One denoising call: the predicted noise (N, 4, side, side), without autograd."""
    latents, steps, text, _ = inputs

    def call() -> Tensor:
        with torch.no_grad():
            return unet(latents, steps, encoder_hidden_states=text).sample

    return call


def train_step(unet: nn.Module, inputs: tuple[Tensor, ...]) -> Callable[[], None]:
    """One training step: the noise prediction's MSE, backward to the latents and the LoRA
    tensors, and an AdamW step on them at lr=0 (the variants share values and are checked on
    them). The frozen UNet trains nothing: its step is the forward and the backward to the
    latents, the work no adapter can skip."""
    latents, steps, text, noise = inputs
    x = latents.detach().requires_grad_()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0, foreach=True) if params else None

    def step() -> None:
        x.grad = None
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        pred = unet(x, steps, encoder_hidden_states=text).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        if opt is not None:
            opt.step()

    return step


def base_weights(unet: nn.Module) -> dict[str, Tensor]:
    """Copies of every weight and bias that is not an adapter's, by name (the base of
    PEFT's layers and ours under one name)."""
    out = {}
    for name, p in unet.named_parameters():
        if "lora_" not in name:
            out[name.replace(".base_layer.", ".").replace(".base.", ".")] = p.detach().clone()
    return out
