"""The user's own model and adapter for `lora-bench model`: what MODEL names (a folder as
save_pretrained writes it, a config.json, a preset, or a Hub id), kept to its first blocks if
asked; the adapter (a PEFT folder, or described by rank, alpha and targets), checked against
the model before anything is built; and whether the run fits the device's memory.

Every check here raises UserInputError with one line saying what is wrong and what is
allowed; nothing is built or measured before they pass."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.families import models

CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")  # the block count's field
PER_LAYER_LISTS = ("layer_types",)  # config lists with one item per block
FIT_SHARE = 0.9  # of the free memory a run may plan to use


def quiet_libraries() -> None:
    """Keep transformers' and PEFT's progress bars, deprecation notices and advice off the
    command's output; errors still show."""
    import importlib.util
    import logging
    import warnings

    if importlib.util.find_spec("transformers") is None:
        return  # the run refuses, saying which extra to install
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph breaks: counted instead
    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)


class UserInputError(ValueError):
    """A MODEL, adapter or option that cannot be measured: one line, exit 2."""


@dataclass(frozen=True)
class Source:
    """What MODEL resolved to: a transformers config (kept to `blocks` of `total_blocks`) and
    the folder whose safetensors weights load into it (None: seeded random weights)."""

    label: str  # what the figures call the model
    how: str  # "folder", "config", "preset" or "hub"
    config: Any  # a transformers PretrainedConfig
    weights: Path | None
    blocks: int
    total_blocks: int

    @property
    def model_type(self) -> str:
        return str(self.config.model_type)

    def describe(self) -> str:
        kept = (f", its first {self.blocks} of {self.total_blocks} blocks at their real widths"
                if self.blocks < self.total_blocks else f", {self.blocks} blocks")  # fmt: skip
        weights = (f"weights from {self.weights}" if self.weights else
                   "seeded random weights (no weights given: times do not depend on the "
                   "values; the checks still run)")  # fmt: skip
        return f"{self.label} ({self.model_type} from {self.how}{kept}); {weights}"


def _layer_field(config: Any) -> str:
    for name in LAYER_FIELDS:
        if isinstance(getattr(config, name, None), int):
            return name
    raise UserInputError(
        f"{type(config).__name__} gives no block count ({', '.join(LAYER_FIELDS)})"
    )


def _causal(config: Any, where: str) -> None:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserInputError(f"{where}: transformers cannot build a causal language model of "
                             f"model_type {config.model_type!r}; lora-bench model measures "
                             "AutoModelForCausalLM architectures (Llama, Qwen2, Mistral, Gemma, "
                             "Phi-3, GPT-2, ...)")  # fmt: skip


def _config_file(path: Path) -> Any:
    import transformers

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise UserInputError(f"{path}: not a transformers config (no model_type)")
    try:
        return transformers.AutoConfig.for_model(data.pop("model_type"), **data)
    except (ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"{path}: transformers cannot read this config ({err})") from None


def _preset_config(name: str) -> Any:
    import transformers

    preset = models.MODELS.get(name) or models.PRESETS[name]
    fields = dict(preset.hf)
    if "model_type" not in fields or fields["model_type"] == "bert":
        raise UserInputError(f"preset {name!r} has no causal language model to build; presets "
                             f"that do: {', '.join(buildable_presets())}")  # fmt: skip
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def buildable_presets() -> list[str]:
    """The presets `lora-bench model` builds: those with a causal LM's transformers config."""
    named = {**models.PRESETS, **models.MODELS}
    return [n for n, p in named.items() if p.hf.get("model_type") not in (None, "bert")]


def resolve(model: str, blocks: int | None = None) -> Source:
    """The Source MODEL names, kept to its first `blocks` blocks (None: all)."""
    path = Path(model)
    weights: Path | None = None
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise UserInputError(f"{path}: no {CONFIG}; a model folder is what save_pretrained "
                                 f"writes ({CONFIG}, with *.safetensors weights)")  # fmt: skip
        config, how, label = _config_file(path / CONFIG), "folder", path.resolve().name
        weights = path if any(path.glob("*.safetensors")) else None
    elif path.is_file():
        if path.suffix != ".json":
            raise UserInputError(f"{path}: give a model folder or its {CONFIG}, not a "
                                 f"{path.suffix or 'suffix-less'} file")  # fmt: skip
        config, how, label = _config_file(path), "config", path.resolve().parent.name
    elif model in models.MODELS or model in models.PRESETS:
        config, how, label = _preset_config(model), "preset", model
    else:
        config, how, label = _hub_config(model), "hub", model.rsplit("/", 1)[-1]
    _causal(config, model)
    return keep_blocks(Source(label, how, config, weights, 0, 0), blocks)


