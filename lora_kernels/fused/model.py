"""Fused modules inside a whole model. Attention's q_proj, k_proj and v_proj, each a LoRALinear
reading one x, run as one QKVFunction (one stacked shrink; the first of the three calls computes
all three outputs and the other two take theirs); a SwiGLU MLP's gate_proj, up_proj and
down_proj run as one MLPFunction, its module replaced by a FusedMLP holding the same layers.
Names, parameters and state_dict keys stay as they were.

`fuse_modules` plans every candidate (a module with LoRA on any of its projections) before it
changes anything: one that cannot fuse is refused with its name and why, or, with
fallback=True, left per layer and named in the report. A merged layer runs per layer, and so
does a model being traced by torch.compile (the shared call keeps state between calls, which a
graph cannot; the compiler fuses what it can itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_kernels.fused.impls import build_mlp_fused, build_qkv_fused
from lora_kernels.fused.registry import ModuleOp
from lora_kernels.fused.weights import MLPWeights, ModuleWeights, QKVWeights
from lora_kernels.layer import LoRALinear
from lora_kernels.numerics import rel_error, tolerance
from lora_kernels.weights import LoRAWeights

ATTENTION = ("q_proj", "k_proj", "v_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
MLP_FORM = "down_proj(silu(gate_proj(x)) * up_proj(x))"


class FuseError(ValueError):
    """A module the caller asked to fuse cannot be: every such module, by name, and why."""


@dataclass(frozen=True)
class FuseReport:
    """What fuse_modules did: the modules now fused ("qkv" or "mlp"), by name, and those left
    per layer with why."""

    fused: dict[str, str] = field(default_factory=dict)
    unfused: dict[str, str] = field(default_factory=dict)


class _Live:
    """The module's weights and fused op on the layers' current tensors, rebuilt (and checked
    again) when one is replaced or updated in place, as LoRALinear rebuilds its op."""

    def __init__(self, kind: str, layers: tuple[LoRALinear, ...]) -> None:
        self.kind, self.layers = kind, layers
        self.key: tuple = ()
        self.seen: set[tuple] = set()
        self.op: ModuleOp | None = None
        self.built: ModuleWeights | None = None  # the weights self.op was built on

    def weights(self) -> ModuleWeights:
        ws = [layer.weights() for layer in self.layers]
        if not all(isinstance(w, LoRAWeights) for w in ws):
            raise TypeError("fused modules run plain LoRA layers, not DoRA")
        if self.kind == "qkv":
            return QKVWeights(*ws)  # type: ignore[arg-type]
        return MLPWeights(*ws)  # type: ignore[arg-type]

    def op_for(self, x: Tensor) -> ModuleOp:
        """The fused op, x checked against the weights (each new signature once)."""
        key = tuple((id(t), t._version) for layer in self.layers for t in _tensors(layer))
        if self.op is None or self.built is None or key != self.key:
            w = self.weights()
            self.op = build_qkv_fused(w) if isinstance(w, QKVWeights) else build_mlp_fused(w)  # type: ignore[arg-type]
            self.key, self.seen, self.built = key, set(), w
        signature = (x.shape[-1], x.dtype, x.device)
        if signature not in self.seen:
            self.built.check_input(x)
            self.seen.add(signature)
        return self.op


def _tensors(layer: LoRALinear) -> tuple[Tensor, ...]:
    base = layer.base
    extra = () if base.bias is None else (base.bias,)
    return (base.weight, layer.lora_A, layer.lora_B, *extra)


class QKVGroup:
    """The shared call of one attention module's q, k and v layers: the first call on an x
    computes the three outputs and keeps the other two for their layers' calls on that same
    x (same tensor, same version, same grad mode); any other call starts afresh."""

    def __init__(self, name: str, layers: tuple[LoRALinear, LoRALinear, LoRALinear]) -> None:
        self.name = name
        self.live = _Live("qkv", layers)
        self._x: Tensor | None = None
        self._stamp: tuple = ()
        self._left: dict[int, Tensor] = {}

    def __call__(self, layer: LoRALinear, x: Tensor) -> Tensor:
        i = next(j for j, m in enumerate(self.live.layers) if m is layer)
        stamp = (x._version, torch.is_grad_enabled())
        if self._x is x and self._stamp == stamp and i in self._left:
            out = self._left.pop(i)
            if not self._left:
                self._x = None
            return out
        outs = self.live.op_for(x)(x)
        self._x, self._stamp = x, stamp
        self._left = {j: o for j, o in enumerate(outs) if j != i}
        return outs[i]

    def clear(self) -> None:
        self._x, self._left = None, {}


class FusedMLP(nn.Module):
    """A SwiGLU MLP, y = down_proj(silu(gate_proj(x)) * up_proj(x)), whose LoRA layers run as
    one MLPFunction. Holds the original module's layers under their names; x (..., hidden) ->
    (..., hidden). Runs the original module when a layer is merged."""

    def __init__(self, mlp: nn.Module, layers: tuple[LoRALinear, LoRALinear, LoRALinear]) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = layers
        self.__dict__["original"] = mlp  # not a child: its layers are ours already
        self.live = _Live("mlp", layers)

    @property
    def original(self) -> nn.Module:
        return self.__dict__["original"]

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() or any(m.merged for m in self.live.layers):
            return self.original(x)
        return self.live.op_for(x)(x)[0]

    def extra_repr(self) -> str:
        return f"fused: {MLP_FORM} in one autograd function"


def _lora_children(module: nn.Module, names: tuple[str, ...]) -> dict[str, nn.Module] | None:
    """The module's children called `names`, if it has them all and any is a LoRALinear."""
    found = {n: getattr(module, n, None) for n in names}
    if not all(isinstance(m, nn.Module) for m in found.values()):
        return None
    if not any(isinstance(m, LoRALinear) for m in found.values()):
        return None
    return found  # type: ignore[return-value]


