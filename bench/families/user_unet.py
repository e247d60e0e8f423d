"""`lora-bench model` on a diffusers UNet folder: the UNet2DConditionModel of the folder (or of
a pipeline folder's unet/), its weights or seeded ones, the user's diffusers LoRA file (or an
adapter described) put on it as diffusers does (PEFT's layers), ours on the same tensors
through from_peft; a denoising call and a training step of each variant checked against
PEFT's and timed in pairs with the frozen UNet, and diffusers' fuse_lora against our merge.
The entries are UserModelEntry (phases "denoise" and "train"), so the verdict tables of
`lora-bench model` read them."""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.families.model_runner import cuda_peak, tensor_bytes
from bench.families.models import lora_grads
from bench.families.unet import (
    ATTN,
    CONVS,
    UNET_TOLERANCE,
    UNETS,
    denoise,
    diffusers_missing,
    train_step,
)
from bench.families.user_model import UserInputError
from bench.families.user_phase import seconds_of, timed
from bench.families.user_request import Request, Say
from bench.harness.cases import DTYPES
from bench.harness.session import command_infos, command_meta
from bench.schema.entries import Paired, UserModelEntry, UserModelInfo
from bench.schema.run import Run
from lora_kernels import from_peft, merge, rel_error
from lora_kernels.conv.peft import is_peft_conv

UNET_CLASS = "UNet2DConditionModel"
TEXT_TOKENS = 77  # CLIP's context: what the UNet's cross-attention reads
TARGETS = {"attn": ATTN, "attn+conv": ATTN + CONVS}
# ours unmerged: "linear impl/conv impl" (the linear impl alone where no convolution is
# adapted); merged: our merge(); fused: diffusers' fuse_lora
DENOISE = ("peft", "fused", "addmm/conv_add", "merged")
TRAIN = ("peft", "addmm/conv_add", "autograd/conv_autograd")
MERGE_REPEATS = 3
DOWN_KEYS = ("lora_A.weight", "lora.down.weight", "lora_down.weight")  # a LoRA file's, one a layer
# Request fields a UNet does not take, with their defaults (the LLM path's)
LLM_ONLY = {"prompt_tokens": "--prompt-tokens", "new_tokens": "--new-tokens", "tokens": "--tokens",
            "blocks": "--blocks", "adapters": "--adapters", "compile": "--compile",
            "base_dtype": "--base-dtype", "dora": "--dora"}  # fmt: skip


