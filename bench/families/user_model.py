"""The user's own model for `lora-bench model`: what MODEL names (a folder as save_pretrained
writes it, a config.json, a preset, or a Hub id), kept to its first blocks if asked, built
(quantized for QLoRA if asked); and whether the run fits the device's memory. The adapter is
user_adapter's.

Every check here raises UserInputError with one line saying what is wrong and what is
allowed; nothing is built or measured before they pass."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.families import models
from lora_kernels.planner import NF4_BLOCK  # quantize_linears' block size too

CONFIG = "config.json"
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")  # the block count's field
PER_LAYER_LISTS = ("layer_types",)  # config lists with one item per block
FIT_SHARE = 0.9  # of the free memory a run may plan to use


def quiet_libraries() -> None:
    """Keep transformers', diffusers' and PEFT's progress bars, deprecation notices and advice
    off the command's output; errors still show."""
    import importlib.util
    import logging
    import warnings

    if importlib.util.find_spec("diffusers") is not None:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
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


def block_of(module: str) -> int | None:
    """The block index in a module name (model.layers.3.mlp -> 3), or None."""
    for part in module.split("."):
        if part.isdigit():
            return int(part)
    return None


def meta_model(source: Source) -> nn.Module:
    """The model's module tree without memory (the meta device): names, shapes, counts."""
    import transformers

    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(source.config)


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
    block_params = sum(p.numel() for n, p in meta.named_parameters() if block_of(n) is not None)
    per_block_weights = block_params // max(source.blocks, 1)
    if base_dtype is not None:  # codes and scales: about half a byte (nf4) or a byte a weight
        per_block_weights = int(per_block_weights * (0.56 if base_dtype == "nf4" else 1.05) / size)
    kv = 3 * 2 * batch * kv_tokens * kv_heads * head_dim * size
    acts = batch * tokens * (4 * hidden + 2 * ffn) * size
    per_block = int(copies * per_block_weights * size + kv + acts)
    fixed = copies * (params - block_params) * size + 3 * 4 * batch * tokens * vocab
    return Fit(fixed + per_block * source.blocks, per_block, free_bytes(device), source.blocks)