def _hub_config(model: str) -> Any:
    import transformers

    if model.count("/") != 1 or model.startswith(("/", ".")):
        raise UserInputError(
            f"{model}: neither a model folder, a config.json, a preset "
            f"({', '.join(buildable_presets())}) nor a Hub id (owner/name)"
        )
    try:
        return transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"{model}: not a folder or preset, and transformers could not "
                             f"fetch its config from the Hub ({first})") from None  # fmt: skip


def keep_blocks(source: Source, blocks: int | None) -> Source:
    """The source kept to its first `blocks` blocks: 1..total, or None for all."""
    import copy

    config = copy.deepcopy(source.config)
    name = _layer_field(config)
    total = getattr(config, name)
    if blocks is None:
        blocks = total
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= total:
        raise UserInputError(f"--blocks {blocks}: {source.label} has {total} blocks; keep "
                             f"1..{total}")  # fmt: skip
    setattr(config, name, blocks)
    for listed in PER_LAYER_LISTS:
        value = getattr(config, listed, None)
        if isinstance(value, list) and len(value) == total:
            setattr(config, listed, value[:blocks])
    return Source(source.label, source.how, config, source.weights, blocks, total)


BASE_DTYPES = ("nf4", "int8")  # --base-dtype: the frozen linear weights quantized (QLoRA)
NF4_BLOCK = 64  # quantize_linears' block size


def bnb_fp32_path(model: nn.Module) -> None:
    """Put bitsandbytes' layers in training mode, their fp32 path (see quant.peers.bnb_layer:
    in eval mode on a CPU its 4-bit layer computes another function); nothing else changes."""
    for m in model.modules():
        if type(m).__name__ in ("Linear4bit", "Linear8bitLt"):
            m.train()


def check_quantizable(meta: nn.Module, base_dtype: str, device: str, label: str) -> None:
    """Refuse a --base-dtype the model's linear layers cannot take, naming the first one."""
    if base_dtype not in BASE_DTYPES:
        raise UserInputError(f"--base-dtype {base_dtype!r}: allowed {', '.join(BASE_DTYPES)}")
    if base_dtype == "int8" and torch.device(device).type == "cuda":
        raise UserInputError(
            "--base-dtype int8 on CUDA: bitsandbytes' int8 layer quantizes "
            "the activations too there (LLM.int8), another function; use nf4"
        )
    for name, m in meta.named_modules():
        if type(m).__name__ == "Conv1D":
            raise UserInputError(
                f"--base-dtype {base_dtype}: {label}'s {name} is a "
                "transformers Conv1D; only nn.Linear layers are quantized"
            )
        if base_dtype == "nf4" and isinstance(m, nn.Linear) and \
                m.in_features % NF4_BLOCK:  # fmt: skip
            raise UserInputError(f"--base-dtype nf4: {label}'s {name} takes {m.in_features} "
                                 f"inputs, not a multiple of the block size {NF4_BLOCK} "
                                 "(bitsandbytes' CPU kernel decodes a block straddling two rows "
                                 "wrongly)")  # fmt: skip


def build(source: Source, dtype: torch.dtype, device: str, base_dtype: str | None = None
          ) -> nn.Module:  # fmt: skip
    """The frozen model in eval mode (dropout off) on `device` in `dtype`: its weights loaded
    from the folder (the first `blocks` blocks), or seeded random ones; with `base_dtype`
    its linear layers (the output layer left out) quantized to bitsandbytes' layers."""
    import transformers

    torch.manual_seed(0)
    if source.weights is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            source.weights, config=source.config, dtype=dtype
        ).to(device)
    else:
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(source.config)
    model = model.to(dtype).eval().requires_grad_(False)
    if base_dtype is not None:
        from lora_kernels import quantize_linears

        quantize_linears(model, base_dtype)
        bnb_fp32_path(model)
    return model