def unet_folder(model: str) -> Path | None:
    """The folder of a diffusers model MODEL names (a pipeline folder: its unet/), or None
    where MODEL is no folder with a diffusers config.json (a `_class_name`)."""
    path = Path(model)
    if (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file():
        path = path / "unet"
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return path if isinstance(data, dict) and "_class_name" in data else None


@dataclass(frozen=True)
class UNetSource:
    """The UNet a folder holds (its diffusers config and weights file, None: seeded), or a
    preset of the UNet bench's (`folder` None)."""

    folder: Path | None
    config: dict[str, Any]
    weights: Path | None
    preset: str = ""

    @property
    def label(self) -> str:
        if self.folder is None:
            return self.preset
        folder = self.folder.resolve()
        return folder.parent.name if folder.name == "unet" else folder.name

    @property
    def side(self) -> tuple[int, int]:
        size = self.config.get("sample_size") or 64
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def describe(self) -> str:
        weights = (
            f"weights from {self.weights}"
            if self.weights
            else "seeded random weights "
            "(no weights file: times do not depend on the values; the checks still run)"
        )
        h, w = self.side
        where = f"preset {self.preset}" if self.folder is None else str(self.folder)
        return (f"{self.label} ({UNET_CLASS} from {where}, latents "
                f"{self.config.get('in_channels', 4)}x{h}x{w}); {weights}")  # fmt: skip


def check_request(r: Request) -> None:
    """Refuse what a UNet does not take, naming the options; nothing is built."""
    defaults = {f.name: f.default for f in dataclasses.fields(Request)}
    given = [flag for name, flag in LLM_ONLY.items() if getattr(r, name) != defaults[name]]
    if given:
        raise UserInputError(f"{', '.join(given)}: a language model's; a UNet denoises --batch "
                             "latents of its config's sample_size (DoRA on its convolutions "
                             "does not convert: from_peft takes plain LoRA there)")  # fmt: skip
    described = (r.rank, r.alpha, r.targets, r.rslora or None)
    if r.adapter is not None and any(v is not None for v in described):
        raise UserInputError("--adapter FILE gives the adapter; --rank, --alpha, --targets and "
                             "--rslora describe one instead: give one or the other")  # fmt: skip
    if r.adapter is not None:
        adapter_file(Path(r.adapter))  # a missing file, before any UNet is built
    if r.targets is not None:
        names = [t.strip() for t in r.targets.split(",") if t.strip()]
        if not names:
            raise UserInputError(f"--targets {r.targets!r}: attn, attn+conv, or module names")


def unet_source(model: str) -> UNetSource | None:
    """What MODEL names if it is a UNet: a preset of the UNet bench (sd15, sd15-cpu,
    unet-tiny: seeded weights) or a diffusers model folder (resolve); None for anything else
    (the language-model path takes it)."""
    if model in UNETS:
        config, side, _ = UNETS[model]
        return UNetSource(None, {"_class_name": UNET_CLASS, **config, "sample_size": side},
                          None, model)  # fmt: skip
    folder = unet_folder(model)
    return None if folder is None else resolve(folder)


def resolve(folder: Path) -> UNetSource:
    """The folder's config checked for what the bench can feed; UserInputError otherwise."""
    reason = diffusers_missing()
    if reason:
        raise UserInputError(f"{folder} is a diffusers model: {reason}")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("_class_name") != UNET_CLASS:
        raise UserInputError(f"{folder} holds diffusers' {config.get('_class_name')}; "
                             f"`lora-bench model` takes a {UNET_CLASS} (or a language "
                             "model)")  # fmt: skip
    for key in ("class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim"):
        if config.get(key) is not None:
            raise UserInputError(f"{folder}: {key}={config[key]!r} needs inputs the bench does "
                                 "not make; it feeds latents, timesteps and text states (and "
                                 "SDXL's text_time conditioning)")  # fmt: skip
    if config.get("addition_embed_type") not in (None, "text_time"):
        raise UserInputError(f"{folder}: addition_embed_type="
                             f"{config['addition_embed_type']!r}; the bench feeds None or "
                             "'text_time' (SDXL's)")  # fmt: skip
    files = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    return UNetSource(folder, config, files[0] if files else None)


def load(source: UNetSource, dtype: torch.dtype, device: str) -> nn.Module:
    """The frozen UNet in eval mode on the device: its weights, or seeded ones."""
    from diffusers import UNet2DConditionModel

    reason = diffusers_missing()
    if reason:
        raise UserInputError(reason)
    if source.weights is not None:
        unet: Any = UNet2DConditionModel.from_pretrained(source.folder, torch_dtype=dtype)
    else:
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(source.config)
    return unet.to(device, dtype).eval().requires_grad_(False)


class Conditioned(nn.Module):
    """A UNet called with SDXL's added conditioning (text_embeds, time_ids) bound."""

    def __init__(self, unet: nn.Module, added: dict[str, Tensor]) -> None:
        super().__init__()
        self.unet, self.added = unet, added

    def forward(self, latents: Tensor, steps: Tensor, encoder_hidden_states: Tensor) -> Any:
        return self.unet(latents, steps, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs=self.added)  # fmt: skip


@dataclass
class Inputs:
    """Seeded (latents, timesteps, text states, noise) and SDXL's added conditioning."""

    tensors: tuple[Tensor, Tensor, Tensor, Tensor]
    added: dict[str, Tensor] | None

    def wrap(self, unet: nn.Module) -> nn.Module:
        return unet if self.added is None else Conditioned(unet, self.added)


def make_inputs(source: UNetSource, batch: int, dtype: torch.dtype, device: str) -> Inputs:
    c = source.config
    gen = torch.Generator().manual_seed(batch)
    dim = c.get("cross_attention_dim") or 768
    dim = dim if isinstance(dim, int) else int(dim[0])
    latents = torch.randn(batch, c.get("in_channels", 4), *source.side, generator=gen)
    text = torch.randn(batch, TEXT_TOKENS, dim, generator=gen)
    noise = torch.randn(batch, c.get("out_channels", 4), *source.side, generator=gen)
    steps = torch.randint(0, 1000, (batch,), generator=gen)
    added = None
    if c.get("addition_embed_type") == "text_time":
        time_dim = 6 * int(c["addition_time_embed_dim"])
        pooled = int(c["projection_class_embeddings_input_dim"]) - time_dim
        added = {"text_embeds": torch.randn(batch, pooled, generator=gen).to(device, dtype),
                 "time_ids": torch.tensor([[*source.side, 0, 0, *source.side]] * batch,
                                          dtype=dtype, device=device) * 8}  # fmt: skip
    return Inputs((latents.to(device, dtype), steps.to(device), text.to(device, dtype),
                   noise.to(device, dtype)), added)  # fmt: skip


@dataclass
class Adapter:
    label: str
    source: str
    notes: list[str]


def described(base: nn.Module, r: Request) -> tuple[nn.Module, Adapter]:
    """A copy of `base` with PEFT's LoRA on --targets (attn, attn+conv, or module names) as
    diffusers puts it (add_adapter), B seeded non-zero (a fresh adapter's B is zero: it would
    change nothing, and the checks would compare the frozen UNet with itself)."""
    from peft import LoraConfig

    rank = r.rank or 16
    alpha = r.alpha or 2.0 * rank
    spec = r.targets or "attn"
    targets = list(TARGETS.get(spec) or [t.strip() for t in spec.split(",") if t.strip()])
    unet: Any = copy.deepcopy(base)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, use_rslora=r.rslora)
    try:
        unet.add_adapter(config)
    except ValueError as err:  # PEFT: a target that matches no module
        raise UserInputError(f"--targets {spec}: {err}") from None
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02).to(p))
    scale = "alpha / sqrt(r)" if r.rslora else "alpha / r"
    label = f"r={rank} {spec}"
    return unet, Adapter(label, f"described: r={rank}, alpha={alpha:g} ({scale}) on {spec} "
                         "(B seeded non-zero)", [])  # fmt: skip


