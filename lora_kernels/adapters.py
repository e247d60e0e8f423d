"""Adapters in PEFT's file format on a model of LoRALinear layers: save, load, switch, delete
and hot-swap, as PEFT's PeftModel does for its own layers.

A folder holds `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<module>.lora_A.weight` (r, in), `.lora_B.weight` (out, r) and, for DoRA,
`.lora_magnitude_vector` (out,). The model keeps every loaded adapter in a bank beside its
layers; `set_adapter` points each layer at the chosen adapter's tensors (no copy), so a switch
costs the same with 1 adapter loaded or 64. An adapter may cover some of the model's LoRA layers,
as in PEFT: while it is active, the layers it leaves out run their base layer alone. Every
function checks all of its input before the model changes: a refusal leaves the model as it
was.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lora_kernels.inject import lora_layers
from lora_kernels.layer import LoRALinear
from lora_kernels.weights import all_finite

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's prefix of every key, and of a PeftModel's module names
DEFAULT = "default"  # the name of the adapter the layers hold before any load, as in PEFT
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB]\.weight|lora_magnitude_vector)$")


@dataclass(frozen=True)
class LayerAdapter:
    """One layer's adapter: A (r, in), B (out, r), alpha, the scale s, DoRA's magnitude (out,)."""

    A: nn.Parameter
    B: nn.Parameter
    alpha: float
    scale: float
    magnitude: nn.Parameter | None = None

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


@dataclass
class Bank:
    """The adapters a model holds, by name ({module: LayerAdapter}, the modules each covers),
    and the active one."""

    adapters: dict[str, dict[str, LayerAdapter]] = field(default_factory=dict)
    active: str = DEFAULT


def _layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRALinear layers by module name as PEFT's files spell it (no prefix)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = {name.removeprefix(PREFIX): layer for name, layer in lora_layers(model)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRALinear layer; inject() first")
    return layers


def _held(layer: LoRALinear) -> LayerAdapter:
    p: dict[str, Any] = layer._parameters
    return LayerAdapter(p["lora_A"], p["lora_B"], layer.alpha, layer.scale, p.get("lora_magnitude"))


def bank(model: nn.Module) -> Bank:
    """The model's bank; made on first use with the adapter its layers hold, as "default"."""
    layers = _layers(model)
    held: Bank | None = getattr(model, "_lora_bank", None)
    if held is None:
        held = Bank({DEFAULT: {name: _held(layer) for name, layer in layers.items()}})
        model._lora_bank = held  # type: ignore[assignment]  # nn.Module takes plain attributes
    return held


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters the model holds, the active one first."""
    b = bank(model)
    return [b.active, *(n for n in b.adapters if n != b.active)]


def _refuse_merged(layers: dict[str, LoRALinear], what: str) -> None:
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise ValueError(f"cannot {what}: {len(merged)} layers are merged ({merged[0]}, ...); "
                         "unmerge() first")  # fmt: skip


def set_adapter(model: nn.Module, name: str) -> None:
    """Make adapter `name` the one every layer runs (its tensors, no copy; moved first to the
    layers' device and dtype if the model was moved since the load); the layers it does not
    cover run their base layer alone until an adapter covering them is set."""
    b = bank(model)
    layers = _layers(model)
    if name not in b.adapters:
        raise ValueError(f"adapter {name!r} is not loaded; loaded: {', '.join(b.adapters)}")
    _refuse_merged(layers, f"switch to adapter {name!r}")
    adapter = b.adapters[name]
    left_out = [m for m in layers if m not in adapter]
    fused = [m for m in left_out if layers[m]._fused is not None or _in_fused_mlp(model, m)]
    if fused:
        raise ValueError(f"adapter {name!r} leaves out {fused[0]}, which runs inside a fused "
                         "module; unfuse_modules() first")  # fmt: skip
    for module in adapter:  # one moved since the load (model.to()) follows it
        adapter[module] = _placed(adapter[module], layers[module].base.weight)
    for module, layer in layers.items():
        if module in adapter:
            _point(layer, adapter[module])
        layer.adapter_off = module not in adapter
    b.active = name


def _in_fused_mlp(model: nn.Module, module: str) -> bool:
    """Whether the layer called `module` (PEFT's spelling) is one a fused MLP runs."""
    from lora_kernels.fused.model import fused_modules

    mlps = [n.removeprefix(PREFIX) for n, kind in fused_modules(model).items() if kind == "mlp"]
    return any(module.startswith(f"{m}.") for m in mlps)


def _placed(adapter: LayerAdapter, W: Tensor) -> LayerAdapter:
    """The adapter on W's device and dtype: itself, or a moved copy (the model was moved or
    cast after the load; the bank's inactive adapters are not module tensors)."""
    if adapter.A.device == W.device and adapter.A.dtype == W.dtype:
        return adapter

    def moved(t: nn.Parameter) -> nn.Parameter:
        return nn.Parameter(t.detach().to(W.device, W.dtype), requires_grad=t.requires_grad)

    m = None if adapter.magnitude is None else moved(adapter.magnitude)
    return LayerAdapter(moved(adapter.A), moved(adapter.B), adapter.alpha, adapter.scale, m)


def _point(layer: LoRALinear, adapter: LayerAdapter) -> None:
    layer._parameters["lora_A"] = adapter.A
    layer._parameters["lora_B"] = adapter.B
    if adapter.magnitude is not None:
        layer._parameters["lora_magnitude"] = adapter.magnitude
    layer.rank, layer.alpha, layer.scale = adapter.rank, adapter.alpha, adapter.scale


def delete_adapter(model: nn.Module, name: str) -> None:
    """Drop adapter `name` from the bank; the active adapter cannot be deleted."""
    b = bank(model)
    if name not in b.adapters:
        raise ValueError(f"adapter {name!r} is not loaded; loaded: {', '.join(b.adapters)}")
    if name == b.active:
        raise ValueError(f"adapter {name!r} is the active one; set_adapter() another first")
    del b.adapters[name]


# --- reading PEFT's format -------------------------------------------------------------------


def _config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such adapter folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; an adapter folder holds {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: not a LoRA adapter config (peft_type {kind!r}, need 'LORA')")
    if config.get("lora_bias"):
        raise ValueError(f"{path}: lora_bias=true (a bias on B); LoRALinear has none")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"{path}: lora_alpha must be a finite number > 0, got {alpha!r}")
    r = config.get("r", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{path}: r must be a whole number >= 1, got {r!r}")
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(name) or {}, dict):
            raise ValueError(f"{path}: {name} must be an object of module pattern -> value, "
                             f"got {config[name]!r}")  # fmt: skip
    return config


def _tensors(folder: Path) -> dict[str, Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (only the safetensors format is read)")
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:  # from bytes: load_file's tensors map the file, and change or fault when it does
        return load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def split_key(key: str) -> tuple[str, str] | None:
    """(module, part) of a key of PEFT's adapter file, its prefix removed where it has one:
    part is lora_A, lora_B or lora_magnitude_vector; None for any other key."""
    match = _KEY.match(key.removeprefix(PREFIX))
    return None if match is None else (match["module"], match["part"].split(".")[0])


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: a key matches a module name that is it or
    ends with "." + it (a regular expression, as in PEFT)."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?({key})", module):
            return value
    return default


def read_adapter(model: nn.Module, folder: str | Path) -> dict[str, LayerAdapter]:
    """The adapter in `folder` as the model's layers would hold it: every tensor checked
    against its layer (shapes, DoRA or not), cast to the layer's dtype and device; new
    tensors, nothing of the model changed. It may cover some of the layers (PEFT's rule).
    Raises naming the file and the module."""
    folder = Path(folder)
    layers = _layers(model)
    config = _config(folder)
    found: dict[str, dict[str, Tensor]] = {}
    path = folder / WEIGHTS
    for key, t in _tensors(folder).items():
        parsed = split_key(key) if key.startswith(PREFIX) else None
        if parsed is None:
            raise ValueError(f"{path}: unexpected key {key!r}; LoRA keys look like "
                             f"{PREFIX}<module>.lora_A.weight")  # fmt: skip
        module, part = parsed
        found.setdefault(module, {})[part] = t
    lacking = sorted(set(found) - set(layers))
    if lacking:
        raise ValueError(f"{path}: weights for {lacking[0]}, which has no LoRA layer in the "
                         f"model ({len(lacking)} such modules); LoRA layers: "
                         f"{', '.join(sorted(layers)[:4])}, ...")  # fmt: skip
    if not found:
        raise ValueError(f"{path}: holds no LoRA weights (keys {PREFIX}<module>.lora_A.weight)")
    return {
        module: _layer_adapter(path, module, parts, layers[module], config)
        for module, parts in found.items()
    }


def _layer_adapter(
    path: Path, module: str, parts: dict[str, Tensor], layer: LoRALinear, config: dict[str, Any]
) -> LayerAdapter:
    W = layer.base.weight
    out_f, in_f = W.shape
    A, B, m = parts.get("lora_A"), parts.get("lora_B"), parts.get("lora_magnitude_vector")
    if A is None or B is None:
        raise ValueError(f"{path}: {module} lacks {'lora_A' if A is None else 'lora_B'}.weight")
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != in_f or B.shape[0] != out_f \
            or A.shape[0] != B.shape[1] or not 1 <= A.shape[0] <= min(in_f, out_f):  # fmt: skip
        raise ValueError(f"{path}: {module} has lora_A {tuple(A.shape)} and lora_B "
                         f"{tuple(B.shape)}; the layer is ({out_f}, {in_f}): it needs A (r, "
                         f"{in_f}) and B ({out_f}, r)")  # fmt: skip
    if (m is not None) != layer.use_dora:
        kind = "DoRA (a magnitude vector)" if m is not None else "plain LoRA"
        raise ValueError(f"{path}: {module} is {kind}, but the model's layer is "
                         f"{'DoRA' if layer.use_dora else 'LoRA'}")  # fmt: skip
    if m is not None and tuple(m.shape) != (out_f,):
        raise ValueError(f"{path}: {module}'s lora_magnitude_vector is {tuple(m.shape)}, "
                         f"need ({out_f},)")  # fmt: skip
    rank = int(A.shape[0])
    stated = _pattern(config.get("rank_pattern") or {}, module, config.get("r", 8))
    if rank != stated:
        raise ValueError(f"{path}: {module} has rank {rank} in its weights, but {CONFIG} gives "
                         f"it r = {stated!r} (r, or its rank_pattern); PEFT refuses such an "
                         "adapter, and its alpha would be divided by the wrong rank")  # fmt: skip
    alpha = _pattern(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"{path}: {module}'s alpha_pattern value must be a finite number > 0, "
                         f"got {alpha!r}")  # fmt: skip
    alpha = float(alpha)
    scale = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    bad = [name for name, t in (("lora_A", A), ("lora_B", B), ("lora_magnitude_vector", m))
           if t is not None and (not t.is_floating_point() or not all_finite(t))]  # fmt: skip
    if bad:
        raise ValueError(f"{path}: {module}'s {bad[0]} holds non-finite values (NaN or inf) "
                         "or is not a float tensor; an adapter's weights are finite")  # fmt: skip

    def param(t: Tensor) -> nn.Parameter:
        return nn.Parameter(t.to(W.device, W.dtype), requires_grad=False)

    return LayerAdapter(param(A), param(B), alpha, scale, None if m is None else param(m))


def load_adapter(
    model: nn.Module, folder: str | Path, name: str, *, activate: bool = False
) -> None:
    """Read the adapter in `folder` (PEFT's format) into the model's bank as `name`, and make
    it the active one when `activate`. Refused, model unchanged: a name loaded already, a
    missing or corrupt file, keys for modules without a LoRA layer, layers left uncovered,
    shapes that do not fit, DoRA against LoRA. Layers it leaves out run their base layer
    alone while it is active (as in PEFT)."""
    b = bank(model)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if name in b.adapters:
        raise ValueError(f"adapter {name!r} is loaded already; delete_adapter() it or pick "
                         "another name")  # fmt: skip
    if activate:
        _refuse_merged(_layers(model), f"activate adapter {name!r}")
    b.adapters[name] = read_adapter(model, folder)
    if activate:
        set_adapter(model, name)


@torch.no_grad()
def hotswap_adapter(model: nn.Module, folder: str | Path) -> None:
    """Copy the adapter in `folder` into the active adapter's tensors, in place: a compiled
    model keeps its graph (no recompile). Each layer keeps its rank and scale: a smaller rank
    is zero-padded, the scale ratio is folded into B, so the model computes the new adapter's
    function. Tensors the model shares with another (from_peft's) change there too.
    Refused, model unchanged: a rank above the layer's, and what load_adapter refuses."""
    b = bank(model)
    layers = _layers(model)
    _refuse_merged(layers, "hot-swap")
    new = read_adapter(model, folder)
    held = b.adapters[b.active]
    if set(new) != set(held):
        other = sorted(set(new) ^ set(held))[0]
        raise ValueError(f"{Path(folder) / WEIGHTS}: covers other layers than the active "
                         f"adapter ({other} is in one of them only); a hot swap writes into the "
                         "active adapter's tensors: load_adapter() it instead")  # fmt: skip
    over = [(n, a.rank, layers[n].rank) for n, a in new.items() if a.rank > layers[n].rank]
    if over:
        n, got, has = over[0]
        raise ValueError(f"{Path(folder) / WEIGHTS}: {n} has rank {got}, above the loaded "
                         f"adapter's {has}; a hot swap keeps each layer's rank: load_adapter() "
                         "it instead")  # fmt: skip
    for module, a in new.items():
        layer = layers[module]
        A, B = layer._lora
        A.zero_()[: a.rank].copy_(a.A)
        B.zero_()[:, : a.rank].copy_(a.B * (a.scale / layer.scale))
        m = layer._parameters.get("lora_magnitude")
        if m is not None and a.magnitude is not None:
            m.copy_(a.magnitude)
    b.adapters[b.active] = {module: _held(layers[module]) for module in new}


# --- writing PEFT's format -------------------------------------------------------------------


STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")  # .FOLDER.PID.X.tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _clean_staging(parent: Path) -> None:
    """Remove the staging folders that save_adapter processes killed mid-write left in
    `parent` (their process no longer runs)."""
    for left in parent.glob(".*.tmp"):
        found = STAGING.match(left.name)
        if found and left.is_dir() and not _alive(int(found.group("pid"))):
            shutil.rmtree(left, ignore_errors=True)


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Make `folder` holding exactly `files`, whole or not at all: the files are written
    and synced in a staging folder beside it, which is then renamed to `folder` (which
    must not exist, or be empty). A kill leaves either no adapter or the whole one; the
    staging folder a killed writer leaves is removed by the next save there."""
    parent = folder.parent
    _clean_staging(parent)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{folder.name}.{os.getpid()}.",
                                    suffix=".tmp"))  # fmt: skip
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # as mkdir would make it, not mkdtemp's 0700
        os.rename(staging, folder)
        dirfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_adapter(model: nn.Module, folder: str | Path, name: str | None = None) -> None:
    """Write adapter `name` (default: the active one) into `folder` in PEFT's format, which
    PEFT's load_adapter reads back to the same function: the folder appears whole or not at
    all. Refuses, before anything is written, a folder that holds files already (an adapter
    is never overwritten) or that cannot be written."""
    from safetensors.torch import save

    b = bank(model)
    name = b.active if name is None else name
    if name not in b.adapters:
        raise ValueError(f"adapter {name!r} is not loaded; loaded: {', '.join(b.adapters)}")
    if b.active == name and any(layer.merged for layer in _layers(model).values()):
        raise ValueError("the adapter is merged into the model's weights; unmerge() first")
    folder = Path(folder)
    there = [f for f in (CONFIG, WEIGHTS) if (folder / f).exists()]
    if there:
        raise FileExistsError(f"{folder / there[0]}: exists; an adapter is never overwritten, "
                              "pick an empty folder")  # fmt: skip
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder}: holds other files; an adapter is written into a "
                              "new or empty folder, so it appears whole or not at all")  # fmt: skip
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder.parent).close()
    except OSError as err:
        raise OSError(f"{folder}: cannot write an adapter there ({err.strerror})") from None
    adapter = b.adapters[name]
    tensors: dict[str, Tensor] = {}
    for module, a in adapter.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.A.detach().contiguous().cpu()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = a.B.detach().contiguous().cpu()
        if a.magnitude is not None:
            tensors[f"{PREFIX}{module}.lora_magnitude_vector"] = a.magnitude.detach().cpu()
    ranks = [a.rank for a in adapter.values()]
    r = max(set(ranks), key=ranks.count)
    alpha = max({a.alpha for a in adapter.values() if a.rank == r})
    alphas: dict[str, float] = {}  # alpha such that alpha / rank is each layer's scale
    for module, a in adapter.items():
        if not math.isclose(a.scale * a.rank, alpha, rel_tol=1e-12):
            alphas[re.escape(module)] = a.scale * a.rank
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {re.escape(m): a.rank for m, a in adapter.items() if a.rank != r},
        "alpha_pattern": alphas,
        "target_modules": sorted({m.rpartition(".")[2] for m in adapter}),
        "use_dora": any(a.magnitude is not None for a in adapter.values()),
        "use_rslora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    config_bytes = (json.dumps(config, indent=2) + "\n").encode()
    _write_folder(folder, {WEIGHTS: save(tensors), CONFIG: config_bytes})