def meta_model(source: Source) -> nn.Module:
    """The model's module tree without memory (the meta device): names, shapes, counts."""
    import transformers

    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(source.config)


# --- the adapter -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterSpec:
    """A PEFT adapter folder, or one described: rank, alpha, targets, DoRA, rsLoRA."""

    folder: Path | None = None
    rank: int = 16
    alpha: float | None = None  # None: 2 x rank
    targets: str = "all-linear"
    dora: bool = False
    rslora: bool = False
    config: dict[str, Any] = field(default_factory=dict)  # the folder's adapter_config.json

    @property
    def label(self) -> str:
        if self.folder is not None:
            return self.folder.resolve().name
        kind = "DoRA" if self.dora else "LoRA"
        return f"{kind} r={self.rank} {self.targets}" + (" rsLoRA" if self.rslora else "")

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora")) if self.folder else self.dora

    def describe(self) -> str:
        if self.folder is None:
            alpha = self.alpha if self.alpha is not None else 2 * self.rank
            return (f"{self.label}, alpha {alpha:g}, A and B random (B non-zero, so the checks "
                    "see the adapter)")  # fmt: skip
        c = self.config
        extra = [k for k in ("use_dora", "use_rslora") if c.get(k)]
        patterns = [k for k in ("rank_pattern", "alpha_pattern") if c.get(k)]
        targets = c.get("target_modules")
        if isinstance(targets, list):  # PEFT saves all-linear as every module's full name
            ends = sorted({str(t).rsplit(".", 1)[-1] for t in targets})
            full = any("." in str(t) for t in targets)
            targets = f"{len(targets)} modules ending in " * full + ", ".join(ends)
        return (
            f"{self.folder} (r={c.get('r', 8)}, alpha {c.get('lora_alpha', 8)}, targets "
            f"{targets}{''.join(', ' + k for k in extra + patterns)})"
        )


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header, reading no tensor data."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if not 0 < size < 2**27:
                raise ValueError(f"header size {size}")
            header = json.loads(fh.read(size))
        shapes: dict[str, tuple[int, ...]] = {}
        for key, value in header.items():
            if key != "__metadata__":
                shapes[key] = tuple(value["shape"])
        return shapes
    except (OSError, ValueError, KeyError, TypeError, struct.error) as err:
        raise UserInputError(f"{path}: not a readable safetensors file ({err})") from None


def adapter_spec(folder: str | None, **described: Any) -> AdapterSpec:
    """The adapter of --adapter DIR (its config read, its weights' shapes from the header),
    or the one --rank/--alpha/--targets/--dora/--rslora describe."""
    if folder is None:
        return AdapterSpec(None, **described)
    path = Path(folder)
    if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        raise UserInputError(f"--adapter {path}: not a PEFT adapter folder (it holds "
                             f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")  # fmt: skip
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"{path / ADAPTER_CONFIG}: not a readable JSON file ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise UserInputError(
            f"{path / ADAPTER_CONFIG}: not a LoRA adapter (peft_type "
            f"{config.get('peft_type') if isinstance(config, dict) else None!r})"
        )
    return AdapterSpec(path, config=config)