def _layer_refusal(name: str, children: dict[str, nn.Module]) -> str | None:
    """Why these projections cannot run fused, or None."""
    plain = [n for n, m in children.items() if not isinstance(m, LoRALinear)]
    if plain:
        has = "has" if len(plain) == 1 else "have"
        return (f"{name}: {', '.join(plain)} {has} no LoRA layer; fusing needs LoRA on each of "
                f"{', '.join(children)}")  # fmt: skip
    for n, m in children.items():
        layer: Any = m
        if layer.use_dora:
            return f"{name}: {n} is a DoRA layer; fused modules run plain LoRA"
        if isinstance(layer.dropout, nn.Dropout):
            return f"{name}: {n} has dropout {layer.dropout.p}; fused modules run without dropout"
        if layer.merged:
            return f"{name}: {n} is merged; unmerge it before fusing"
        if getattr(layer, "_fused", None) is not None:
            return f"{name}: {n} is fused already"
    return None


def _is_silu(act: object, dtype: torch.dtype, device: torch.device) -> bool:
    if not callable(act):
        return False
    t = torch.linspace(-8, 8, 65, dtype=dtype, device=device)
    with torch.no_grad():
        got = act(t)
    return isinstance(got, Tensor) and rel_error(got, F.silu(t)) <= tolerance(dtype, device)


def _probe(name: str, mlp: nn.Module, fused: FusedMLP) -> str | None:
    """Why the fused MLP does not compute what the module does on a random x, or None."""
    w = fused.live.weights()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, w.in_features, generator=gen).to(w.device, w.dtype)
    with torch.no_grad():
        want, got = mlp(x), fused(x)
    err = rel_error(got, want) if got.shape == want.shape else float("inf")
    if err <= 10 * tolerance(w.dtype, w.device):
        return None
    return (f"{name}: its forward does not compute {MLP_FORM} (relative difference {err:.2g} "
            f"on a random x); it cannot fuse")  # fmt: skip


