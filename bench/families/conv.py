"""Conv2d LoRA layers at the real shapes of diffusion UNets (SD 1.5, SDXL) and of ResNet-50:
each registered Conv2d impl's forward and training step timed in pairs with the frozen
convolution's, with the bytes a step keeps for backward and its peak; the Conv2d DoRA impls
the same way at the cases a profile names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from bench.harness.cases import DTYPES, Keyed
from bench.harness.rounds import Budget
from lora_kernels import IMPLS
from lora_kernels.conv.weights import ConvLoRAWeights

if TYPE_CHECKING:
    from lora_kernels.conv.dora_weights import ConvDoRAWeights


@dataclass(frozen=True)
class ConvLayer:
    """A Conv2d of a real model: in -> out channels, a k×k kernel at `stride` with `padding`,
    on a `size`×`size` input map."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    size: int
    bias: bool


# SD 1.5 at 512×512 (a 64×64 latent) and SDXL at 1024×1024 (128×128): the 3×3 convolution of a
# ResNet block at each resolution of the UNet (diffusers' convs carry a bias). ResNet-50 at
# 224×224 (torchvision's layout, no bias): the stem, a bottleneck's 3×3 at the first and last
# stage, and a 1×1 expansion.
CONV_LAYERS: dict[str, ConvLayer] = {
    "toy": ConvLayer(8, 8, 3, 1, 1, 8, True),
    "sd15.down0": ConvLayer(320, 320, 3, 1, 1, 64, True),
    "sd15.down1": ConvLayer(640, 640, 3, 1, 1, 32, True),
    "sd15.down2": ConvLayer(1280, 1280, 3, 1, 1, 16, True),
    "sd15.mid": ConvLayer(1280, 1280, 3, 1, 1, 8, True),
    "sdxl.down0": ConvLayer(320, 320, 3, 1, 1, 128, True),
    "sdxl.down1": ConvLayer(640, 640, 3, 1, 1, 64, True),
    "sdxl.mid": ConvLayer(1280, 1280, 3, 1, 1, 32, True),
    "resnet50.stem": ConvLayer(3, 64, 7, 2, 3, 224, False),
    "resnet50.layer1.3x3": ConvLayer(64, 64, 3, 1, 1, 56, False),
    "resnet50.layer1.expand": ConvLayer(64, 256, 1, 1, 0, 56, False),
    "resnet50.layer4.3x3": ConvLayer(512, 512, 3, 1, 1, 7, False),
}


LAYOUTS = ("nchw", "nhwc")
MEMORY_FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