def check_adapter(spec: AdapterSpec, source: Source, meta: nn.Module) -> list[str]:
    """Check the adapter against the model's modules before anything is built: every module
    it holds weights for must be a linear layer of the model (blocks past --blocks are left
    out, and said so) with the weights' shapes. Returns notes for the output."""
    linears = {n: _in_out(m) for n, m in meta.named_modules() if _in_out(m) is not None}
    modules = [n for n, _ in meta.named_modules()]
    if spec.folder is None:
        _check_targets(spec.targets, linears, modules, source)
        return []
    shapes = _safetensors_shapes(spec.folder / ADAPTER_WEIGHTS)
    dropped: set[str] = set()
    order = {name: i for i, name in enumerate(modules)}  # the model's order: the first is named
    known = set(modules)

    def position(item: tuple[str, tuple[int, ...]]) -> int:
        return order.get(_split_key(item[0])[0], len(order))

    for key, shape in sorted(shapes.items(), key=position):
        module, part = _split_key(key)
        if part is None:
            continue
        block = _block_of(module)
        if block is not None and block >= source.blocks:
            dropped.add(module)
            continue
        if module in known and module not in linears:
            continue  # PEFT adapts it (an embedding, a convolution); it checks the shapes
        if module not in linears:
            ends = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linears}))
            raise UserInputError(f"--adapter {spec.folder}: weights for {module}, which is not a "
                                 f"linear layer of {source.label} (its linear layers end in "
                                 f"{ends}): an adapter made for another model")  # fmt: skip
        in_f, out_f = linears[module]  # type: ignore[misc]
        want = {"lora_A": f"(r, {in_f})", "lora_B": f"({out_f}, r)", "magnitude": f"({out_f},)"}
        ok = {"lora_A": len(shape) == 2 and shape[1] == in_f,
              "lora_B": len(shape) == 2 and shape[0] == out_f,
              "magnitude": shape == (out_f,)}[part]  # fmt: skip
        if not ok:
            raise UserInputError(f"--adapter {spec.folder}: {module} {part} is {shape}, but "
                                 f"{source.label}'s {module} is ({out_f}, {in_f}) and needs "
                                 f"{want[part]}: an adapter made for another model")  # fmt: skip
    if not any(_split_key(k)[1] for k in shapes):
        raise UserInputError(f"--adapter {spec.folder}: {ADAPTER_WEIGHTS} holds no LoRA weights")
    notes = []
    if dropped:
        notes.append(f"the adapter's weights for {len(dropped)} modules in blocks past --blocks "
                     f"{source.blocks} are left out with those blocks")  # fmt: skip
    return notes


def _split_key(key: str) -> tuple[str, str | None]:
    """(module, "lora_A" | "lora_B" | "magnitude" | None) of a PEFT adapter key."""
    name = key.removeprefix(PEFT_PREFIX)
    for suffix, part in ((".lora_A.weight", "lora_A"), (".lora_B.weight", "lora_B"),
                         (".lora_magnitude_vector", "magnitude")):  # fmt: skip
        if name.endswith(suffix):
            return name.removesuffix(suffix), part
    return name, None


def _block_of(module: str) -> int | None:
    """The block index in a module name (model.layers.3.mlp -> 3), or None."""
    for part in module.split("."):
        if part.isdigit():
            return int(part)
    return None


def _in_out(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of an nn.Linear or a transformers Conv1D (weight (in, out)), else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        weight: Any = module.weight
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def _check_targets(targets: str, linears: dict[str, Any], modules: list[str], source: Source
                   ) -> None:  # fmt: skip
    """Every target names a module of the model (PEFT's suffix match)."""
    if targets == "all-linear":
        return
    names = [t.strip() for t in targets.split(",") if t.strip()]
    ends = sorted({n.rsplit(".", 1)[-1] for n in linears})
    missing = [t for t in names if not any(n == t or n.endswith(f".{t}") for n in modules)]
    if not names or missing:
        raise UserInputError(f"--targets {missing[0] if missing else targets!r}: {source.label} "
                             f"has no such linear layer; its linear layers end in "
                             f"{', '.join(ends)} (or all-linear)")  # fmt: skip


def conv1d(model: nn.Module) -> bool:
    """Whether the model's linear layers are transformers' Conv1D (GPT-2: W stored (in, out))."""
    return any(type(m).__name__ == "Conv1D" for m in model.modules())


def _described(spec: AdapterSpec, base: nn.Module) -> Any:
    """The LoraConfig of a described adapter, A and B random (B non-zero)."""
    from peft import LoraConfig

    targets: Any = spec.targets if spec.targets == "all-linear" else \
        [t.strip() for t in spec.targets.split(",") if t.strip()]  # fmt: skip
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha or 2 * spec.rank,
                      target_modules=targets, use_dora=spec.dora, use_rslora=spec.rslora,
                      init_lora_weights=False, fan_in_fan_out=conv1d(base))  # fmt: skip


def peft_model(base: nn.Module, spec: AdapterSpec) -> nn.Module:
    """PEFT's model of the adapter on a shared copy of `base`, in base's dtype, eval mode."""
    from peft import PeftModel, get_peft_model

    copy_ = models.shared_copy(base)
    if spec.folder is not None:
        peft = PeftModel.from_pretrained(copy_, spec.folder, autocast_adapter_dtype=False)
    else:
        torch.manual_seed(1)
        peft = get_peft_model(copy_, _described(spec, base), autocast_adapter_dtype=False)
        if spec.dora:  # a magnitude off the norms, so DoRA's own term counts
            _scale(peft, "magnitude", 4)
    peft.eval().requires_grad_(False)
    bnb_fp32_path(peft)
    return peft