def adapter_file(path: Path) -> Path:
    """The LoRA file at `path`, or the one in the folder (pytorch_lora_weights.safetensors,
    or its only .safetensors)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserInputError(f"--adapter {path}: no such file or folder")
    named = path / "pytorch_lora_weights.safetensors"
    files = [named] if named.is_file() else sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        raise UserInputError(f"--adapter {path}: a diffusers LoRA folder holds "
                             "pytorch_lora_weights.safetensors (or one .safetensors file); "
                             f"found {len(files)}")  # fmt: skip
    return files[0]


def from_file(base: nn.Module, path: Path, sdxl: bool) -> tuple[nn.Module, Adapter]:
    """A copy of `base` with the file's UNet adapter loaded as diffusers loads it (its
    pipeline's lora_state_dict reads diffusers' and kohya's layouts; load_lora_adapter puts
    PEFT's layers on). The file's text-encoder layers are left out, and said so."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    file = adapter_file(path)
    loader: Any = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    try:
        state, alphas = loader.lora_state_dict(str(file))[:2]
    except Exception as err:  # diffusers: a file it cannot read as a LoRA
        raise UserInputError(f"--adapter {file}: diffusers cannot read it as a LoRA: "
                             f"{err}") from None  # fmt: skip
    unet_keys = [k for k in state if k.startswith("unet.")]
    if not unet_keys:
        raise UserInputError(
            f"--adapter {file}: no UNet layers in it (no key starts with "
            "'unet.'); a text encoder's adapter alone is not measured here"
        )
    unet: Any = copy.deepcopy(base)
    try:
        unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet",
                               adapter_name="default")  # fmt: skip
    except (ValueError, RuntimeError) as err:  # shapes or names not this UNet's
        raise UserInputError(f"--adapter {file} does not fit this UNet: {err}") from None
    ranks = [p.shape[0] for n, p in unet.named_parameters() if "lora_A" in n]
    downs = [k for k in unet_keys if k.endswith(DOWN_KEYS)]
    if len(ranks) < len(downs):  # diffusers loads what matches and only warns of the rest
        raise UserInputError(f"--adapter {file} does not fit this UNet: {len(downs) - len(ranks)}"
                             f" of its {len(downs)} layers match no module of it")  # fmt: skip
    notes = []
    if len(unet_keys) < len(state):
        notes.append(f"adapter: {len(state) - len(unet_keys)} tensors of the file are a text "
                     "encoder's, not measured (the UNet's only)")  # fmt: skip
    rank = max(set(ranks), key=ranks.count) if ranks else 0
    return unet, Adapter(file.stem, f"{file}: {len(ranks)} layers, r={rank} (most)", notes)


