"""LoRA on whole models: put LoRALinear in place of a model's linear layers (`inject`), or of
a PEFT model's LoRA layers (`from_peft`), and merge, unmerge or switch impl over all of them.

The new layers share the original weight and bias tensors (no copy). transformers' Conv1D
(GPT-2's layers, weight stored (in, out)) is adapted through a transposed view of its weight.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lora_kernels.conv.layer import LoRAConv2d
from lora_kernels.conv.layer import conv_impl as conv_impl_of
from lora_kernels.conv.peft import conv_refusal, convert_conv, is_peft_conv
from lora_kernels.fused.model import FuseError, fuse_modules
from lora_kernels.layer import LoRALinear
from lora_kernels.plugins import get_impl
from lora_kernels.quant.layer import QLoRALinear
from lora_kernels.quant.peft import convert_qlora, is_peft_qlora, qlora_refusal
from lora_kernels.weights import all_finite, merge_stays_finite


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D: y = x W + b with W (in, out)."""
    weight = getattr(module, "weight", None)
    is_conv = type(module).__name__ == "Conv1D" and hasattr(module, "nf")
    return is_conv and isinstance(weight, Tensor) and weight.dim() == 2


def as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear computing the same function with the same tensors: the module itself, or
    for a Conv1D an nn.Linear whose weight is a transposed view of the Conv1D's."""
    if isinstance(module, nn.Linear):
        return module
    conv: Any = module  # a Conv1D: weight (in, out), bias (out,)
    in_f, out_f = conv.weight.shape
    linear = nn.Linear(in_f, out_f, bias=conv.bias is not None, device="meta")
    linear.weight = nn.Parameter(conv.weight.detach().t(), requires_grad=False)
    linear.bias = conv.bias
    return linear


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    """Linear layers by name, leaving out LoRALinear's own base layers."""
    adapted = {id(m.base) for m in model.modules() if isinstance(m, LoRALinear)}
    return {
        name: m
        for name, m in model.named_modules()
        if (isinstance(m, nn.Linear) or is_conv1d(m)) and id(m) not in adapted
    }