@dataclass
class _Plan:
    groups: dict[str, tuple[LoRALinear, LoRALinear, LoRALinear]] = field(default_factory=dict)
    mlps: dict[str, FusedMLP] = field(default_factory=dict)
    unfused: dict[str, str] = field(default_factory=dict)


def _plan(model: nn.Module) -> _Plan:
    plan = _Plan()
    for name, module in model.named_modules():
        if isinstance(module, FusedMLP):
            plan.unfused[name] = f"{name} is fused already"
            continue
        for names, kind in ((ATTENTION, "qkv"), (MLP, "mlp")):
            children = _lora_children(module, names)
            if children is None:
                continue
            why = _layer_refusal(name, children)
            layers: Any = tuple(children.values())
            if why is None:
                try:
                    _Live(kind, layers).weights()
                except (TypeError, ValueError) as err:
                    why = f"{name}: {err}"
            if why is None and kind == "mlp":
                first: LoRALinear = layers[0]
                W = first.base.weight
                if not _is_silu(getattr(module, "act_fn", None), W.dtype, W.device):
                    act = type(getattr(module, "act_fn", None)).__name__
                    why = (f"{name}: act_fn is {act}, not silu; the fused MLP computes "
                           f"{MLP_FORM} only")  # fmt: skip
                else:
                    fused = FusedMLP(module, layers)
                    why = _probe(name, module, fused)
                    if why is None:
                        plan.mlps[name] = fused
            elif why is None:
                plan.groups[name] = layers
            if why is not None:
                plan.unfused[name] = why
    return plan


def fuse_modules(model: nn.Module, *, fallback: bool = False) -> FuseReport:
    """Run the model's LoRA attention projections (q_proj, k_proj, v_proj) and SwiGLU MLPs
    (gate_proj, up_proj, down_proj) as fused modules. A candidate is a module with LoRA on
    any of those projections. Refused, before anything changes: no candidate, or a candidate
    that cannot fuse (a projection without LoRA, DoRA, dropout, a merged layer, projections
    that do not fit, an activation other than silu, a forward of another form), unless
    fallback=True, which leaves those per layer and names them in the report."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    plan = _plan(model)
    if not plan.groups and not plan.mlps and not plan.unfused:
        raise FuseError(
            f"{type(model).__name__} has no module with LoRA on {', '.join(ATTENTION)} or on "
            f"{', '.join(MLP)}; nothing to fuse"
        )
    if plan.unfused and not fallback:
        raise FuseError(
            f"{len(plan.unfused)} module(s) cannot fuse: "
            + "; ".join(plan.unfused.values())
            + ". Nothing was changed; pass fallback=True (inject: fuse_fallback=True) to leave "
            "them per layer"
        )
    for name, layers in plan.groups.items():
        group = QKVGroup(name, layers)
        for layer in layers:
            layer._fused = group
    for name, fused in plan.mlps.items():
        model.set_submodule(name, fused)
    found = {**dict.fromkeys(plan.groups, "qkv"), **dict.fromkeys(plan.mlps, "mlp")}
    return FuseReport({n: found[n] for n in sorted(found)}, dict(sorted(plan.unfused.items())))


def fused_modules(model: nn.Module) -> dict[str, str]:
    """The model's fused modules by name: "qkv" or "mlp"."""
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, FusedMLP):
            found[name] = "mlp"
        group = getattr(module, "_fused", None)
        if isinstance(group, QKVGroup):
            found[group.name] = "qkv"
    return dict(sorted(found.items()))


def unfuse_modules(model: nn.Module) -> list[str]:
    """Put every fused module of the model back per layer; returns their names."""
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, FusedMLP):
            model.set_submodule(name, module.original)
            names.append(name)
        group: Callable | None = getattr(module, "_fused", None)
        if isinstance(group, QKVGroup):
            module._fused = None
            group.clear()
            if group.name not in names:
                names.append(group.name)
    return sorted(names)