def build(name: str, peft: nn.Module) -> nn.Module:
    """A variant's UNet on PEFT's tensors: PEFT's itself, diffusers' fuse_lora on a copy,
    ours unmerged (from_peft on a copy sharing the tensors, run by "linear impl/conv impl"),
    or ours merged (from_peft and merge on a copy)."""
    if name == "peft":
        return peft
    if name in ("fused", "merged"):
        unet: Any = copy.deepcopy(peft)
        if name == "fused":
            unet.fuse_lora()
        else:
            from_peft(unet, impl="addmm", conv_impl="conv_add")
            merge(unet)
        return unet
    from bench.families.models import shared_copy

    linear, _, conv = name.partition("/")
    unet = shared_copy(peft)
    from_peft(unet, impl=linear, conv_impl=conv or None)
    return unet


CPU_MEMORY = "tensors: parameters, their gradients, and what autograd saved"
CUDA_MEMORY = "torch.cuda.max_memory_allocated over one call"
ORIGINS = {"peft": "peer", "fused": "peer"}


class Measurement:
    """The run's state: the frozen UNet, PEFT's, the inputs, PEFT's prediction."""

    def __init__(self, r: Request, source: UNetSource, say: Say) -> None:
        self.r, self.source, self.say = r, source, say
        self.dtype = DTYPES[r.dtype_name]
        self.tol = UNET_TOLERANCE.get(r.dtype_name, 3e-2)
        self.entries: list[UserModelEntry] = []
        self.screened: list[str] = []
        h, w = source.side
        self.sizes = f"N={r.batch} {h}x{w}"

    def case(self, adapter: str) -> tuple[str, str]:
        key = f"{self.source.label} {adapter} {self.sizes} {self.r.dtype_name}"
        return f"{key} {torch.device(self.r.device).type}", key

    def fits(self, base: nn.Module) -> tuple[int, int]:
        """(bytes needed, bytes free): the frozen UNet, PEFT's copy and a merged copy."""
        size = sum(t.numel() * t.element_size() for t in base.parameters())
        if torch.device(self.r.device).type == "cuda":
            free = torch.cuda.mem_get_info()[0] + size
        else:
            import psutil

            free = psutil.virtual_memory().available + size
        need = 3 * size
        if need > free:
            raise UserInputError(f"{self.source.label}: about {need / 2**30:.1f} GiB is needed "
                                 f"(the UNet, PEFT's copy and a merged copy) and "
                                 f"{free / 2**30:.1f} GiB is free on {self.r.device}; a "
                                 "smaller --dtype would fit less")  # fmt: skip
        return need, free

    def memory(self, model: nn.Module, work: Callable[[], object]) -> tuple[int, str]:
        if torch.device(self.r.device).type == "cuda":
            return cuda_peak(work), CUDA_MEMORY
        return tensor_bytes(model, work), CPU_MEMORY

    def phase(self, phase: str, names: tuple[str, ...], base: nn.Module, peft: nn.Module,
              inputs: Inputs, adapter: Adapter, trainable: int) -> None:  # fmt: skip
        """Each variant of the phase ("denoise" or "train") checked against PEFT's and timed
        in pairs with the frozen UNet's same call."""
        work_of = denoise if phase == "denoise" else train_step
        frozen = work_of(inputs.wrap(base), inputs.tensors)
        frozen()
        frozen_s = seconds_of(frozen, self.r.device)
        want = denoise(inputs.wrap(peft), inputs.tensors)()
        grads = self.grads(peft, inputs) if phase == "train" else {}
        for name in names:
            try:
                model, build_s = self.built(name, peft)
            except ValueError as err:  # from_peft refuses a layer, naming it
                self.screened.append(f"{phase} {name}: {err}")
                continue
            error = self.error(name, model, inputs, want, grads)
            if not error <= self.tol:
                self.screened.append(f"{phase} {name}: rel error {error:.3g} against PEFT's > "
                                     f"{self.tol:g}; not timed")  # fmt: skip
                continue
            self.say(f"  timing {phase} {name} ...")
            work = work_of(inputs.wrap(model), inputs.tensors)
            work()  # warm: the optimizer's state
            call_s = seconds_of(work, self.r.device)
            timer = timed((work, frozen), self.r.device, self.r.seconds, max(call_s, frozen_s))
            peak, method = self.memory(model, work)
            self.entries.append(self.entry(name, phase, timer.paired(), adapter, trainable,
                                           rel_error=error, build_s=build_s, peak_bytes=peak,
                                           memory_method=method))  # fmt: skip
            del model, work
            gc.collect()

    def built(self, name: str, peft: nn.Module) -> tuple[nn.Module, float]:
        """The variant's UNet (build) and the seconds its build took, synchronized."""
        holder: list[nn.Module] = []
        seconds = seconds_of(lambda: holder.append(build(name, peft)), self.r.device)
        return holder[0], seconds

    def grads(self, model: nn.Module, inputs: Inputs) -> dict[str, Tensor]:
        """The LoRA gradients of one training step (lr 0: nothing changes), copies."""
        train_step(inputs.wrap(model), inputs.tensors)()
        out = {k.replace("unet.", "", 1): g.clone() for k, g in lora_grads(model).items()}
        model.zero_grad(set_to_none=True)
        return out

    def error(self, name: str, model: nn.Module, inputs: Inputs, want: Tensor,
              grads: dict[str, Tensor]) -> float:  # fmt: skip
        """The worst relative error of the prediction (and every LoRA gradient) against
        PEFT's; inf where the trained tensors are not PEFT's."""
        errors = [rel_error(denoise(inputs.wrap(model), inputs.tensors)(), want)]
        if grads and name != "peft":
            mine = self.grads(model, inputs)
            if mine.keys() != grads.keys():
                return float("inf")
            errors += [rel_error(mine[k], g) for k, g in grads.items()]
        return max(errors)

    def entry(self, name: str, phase: str, rounds: Paired, adapter: Adapter, trainable: int,
              **figures: Any) -> UserModelEntry:  # fmt: skip
        case, key = self.case(adapter.label)
        h, w = self.source.side
        return UserModelEntry(
            fullname=f"lora-bench model {case} {name} {phase}", case=case, key=key,
            model=self.source.label, adapter=adapter.label, variant=name,
            origin=ORIGINS.get(name, "ours"), merged=name in ("fused", "merged"),
            compiled=False, phase=phase, batch=self.r.batch, adapters=1, steps=1,
            tokens=self.r.batch * h * w, dtype=self.r.dtype_name,
            device=torch.device(self.r.device).type, tokens_equal=1.0, compile_s=0.0,
            threads=self.r.threads, trainable=trainable, rounds=rounds, **figures,
        )  # fmt: skip

    def merges(self, peft: nn.Module) -> dict[str, list[float]]:
        """diffusers' fuse_lora against our merge, each on a fresh copy of PEFT's UNet (the
        copy made before the clock), MERGE_REPEATS times."""
        out: dict[str, list[float]] = {"diffusers fuse_lora": [], "ours": []}
        for _ in range(MERGE_REPEATS):
            theirs: Any = copy.deepcopy(peft)
            out["diffusers fuse_lora"].append(seconds_of(theirs.fuse_lora, self.r.device))
            del theirs
            ours = copy.deepcopy(peft)
            from_peft(ours, impl="addmm", conv_impl="conv_add")
            out["ours"].append(seconds_of(functools.partial(merge, ours), self.r.device))
            del ours
            gc.collect()
        self.say(
            f"  merge {statistics.median(out['ours']) * 1e3:.1f} ms (ours) / "
            f"{statistics.median(out['diffusers fuse_lora']) * 1e3:.1f} ms (fuse_lora)"
        )
        return out