def _output_layers(model: nn.Module) -> set[int]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {id(head)} if head is not None else set()


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def select_linears(model: nn.Module, targets: list[str] | str) -> dict[str, nn.Module]:
    """The linear layers (nn.Linear or Conv1D) that `targets` select, by full name.

    A target selects the layers whose name is it or ends with "." + it (PEFT's rule);
    "all-linear" selects every linear layer but the model's output layer, as PEFT does.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    linears = _linears(model)
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear (or Conv1D) layer to adapt")
    seen = sorted({n.rpartition(".")[2] for n in linears})
    if not targets:
        raise ValueError(f"targets must name at least one layer; linear layers seen: {seen}")
    chosen: dict[str, nn.Module] = {}
    heads = _output_layers(model)
    for target in targets:
        if target == "all-linear":
            found = {n: m for n, m in linears.items() if id(m) not in heads}
        else:
            found = {n: m for n, m in linears.items() if _matches(n, target)}
        if not found:
            raise ValueError(
                f"target {target!r} matches no linear layer; linear layers seen: "
                f"{', '.join(seen)} (or all-linear)"
            )
        chosen.update(found)
    return {n: linears[n] for n in linears if n in chosen}


def inject(
    model: nn.Module,
    targets: list[str] | str,
    rank: int,
    *,
    alpha: float = 8.0,
    use_rslora: bool = False,
    dropout: float = 0.0,
    impl: str | None = None,
    use_dora: bool = False,
    fuse: bool = False,
    fuse_fallback: bool = False,
) -> dict[str, LoRALinear]:
    """Put a LoRALinear in place of each selected linear layer, sharing its weight and bias,
    and freeze every other parameter of the model. Returns the new layers by name.
    use_dora=True makes them DoRA layers; impl defaults to LoRALinear's (two_step, or
    dora_factored with DoRA).

    fuse=True then runs attention's q, k and v and SwiGLU MLPs as fused modules
    (fuse_modules): a module that cannot fuse refuses the whole call, unless fuse_fallback
    leaves it per layer with a warning that names it. The other layers run `impl`.

    Everything is checked before the model changes: a model that holds LoRA layers already,
    the targets, the rank of every layer, and every LoRALinear argument (dropout, alpha, the
    base's dtype); the layers are built first and put in place only when all of them built.
    """
    held = [name for name, _ in lora_layers(model)] if isinstance(model, nn.Module) else []
    if held:
        raise ValueError(
            f"the model already holds {len(held)} LoRA layers ({held[0]}, ...); inject() once, "
            "and use set_impl() or merge() to change them"
        )
    if impl is not None and get_impl(impl).variant != ("dora" if use_dora else "lora"):
        raise ValueError(
            f"impl {impl!r} computes {get_impl(impl).variant}; use_dora={use_dora} needs a "
            f"{'DoRA' if use_dora else 'LoRA'} impl"
        )
    if fuse and (use_dora or dropout):
        raise ValueError("fuse=True runs plain LoRA without dropout: drop use_dora and dropout")
    if fuse_fallback and not fuse:
        raise ValueError("fuse_fallback=True is for fuse=True")
    chosen = select_linears(model, targets)
    bases = {name: as_linear(module) for name, module in chosen.items()}
    for name, base in bases.items():
        limit = min(base.in_features, base.out_features)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise ValueError(
                f"rank must be an int in [1, {limit}] for {name} "
                f"({base.in_features} -> {base.out_features}), got {rank!r}"
            )
        if not all(all_finite(t) for t in (base.weight, base.bias) if t is not None):
            raise ValueError(f"{name}: its weight or bias holds non-finite values (NaN or inf); "
                             "a LoRA layer on it would compute them into every output")  # fmt: skip
    flags = {p: p.requires_grad for p in model.parameters()}
    new = {}
    try:  # building freezes each base: undone if a later one is refused
        for name, base in bases.items():
            try:
                new[name] = LoRALinear.from_linear(
                    base, rank, alpha=alpha, use_rslora=use_rslora, dropout=dropout, impl=impl,
                    use_dora=use_dora,
                ).train(chosen[name].training)  # fmt: skip
            except (TypeError, ValueError) as err:
                raise type(err)(f"{name}: {err}") from None
    except (TypeError, ValueError):
        for p, flag in flags.items():
            p.requires_grad_(flag)
        raise
    model.requires_grad_(False)
    for name, layer in new.items():
        _replace(model, name, layer)
    if fuse:
        _fuse(model, chosen, flags, fuse_fallback)
    return new


def _fuse(model: nn.Module, chosen: dict[str, nn.Module], flags: dict[nn.Parameter, bool],
          fallback: bool) -> None:  # fmt: skip
    """fuse_modules after inject placed its layers; a refusal puts the model back as it was."""
    try:
        report = fuse_modules(model, fallback=fallback)
    except FuseError:
        for name, module in chosen.items():
            _replace(model, name, module)
        for p, flag in flags.items():
            p.requires_grad_(flag)
        raise
    for why in report.unfused.values():
        warnings.warn(f"left per layer: {why}", stacklevel=3)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Every LoRALinear of the model, by name."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


AnyLayer = LoRALinear | QLoRALinear | LoRAConv2d


def _all(model: nn.Module, running: bool = True) -> list[AnyLayer]:
    """Every LoRALinear, QLoRALinear and LoRAConv2d of the model; `running`: only those that
    run an adapter now (not the layers the active adapter leaves out), as merge and unmerge
    take."""
    layers = [m for m in model.modules() if isinstance(m, (LoRALinear, QLoRALinear, LoRAConv2d))
              and not (running and getattr(m, "adapter_off", False))]  # fmt: skip
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRALinear layer; inject() first")
    return layers


def _variant(layer: AnyLayer) -> str:
    if isinstance(layer, QLoRALinear):
        return "qlora"
    if isinstance(layer, LoRAConv2d):
        return "conv"
    return "dora" if layer.use_dora else "lora"


def merge(model: nn.Module) -> None:
    """Merge every LoRALinear, QLoRALinear and LoRAConv2d of the model (a QLoRA layer
    requantizes and keeps its merge_error); none is changed if one cannot be merged."""
    layers = _all(model)
    merged = [layer for layer in layers if layer.merged]
    if merged:
        raise ValueError(f"{len(merged)} of {len(layers)} LoRA layers are merged already")
    bases = {id(m): m.merged_base() for m in layers if isinstance(m, QLoRALinear)}
    for layer in layers:  # each raises before any weight is written
        if isinstance(layer, LoRALinear) and (layer.use_dora or not _merges_finite(layer)):
            layer.merged_weight()  # DoRA: a zero factor refuses too
        elif isinstance(layer, LoRAConv2d) and not _merges_finite(layer):
            layer.weights().merged_weight()
    for layer in layers:
        if isinstance(layer, QLoRALinear):
            layer.merge(bases[id(layer)])
        else:
            layer.merge()


def _merges_finite(layer: LoRALinear | LoRAConv2d) -> bool:
    w = layer.weights()
    return merge_stays_finite(w.W, w.A, w.B, w.scale)


def unmerge(model: nn.Module) -> None:
    """Unmerge every LoRALinear, QLoRALinear and LoRAConv2d of the model (a QLoRA layer gets
    its exact original bytes back)."""
    layers = _all(model)
    unmerged = [layer for layer in layers if not layer.merged]
    if unmerged:
        raise ValueError(f"{len(unmerged)} of {len(layers)} LoRA layers are not merged")
    for layer in layers:
        layer.unmerge()


def set_impl(model: nn.Module, impl: str) -> None:
    """Use `impl` for every LoRALinear (or QLoRALinear) of the model, or with a Conv2d impl
    for every LoRAConv2d; none changes if one cannot take it."""
    variant = get_impl(impl).variant
    layers = [m for m in _all(model, running=False)
              if isinstance(m, LoRAConv2d) == (variant == "conv")]  # fmt: skip
    if not layers:
        raise ValueError(f"impl {impl!r} computes {variant}; the model has no layer it runs")
    wrong = [layer for layer in layers if variant != _variant(layer)]
    if wrong:
        raise ValueError(
            f"impl {impl!r} computes {variant}, but {len(wrong)} of {len(layers)} LoRA layers "
            f"are {_variant(wrong[0])}; pick an impl of their variant"
        )
    quantized = [m for m in layers if isinstance(m, QLoRALinear)]
    fmts = {m.quant.fmt for m in quantized}
    if not fmts <= get_impl(impl).formats and variant == "qlora":
        raise ValueError(f"impl {impl!r} takes {sorted(get_impl(impl).formats)}; the layers' "
                         f"bases are {sorted(fmts)}")  # fmt: skip
    for q in quantized:
        reason = get_impl(impl).unavailable_reason(q.quant.device, q.quant.dtype, "infer")
        if reason:
            raise ValueError(reason)
    for layer in layers:
        layer.impl = impl


# --- PEFT ------------------------------------------------------------------------------------


def _peft_lora_layers(model: nn.Module) -> dict[str, Any]:
    """PEFT's LoRA layers by name (typed Any: their adapters are dynamic attributes)."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def is_peft_dora(layer: Any, adapter: str) -> bool:
    """Whether the PEFT LoRA layer runs `adapter` as DoRA (a magnitude vector beside A, B)."""
    variant = getattr(layer, "lora_variant", {}).get(adapter)
    return type(variant).__name__ == "DoraLinearVariant" and adapter in getattr(
        layer, "lora_magnitude_vector", {}
    )


def peft_refusal(name: str, layer: Any, adapter: str, *, dora: bool = False) -> str | None:
    """Why this PEFT LoRA layer cannot become a LoRALinear (with DoRA layers allowed when
    `dora`), or None."""
    from peft.tuners.lora import Linear

    if not isinstance(layer, Linear):
        return f"{name} is a PEFT {type(layer).__name__}; only LoRA Linear layers convert"
    if layer.disable_adapters:
        return f"{name} has its adapters disabled; enable them first"
    dora_ok = dora and is_peft_dora(layer, adapter)
    if adapter in getattr(layer, "lora_variant", {}) and not dora_ok:
        kind = type(layer.lora_variant[adapter]).__name__
        allowed = "plain LoRA and DoRA convert" if dora else "only plain LoRA converts"
        return f"{name} uses a LoRA variant ({kind}); {allowed}"
    if is_peft_dora(layer, adapter) and adapter in layer.merged_adapters:
        return f"{name} has its DoRA adapter merged; DoRA's factor is not in W: unmerge it first"
    if getattr(layer, "lora_bias", {}).get(adapter):
        return f"{name} has lora_bias=True (a bias on B); LoRALinear has none"
    others = [a for a in layer.merged_adapters if a != adapter]
    if others:
        return f"{name} has other adapters merged into its weight: {others}; unmerge them first"
    A, B, W = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight, layer.get_base_layer()
    if A.dtype != W.weight.dtype:
        return (
            f"{name}: the adapter is {A.dtype} but the base weight is {W.weight.dtype}; "
            "LoRALinear keeps one dtype (load PEFT with autocast_adapter_dtype=False, "
            "or cast the model)"
        )
    if B.dtype != A.dtype:
        return f"{name}: lora_A is {A.dtype} but lora_B is {B.dtype}"
    return None


def _adapter_of(layers: dict[str, Any], adapter: str | None) -> str:
    names = sorted({a for layer in layers.values() for a in layer.lora_A})
    if adapter is not None:
        if adapter not in names:
            raise ValueError(f"adapter {adapter!r} is not in the model; adapters: {names}")
        return adapter
    if len(names) != 1:
        raise ValueError(
            f"the model has {len(names)} adapters {names}; pass adapter= to pick the one to "
            "convert (LoRALinear holds one)"
        )
    return names[0]


def _kind(layer: Any, adapter: str) -> str:
    """The variant the PEFT LoRA layer computes: "qlora" on a bitsandbytes base, "conv" on a
    Conv2d, "dora", "lora"."""
    if is_peft_qlora(layer):
        return "qlora"
    if is_peft_conv(layer):
        return "conv"
    return "dora" if is_peft_dora(layer, adapter) else "lora"


def _refusal(name: str, layer: Any, adapter: str, model_dtype: torch.dtype | None) -> str | None:
    if is_peft_qlora(layer):
        return qlora_refusal(name, layer, adapter, model_dtype)
    if is_peft_conv(layer):
        return conv_refusal(name, layer, adapter)
    return peft_refusal(name, layer, adapter, dora=True)


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's own floating weights (not its adapters'): the one its
    activations carry from layer to layer."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and "lora_" not in name:
            return p.dtype
    return None


