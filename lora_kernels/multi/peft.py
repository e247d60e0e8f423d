"""PEFT as the multi-adapter peer: its mixed-batch forward (adapter_names=) on the same weights,
and reading a PEFT LoRA layer's adapters for MultiLoRALinear.from_peft."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lora_kernels.impls.peers import base_linear, peer_missing, use_tensor
from lora_kernels.inject import as_linear, peft_refusal
from lora_kernels.multi.registry import MULTI_IMPLS, MultiImpl, MultiOp
from lora_kernels.multi.weights import MultiLoRAWeights
from lora_kernels.registry import register


def peft_adapters(
    layer: nn.Module, adapters: Sequence[str] | None
) -> tuple[nn.Linear, list[tuple[Tensor, Tensor, float]], list[str]]:
    """(base as an nn.Linear, [(A, B, scale), ...], names) of a PEFT LoRA Linear layer's
    adapters; refuses merged layers, DoRA and other variants, lora_bias and mixed dtypes."""
    if importlib.util.find_spec("peft") is None:
        raise TypeError("from_peft needs a PEFT LoRA layer, and peft is not installed")
    from peft.tuners.lora import LoraLayer

    if not isinstance(layer, LoraLayer):
        raise TypeError(f"from_peft needs a PEFT LoRA layer, got {type(layer).__name__}")
    held = list(layer.lora_A)
    names = held if adapters is None else list(adapters)
    if isinstance(adapters, str) or not names:
        raise ValueError(f"adapters must be a non-empty list of names; the layer has {held}")
    unknown = [n for n in names if n not in held]
    if unknown:
        raise ValueError(f"adapters {unknown} are not in the layer; it has {held}")
    if layer.merged_adapters:
        raise ValueError(
            f"the layer has adapters merged into its weight: {layer.merged_adapters}; unmerge "
            "them first"
        )
    for name in names:
        reason = peft_refusal("the layer", layer, name)
        if reason:
            raise ValueError(f"adapter {name!r}: {reason}")
    loaded = [(layer.lora_A[n].weight, layer.lora_B[n].weight, float(layer.scaling[n]))
              for n in names]  # fmt: skip
    return as_linear(layer.get_base_layer()), loaded, names


def _peft_layer(w: MultiLoRAWeights) -> Any:  # peft.tuners.lora.Linear
    """A PEFT LoRA Linear on w's base tensors holding w's adapters "a0", "a1", ... at their own
    ranks and scales (contiguous copies of the stacks' slices)."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    layer: Any = None  # peft.tuners.lora.Linear, made with the first adapter
    for i in range(w.adapters):
        one = w.adapter(i)
        name, alpha = f"a{i}", one.scale * one.rank
        config = LoraConfig(r=one.rank, lora_alpha=alpha)
        if i == 0:
            layer = Linear(base_linear(w), name, config=config, r=one.rank, lora_alpha=alpha)
        else:
            layer.update_layer(name, r=one.rank, lora_alpha=alpha, config=config)
        layer.scaling[name] = one.scale  # exact, whatever rounding alpha / r brought
        use_tensor(layer.lora_A[name], "weight", one.A.detach().contiguous())
        use_tensor(layer.lora_B[name], "weight", one.B.detach().contiguous())
    return layer.eval()


def peft_names(index: Tensor, x: Tensor) -> tuple[bool, list[str]]:
    """PEFT's adapter_names for x and index (T,): one per row of x when each row of x
    (a sequence) uses one adapter, else one per token; and which of the two it is."""
    rows = index.view(x.shape[:-1]).flatten(1) if x.dim() > 2 else index[:, None]  # (batch, L)
    per_row = bool((rows == rows[:, :1]).all())
    ids = rows[:, 0].tolist() if per_row else index.tolist()
    return per_row, ["__base__" if i < 0 else f"a{i}" for i in ids]


def build_peft_mixed(w: MultiLoRAWeights) -> MultiOp:
    """PEFT's mixed-batch forward, layer(x, adapter_names=[...]), one name per row of x's
    first dim: x as it is when each row uses one adapter, else x as (T, in), one name per
    token. The names are made once per index tensor, as a caller would hold them."""
    layer = _peft_layer(w)
    memo: list[tuple[Tensor, int, bool, list[str]]] = []  # (index, its version, per_row, names)

    def op(x: Tensor, index: Tensor) -> Tensor:
        if index.numel() == 0:
            return layer.base_layer(x)
        if not memo or memo[0][0] is not index or memo[0][1] != index._version:
            memo[:] = [(index, index._version, *peft_names(index, x))]
        _, _, per_row, names = memo[0]
        with torch.no_grad():
            if per_row:
                return layer(x, adapter_names=names)
            y = layer(x.reshape(-1, w.in_features), adapter_names=names)
            return y.view(*x.shape[:-1], w.out_features)

    return op


register(
    MultiImpl(
        "peft_mixed",
        "HF PEFT lora.Linear holding every adapter, forward(x, adapter_names=...): a Python "
        "loop over the adapters present",
        build_peft_mixed,
        requires=peer_missing("peft"),
        origin="peer",
        source="peft",
    ),
    MULTI_IMPLS,
)