def measure(r: Request, source: UNetSource, allocator: str, say: Say) -> Run:
    """The UNet of `source` (resolve) with the request's adapter (check_request passed): see
    the module's docstring."""
    m = Measurement(r, source, say)
    say(f"model: {source.describe()}")
    base = load(source, m.dtype, r.device)
    need, free = m.fits(base)
    if r.adapter is None:
        peft, adapter = described(base, r)
    else:
        sdxl = source.config.get("addition_embed_type") == "text_time"
        peft, adapter = from_file(base, Path(r.adapter), sdxl)
    say(f"adapter: {adapter.source}")
    inputs = make_inputs(source, r.batch, m.dtype, r.device)
    notes = list(adapter.notes)
    frozen_out = denoise(inputs.wrap(base), inputs.tensors)()
    if rel_error(denoise(inputs.wrap(peft), inputs.tensors)(), frozen_out) == 0:
        notes.append("the adapter does not change the UNet's prediction (its B is zero?): the "
                     "checks against PEFT's compare the frozen function")  # fmt: skip
    lora = [n for n, _ in peft.named_modules() if n.endswith(".lora_A")]
    trainable = sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)
    convs = any(is_peft_conv(mod) for mod in peft.modules())
    names = {phase: tuple(n if convs else n.partition("/")[0] for n in variants)
             for phase, variants in (("denoise", DENOISE), ("train", TRAIN))}  # fmt: skip
    if r.mode in ("generate", "all"):
        m.phase("denoise", names["denoise"], base, peft, inputs, adapter, trainable)
    if r.mode in ("train", "all"):
        for n, p in peft.named_parameters():
            p.requires_grad_("lora_" in n)
        m.phase("train", names["train"], base, peft, inputs, adapter, trainable)
        peft.requires_grad_(False)
    merge_s = m.merges(peft)
    blocks = len(source.config.get("down_block_types") or ()) or 1
    info = UserModelInfo(
        model=source.label, model_source=source.describe(), adapter=adapter.label,
        adapter_source=adapter.source, blocks=blocks, total_blocks=blocks,
        random_weights=source.weights is None, adapted_layers=len(lora), seconds=r.seconds,
        estimate_bytes=need, free_bytes=free, screened=m.screened, notes=notes, load_s={},
        merge_s=merge_s, model_kind="unet",
    )  # fmt: skip
    meta = command_meta(r.device, "model", r.threads, [r.dtype_name], "warm", allocator)
    return Run(meta, *command_infos(), [*m.entries, info])