def _scale(peft: nn.Module, part: str, seed: int, adapter: str = "") -> None:
    """Multiply the adapter's `part` tensors by seeded factors in [0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if part in name and adapter in name:
                p.mul_((torch.rand(p.shape, generator=gen) + 0.5).to(p.device, p.dtype))


def peft_mixed(base: nn.Module, spec: AdapterSpec, n: int) -> nn.Module:
    """PEFT's model holding `n` adapters a0..a{n-1} on a shared copy of `base`: the folder's
    adapter and n - 1 others of its layout (its B scaled by seeded factors, so each computes
    its own function), or n described ones drawn from their own seeds."""
    from peft import PeftModel, get_peft_model

    copy_ = models.shared_copy(base)
    if spec.folder is not None:
        peft: Any = PeftModel.from_pretrained(copy_, spec.folder, adapter_name="a0",
                                              autocast_adapter_dtype=False)  # fmt: skip
        for i in range(1, n):
            peft.load_adapter(spec.folder, adapter_name=f"a{i}", autocast_adapter_dtype=False)
            _scale(peft, "lora_B", 10 + i, adapter=f".a{i}.")
    else:
        config = _described(spec, base)
        torch.manual_seed(10)
        peft = get_peft_model(copy_, config, adapter_name="a0", autocast_adapter_dtype=False)
        for i in range(1, n):
            torch.manual_seed(10 + i)
            peft.add_adapter(f"a{i}", config)
    return peft.eval().requires_grad_(False)


# --- will it fit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """The planned peak of a run against the memory free on its device."""

    estimate: int
    per_block: int
    free: int
    blocks: int

    @property
    def fits(self) -> bool:
        return self.estimate <= FIT_SHARE * self.free

    def blocks_that_fit(self) -> int:
        fixed = self.estimate - self.per_block * self.blocks
        room = FIT_SHARE * self.free - fixed
        return max(0, min(self.blocks, math.floor(room / max(self.per_block, 1))))


def free_bytes(device: str) -> int:
    """Memory free on the device: CUDA's free memory, or the CPU's available memory."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def fit(source: Source, meta: nn.Module, size: int, tokens: int, batch: int, kv_tokens: int,
        device: str, base_dtype: str | None = None, copies: int = 2) -> Fit:  # fmt: skip
    """The planner's estimate of the run's peak: the weights `copies` times (the frozen model
    and a variant's merged copy; a third with --compile, which keeps every timed variant for
    its compiled twin), the KV caches of three decoders (frozen, reference, variant) over
    `kv_tokens` tokens, and a training step's activations over `tokens` tokens (the linear
    layers' inputs, attention's and the MLP's, 4 per block, and the logits in fp32 thrice)."""
    c = source.config
    params = sum(p.numel() for p in meta.parameters())
    hidden = int(getattr(c, "hidden_size", 0) or getattr(c, "n_embd", 0))
    ffn = int(getattr(c, "intermediate_size", 0) or getattr(c, "n_inner", 0) or 4 * hidden)
    heads = int(getattr(c, "num_attention_heads", 0) or getattr(c, "n_head", 1))
    kv_heads = int(getattr(c, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(c, "head_dim", 0) or hidden // heads)
    vocab = int(getattr(c, "vocab_size", 0))
    block_params = sum(p.numel() for n, p in meta.named_parameters() if _block_of(n) is not None)
    per_block_weights = block_params // max(source.blocks, 1)
    if base_dtype is not None:  # codes and scales: about half a byte (nf4) or a byte a weight
        per_block_weights = int(per_block_weights * (0.56 if base_dtype == "nf4" else 1.05) / size)
    kv = 3 * 2 * batch * kv_tokens * kv_heads * head_dim * size
    acts = batch * tokens * (4 * hidden + 2 * ffn) * size
    per_block = int(copies * per_block_weights * size + kv + acts)
    fixed = copies * (params - block_params) * size + 3 * 4 * batch * tokens * vocab
    return Fit(fixed + per_block * source.blocks, per_block, free_bytes(device), source.blocks)