def from_peft(
    peft_model: nn.Module,
    impl: str | None = None,
    *,
    adapter: str | None = None,
    conv_impl: str | None = None,
) -> dict[str, LoRALinear | QLoRALinear | LoRAConv2d]:
    """Put a LoRALinear in place of each LoRA Linear of a PEFT model, with the same base
    weight, A, B, scaling, dropout and DoRA magnitude (the tensors themselves, no copies). A
    merged LoRA layer stays merged. A QLoRA layer (LoRA on bitsandbytes' Linear4bit or
    Linear8bitLt) becomes a QLoRALinear on the same codes and scales, and a lora.Conv2d a
    LoRAConv2d run by `conv_impl` (conv_two_step by default). Returns the new layers by name;
    the model computes the same function. `impl` must compute the layers' variant; by default
    two_step for LoRA, dora_factored for DoRA and qlora_lean for QLoRA.

    A model into which PEFT's layers were put without a PeftModel around it (diffusers'
    `add_adapter`, peft's `inject_adapter_in_model`) converts too.

    Refused, before anything changes: not a PEFT model, LoRA layers other than Linear and
    Conv2d, a Conv2d with dropout, DoRA, a merged adapter, a grouped, dilated or non-zero-padded
    base (on the last two PEFT's own layer is not LoRA), a conv_impl that is no Conv2d impl,
    variants other than DoRA, a merged DoRA layer, a merged or DoRA or dropout QLoRA layer,
    lora_bias, disabled adapters, mixed dtypes,
    several adapters unless `adapter` names one (the others are dropped from the converted
    layers), an `adapter` other than the one PEFT runs (the model would mix the two), and an
    impl of the other variant.
    """
    if importlib.util.find_spec("peft") is None:
        raise TypeError("from_peft needs a PEFT model, and peft is not installed")
    from peft import PeftModel
    from peft.tuners.lora import LoraModel

    if not isinstance(peft_model, (PeftModel, LoraModel)) and not _peft_lora_layers(peft_model):
        raise TypeError(
            "from_peft needs a PEFT model, or a model holding PEFT's LoRA layers (as diffusers' "
            f"add_adapter makes), got {type(peft_model).__name__}"
        )
    if impl is not None:
        get_impl(impl)
    if conv_impl is not None:
        conv_impl_of(conv_impl)
    layers = _peft_lora_layers(peft_model)
    if not layers:
        raise ValueError("the PEFT model has no LoRA layer (is it a LoRA model?)")
    adapter = _adapter_of(layers, adapter)
    others = sorted({a for m in layers.values() for a in m.active_adapters if a != adapter})
    if others:  # those layers would keep computing another adapter: a hybrid of two
        raise ValueError(
            f"adapter {adapter!r} is not the one PEFT runs: its layers run {others}; call "
            f"model.set_adapter({adapter!r}) first, or convert {others[0]!r}"
        )
    # an embedding's LoRA sits in lora_embedding_A: it counts, and is refused below (leaving
    # it to PEFT would run a hybrid of PEFT's layers and ours under our impl's name)
    layers = {n: m for n, m in layers.items()
              if adapter in m.lora_A or adapter in getattr(m, "lora_embedding_A", {})}  # fmt: skip
    dtype = _model_dtype(peft_model)
    reasons = [r for n, m in layers.items() if (r := _refusal(n, m, adapter, dtype))]
    if reasons:
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        raise ValueError(f"cannot convert: {reasons[0]}{more}")
    kinds = {n: _kind(m, adapter) for n, m in layers.items()}
    if impl is not None:
        wrong = [n for n, kind in kinds.items()
                 if kind != "conv" and kind != get_impl(impl).variant]  # fmt: skip
        if wrong:
            raise ValueError(
                f"impl {impl!r} computes {get_impl(impl).variant}, but {wrong[0]} is "
                f"{kinds[wrong[0]]} ({len(wrong)} of {len(kinds)} layers); pick an impl of "
                "their variant, or leave impl unset"
            )
    new: dict[str, LoRALinear | QLoRALinear | LoRAConv2d] = {}
    for name, layer in layers.items():
        if kinds[name] == "conv":
            new[name] = convert_conv(layer, adapter, conv_impl)
        else:
            new[name] = (convert_qlora if kinds[name] == "qlora" else _convert)(
                layer, adapter, impl
            )
    for name, layer in new.items():
        _replace(peft_model, name, layer)
    return new


def _convert(layer: Any, adapter: str, impl: str | None) -> LoRALinear:
    base = as_linear(layer.get_base_layer())
    A: Tensor = layer.lora_A[adapter].weight
    B: Tensor = layer.lora_B[adapter].weight
    dropout = layer.lora_dropout[adapter]
    dora = is_peft_dora(layer, adapter)
    new = LoRALinear(
        base.in_features, base.out_features, A.shape[0], base=base, impl=impl,
        dropout=dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        adapter=(A, B), use_dora=dora,
        magnitude=layer.lora_magnitude_vector[adapter].weight if dora else None,
    )  # fmt: skip
    new.scale = float(layer.scaling[adapter])  # PEFT's, exact (also for DoRA: the norm reads it)
    new.alpha = float(layer.lora_alpha[adapter])
    if adapter in layer.merged_adapters:
        new.adopt_merged()  # PEFT folded this adapter into W already
    return new.train(layer.training)