@dataclass(frozen=True)
class ConvCase(Keyed):
    """The convolution `layer` on a batch of `batch` maps, LoRA of rank `rank`; `layout` "nhwc"
    holds x, W, A and B channels-last (torch.channels_last), "nchw" in the default layout."""

    layer: str
    batch: int
    rank: int
    dtype: str
    device: str
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if self.layer not in CONV_LAYERS:
            raise ValueError(f"unknown conv layer {self.layer!r}; known: {', '.join(CONV_LAYERS)}")
        if self.batch < 1 or self.rank < 1:
            raise ValueError(f"batch and rank must be >= 1, got {self.batch} and {self.rank}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def key(self) -> str:
        nhwc = " nhwc" if self.layout == "nhwc" else ""
        return f"{self.layer} N={self.batch} r={self.rank} {self.dtype}{nhwc}"

    def laid_out(self, t: torch.Tensor) -> torch.Tensor:
        """t (4-D) in the case's layout."""
        return t.contiguous(memory_format=MEMORY_FORMATS[self.layout])

    @property
    def spec(self) -> ConvLayer:
        return CONV_LAYERS[self.layer]

    def weights(self, variant: str = "conv") -> ConvLoRAWeights | ConvDoRAWeights:
        """Seeded random weights of the layer's shape, B non-zero; variant "conv_dora" adds a
        seeded magnitude, every channel's away from its norm (a trained adapter's)."""
        s = self.spec
        w = ConvLoRAWeights.random(s.in_channels, s.out_channels, self.rank, s.kernel,
                                   stride=s.stride, padding=s.padding, bias=s.bias, seed=7,
                                   dtype=DTYPES[self.dtype], device=self.device)  # fmt: skip
        w = dataclasses.replace(w, W=self.laid_out(w.W), A=self.laid_out(w.A),
                                B=self.laid_out(w.B))  # fmt: skip
        if variant == "conv":
            return w
        if variant != "conv_dora":
            raise ValueError(f"variant must be 'conv' or 'conv_dora', got {variant!r}")
        # imported here: kernels from before Conv2d DoRA (ab's base side) lack the module
        from lora_kernels.conv.dora_weights import ConvDoRAWeights

        return ConvDoRAWeights.with_random_m(w, seed=7)

    def input(self, train: bool) -> torch.Tensor:
        """x (batch, in, size, size) in the case's layout, seeded; requiring grad in training
        (a layer inside a network passes its input's gradient on)."""
        s = self.spec
        gen = torch.Generator().manual_seed(self.batch)
        x = torch.randn(self.batch, s.in_channels, s.size, s.size, generator=gen)
        x = x.to(device=self.device, dtype=DTYPES[self.dtype])
        return self.laid_out(x).requires_grad_(train)

    def flops(self, adapter: bool = True) -> int:
        """Forward FLOPs: 2·N·H_out·W_out·(in·k²·out + r·(in·k² + out)); adapter=False counts
        the base convolution alone."""
        s = self.spec
        side = (s.size + 2 * s.padding - s.kernel) // s.stride + 1
        fan_in = s.in_channels * s.kernel**2
        lora = self.rank * (fan_in + s.out_channels) if adapter else 0
        return 2 * self.batch * side * side * (fan_in * s.out_channels + lora)


@dataclass(frozen=True)
class ConvJob:
    case: ConvCase
    impl: str
    mode: str

    def __str__(self) -> str:
        return f"{self.impl} {self.mode} {self.case}"


@dataclass(frozen=True)
class ConvProfile:
    """A profile's (layer, batch, rank) cases on a CPU and on CUDA, and its rounds; the Conv2d
    DoRA impls run at those of its cases that are in `dora_cases` too, and the Conv2d LoRA
    impls run again channels-last at those in `nhwc_cases`."""

    cases: tuple[tuple[str, int, int], ...]
    cuda_cases: tuple[tuple[str, int, int], ...]
    budget: Budget
    dora_cases: tuple[tuple[str, int, int], ...] = ()
    nhwc_cases: tuple[tuple[str, int, int], ...] = ()


UNET_LAYERS = ("sd15.down0", "sd15.down1", "sd15.down2", "sd15.mid", "sdxl.down0",
               "sdxl.down1", "sdxl.mid")  # fmt: skip
RESNET_LAYERS = ("resnet50.stem", "resnet50.layer1.3x3", "resnet50.layer1.expand",
                 "resnet50.layer4.3x3")  # fmt: skip
TARGET = ("sdxl.down1", 1, 16)  # where the targets are set: SDXL's 640 channels at 64×64

CONV_PROFILES: dict[str, ConvProfile] = {
    "tiny": ConvProfile(
        (("toy", 2, 4),), (("toy", 2, 4),), Budget(0.2, 3, 5), (("toy", 2, 4),), (("toy", 2, 4),)
    ),
    # SD 1.5's smallest map (the UNet's middle, 8×8) and its largest (64×64), one image; on
    # CUDA the target's layer channels-last too.
    "quick": ConvProfile(
        (("sd15.mid", 1, 16), ("sd15.down0", 1, 16)),
        (("sd15.mid", 1, 16), ("sdxl.down0", 2, 16), TARGET),
        Budget(0.6, 7, 31),
        nhwc_cases=(TARGET,),
    ),
    # Every UNet layer at batch 1 and 2, ResNet-50's at 8 (32 on CUDA), and ranks 4 and 64 at
    # the target's layer; DoRA at the target's layer; channels-last at the target's layer, at
    # SD 1.5's largest and smallest maps and at ResNet-50's first 3×3.
    "full": ConvProfile(
        tuple((layer, n, 16) for layer in UNET_LAYERS for n in (1, 2))
        + tuple((layer, 8, 16) for layer in RESNET_LAYERS)
        + (("sdxl.down1", 1, 4), ("sdxl.down1", 1, 64)),
        tuple((layer, n, 16) for layer in UNET_LAYERS for n in (1, 2))
        + tuple((layer, 32, 16) for layer in RESNET_LAYERS)
        + (("sdxl.down1", 1, 4), ("sdxl.down1", 1, 64)),
        Budget(4.0, 9, 81),
        (TARGET,),
        (
            TARGET,
            ("sd15.down0", 1, 16),
            ("sd15.mid", 1, 16),
            ("resnet50.layer1.3x3", 8, 16),
            ("resnet50.layer1.3x3", 32, 16),
        ),
    ),
}
CONV_DTYPES = {"cpu": "fp32", "cuda": "bf16"}


def conv_impls(mode: str, variants: tuple[str, ...] = ("conv",)) -> list[str]:
    """The registered Conv2d impls (ours, peers, plugins) of `variants` that run `mode`."""
    return [name for name, impl in IMPLS.items() if impl.variant in variants
            and mode in impl.modes]  # fmt: skip


def conv_jobs(profile: str, devices: list[str]) -> list[ConvJob]:
    spec = CONV_PROFILES[profile]
    jobs = []
    for device in devices:
        for layer, batch, rank in spec.cuda_cases if device == "cuda" else spec.cases:
            case = ConvCase(layer, batch, rank, CONV_DTYPES[device], device)
            dora = (layer, batch, rank) in spec.dora_cases
            variants = ("conv", "conv_dora") if dora else ("conv",)
            jobs += [ConvJob(case, name, mode) for mode in ("infer", "train")
                     for name in conv_impls(mode, variants)]  # fmt: skip
            if (layer, batch, rank) in spec.nhwc_cases:
                nhwc = dataclasses.replace(case, layout="nhwc")
                jobs += [ConvJob(nhwc, name, mode) for mode in ("infer", "train")
                         for name in conv_impls(mode)]  # fmt: skip
    return jobs
