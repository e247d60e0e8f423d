"""The adapter `lora-bench model` measures: a PEFT folder (its config read, its weights'
shapes checked against the model from the file's header before anything is built), or one
described by rank, alpha and targets; PEFT's model of it, and of several for a mixed batch."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.families import models
from bench.families.user_model import Source, UserInputError, block_of, bnb_fp32_path
from lora_kernels.adapters import CONFIG as ADAPTER_CONFIG
from lora_kernels.adapters import WEIGHTS as ADAPTER_WEIGHTS
from lora_kernels.adapters import split_key
from lora_kernels.inject import as_linear, is_conv1d


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
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
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
    linears = {n: _in_out(m) for n, m in meta.named_modules()
               if isinstance(m, nn.Linear) or is_conv1d(m)}  # fmt: skip
    modules = [n for n, _ in meta.named_modules()]
    if spec.folder is None:
        _check_targets(spec.targets, linears, modules, source)
        return []
    shapes = _safetensors_shapes(spec.folder / ADAPTER_WEIGHTS)
    dropped: set[str] = set()
    order = {name: i for i, name in enumerate(modules)}  # the model's order: the first is named
    known = set(modules)

    parts = {key: parsed for key in shapes if (parsed := split_key(key)) is not None}
    if not parts:
        raise UserInputError(f"--adapter {spec.folder}: {ADAPTER_WEIGHTS} holds no LoRA weights")
    for key, (module, part) in sorted(
        parts.items(), key=lambda kv: order.get(kv[1][0], len(order))
    ):
        shape = shapes[key]
        block = block_of(module)
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
        in_f, out_f = linears[module]
        want = {"lora_A": f"(r, {in_f})", "lora_B": f"({out_f}, r)",
                "lora_magnitude_vector": f"({out_f},)"}  # fmt: skip
        ok = {"lora_A": len(shape) == 2 and shape[1] == in_f,
              "lora_B": len(shape) == 2 and shape[0] == out_f,
              "lora_magnitude_vector": shape == (out_f,)}[part]  # fmt: skip
        if not ok:
            raise UserInputError(f"--adapter {spec.folder}: {module} {part} is {shape}, but "
                                 f"{source.label}'s {module} is ({out_f}, {in_f}) and needs "
                                 f"{want[part]}: an adapter made for another model")  # fmt: skip
    notes = []
    if dropped:
        notes.append(f"the adapter's weights for {len(dropped)} modules in blocks past --blocks "
                     f"{source.blocks} are left out with those blocks")  # fmt: skip
    return notes


def _in_out(module: nn.Module) -> tuple[int, int]:
    """(in, out) of an nn.Linear or a transformers Conv1D (weight (in, out))."""
    linear = as_linear(module)
    return linear.in_features, linear.out_features


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
    return any(is_conv1d(m) for m in model.modules())


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
        with warnings.catch_warnings():  # peft >= 0.22 warns of the keys of blocks that
            # --blocks left out; check_adapter has matched the adapter to the model already
            warnings.filterwarnings("ignore", "Found unexpected adapter keys", UserWarning)
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
