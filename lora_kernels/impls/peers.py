"""Other projects' LoRA layers as peers in the registry, built on the same weights as ours:
Hugging Face PEFT's LoRA Linear (unmerged, and merged as merge_and_unload leaves it) and
loralib's Linear. They need the `peers` extra; without it they are unavailable, and their
tests and benchmarks skip saying so."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.dora.weights import DoRAWeights
from lora_kernels.registry import Impl, Op, register
from lora_kernels.weights import LayerTensors, LoRAWeights


def peer_missing(module: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"peer {module!r} is not installed: pip install 'lora-bench[peers]'"
        return None

    return reason


def use_tensor(module: nn.Module, name: str, tensor: Tensor | None) -> None:
    """Make module.<name> our tensor itself (not a copy), so gradients land on it."""
    delattr(module, name)
    setattr(module, name, tensor)


def base_linear(w: LayerTensors) -> nn.Linear:
    base = nn.Linear(w.in_features, w.out_features, bias=w.b is not None, device="meta")
    use_tensor(base, "weight", w.W)
    use_tensor(base, "bias", w.b)
    return base


def peft_lora(kind: Any, base: nn.Module, w: LoRAWeights | ConvLoRAWeights) -> Any:
    """PEFT's LoRA layer `kind` (peft.tuners.lora.Linear, Conv2d) on `base`, its A and B our
    tensors themselves and its scale exactly ours, whatever rounding alpha / r brought."""
    from peft import LoraConfig

    alpha = w.scale * w.rank
    config = LoraConfig(r=w.rank, lora_alpha=alpha)
    layer = kind(base, "default", config=config, r=w.rank, lora_alpha=alpha)
    layer.scaling["default"] = w.scale
    use_tensor(layer.lora_A["default"], "weight", w.A)
    use_tensor(layer.lora_B["default"], "weight", w.B)
    return layer


def _peft_layer(w: LoRAWeights) -> Any:  # peft.tuners.lora.Linear
    from peft.tuners.lora import Linear

    return peft_lora(Linear, base_linear(w), w)


def build_peft(w: LoRAWeights) -> Op:
    return _peft_layer(w)


def build_peft_dora(w: DoRAWeights) -> Op:
    """PEFT's lora.Linear with use_dora=True on our tensors; its magnitude is our m."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    alpha = w.scale * w.rank
    config = LoraConfig(r=w.rank, lora_alpha=alpha, use_dora=True)
    with torch.device("meta"):  # PEFT takes m from W's norms at init: skip that work
        layer = Linear(base_linear(w.lora), "default", config=config, r=w.rank,
                       lora_alpha=alpha, use_dora=True)  # fmt: skip
    layer.scaling["default"] = w.scale
    use_tensor(layer.lora_A["default"], "weight", w.A)
    use_tensor(layer.lora_B["default"], "weight", w.B)
    use_tensor(layer.lora_magnitude_vector["default"], "weight", w.m)
    return layer


def build_peft_merged(w: LoRAWeights) -> Op:
    own = LoRAWeights(w.W.detach().clone(), w.b, w.A.detach(), w.B.detach(), w.scale)
    layer = _peft_layer(own)
    with torch.no_grad():
        layer.merge()  # W += s·B A in place: on the copy, never on the caller's W
    return layer.get_base_layer()


def build_loralib(w: LoRAWeights) -> Op:
    import loralib

    layer = loralib.Linear(
        w.in_features, w.out_features, r=w.rank, lora_alpha=1,
        bias=w.b is not None, merge_weights=False, device="meta",
    )  # fmt: skip
    layer.scaling = w.scale
    for name, t in (("weight", w.W), ("bias", w.b), ("lora_A", w.A), ("lora_B", w.B)):
        use_tensor(layer, name, t)
    return layer


register(
    Impl(
        "peft",
        "HF PEFT lora.Linear, unmerged",
        build_peft,
        requires=peer_missing("peft"),
        origin="peer",
        source="peft",
    )
)
register(
    Impl(
        "peft_merged",
        "HF PEFT lora.Linear after merge(), the base layer merge_and_unload returns",
        build_peft_merged,
        modes=frozenset({"infer"}),
        requires=peer_missing("peft"),
        origin="peer",
        source="peft",
    )
)
register(
    Impl(
        "peft_dora",
        "HF PEFT lora.Linear with use_dora=True, unmerged: forms W + s·B A on every call",
        build_peft_dora,
        requires=peer_missing("peft"),
        origin="peer",
        source="peft",
        variant="dora",
        exact_norm=False,
    )
)
register(
    Impl(
        "loralib",
        "loralib.Linear, unmerged",
        build_loralib,
        requires=peer_missing("loralib"),
        origin="peer",
        source="loralib",
    )
)
