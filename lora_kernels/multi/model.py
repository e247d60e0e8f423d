"""Many adapters in one batch across a whole model: MultiLoRALinear in place of each LoRA layer
of a PEFT model, and `adapter_batch`, which gives each sequence of the batch its adapter.

    layers = multi_from_peft(peft_model, impl="segments")
    with adapter_batch(peft_model, ["a0", "a2", None, "a0"]):  # None: the base model alone
        ids = peft_model.generate(input_ids, max_new_tokens=32)   # a batch of 4 sequences
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn

from lora_kernels.inject import _replace
from lora_kernels.multi.layer import MultiLoRALinear


class RoutedLoRA(nn.Module):
    """A MultiLoRALinear that reads its per-sequence adapter ids from `adapter_batch`:
    x (batch, seq, in) -> y (batch, seq, out), sequence i through adapter ids[i]."""

    def __init__(self, multi: MultiLoRALinear) -> None:
        super().__init__()
        self.multi = multi
        self.ids: Tensor | None = None  # (batch,) int64, set by adapter_batch

    def forward(self, x: Tensor) -> Tensor:
        if self.ids is None:
            raise RuntimeError(
                "no adapter batch set: run the model inside `with adapter_batch(model, names):`"
            )
        if x.dim() < 2 or x.shape[0] != self.ids.shape[0]:
            raise ValueError(f"the batch has {x.shape[0] if x.dim() else 0} sequences, but "
                             f"adapter_batch gave {self.ids.shape[0]} adapter names")  # fmt: skip
        return self.multi(x, self.ids)


def routed_layers(model: nn.Module) -> dict[str, RoutedLoRA]:
    """Every RoutedLoRA of the model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RoutedLoRA)}


def multi_from_peft(
    peft_model: nn.Module,
    impl: str = "segments",
    *,
    adapters: Sequence[str] | None = None,
    r_max: int | None = None,
) -> dict[str, MultiLoRALinear]:
    """Put a MultiLoRALinear serving `adapters` (default: all of a layer's) in place of each
    LoRA Linear of a PEFT model, on the same base weights; A and B are copied into stacks
    padded to the largest rank, or to `r_max` (what a server sized for its largest adapter
    pays). Every layer is built before any is put in place. Returns the new layers by name."""
    from lora_kernels.inject import _peft_lora_layers

    if routed_layers(peft_model):
        raise ValueError("the model serves an adapter batch already (multi_from_peft once)")
    layers = _peft_lora_layers(peft_model)
    if not layers:
        raise ValueError("the model has no PEFT LoRA layer (is it a PEFT LoRA model?)")
    new = {
        name: MultiLoRALinear.from_peft(layer, adapters, impl=impl, r_max=r_max)
        for name, layer in layers.items()
    }
    names = {tuple(m.names) for m in new.values()}
    if len(names) != 1:
        raise ValueError(f"the layers hold different adapters {sorted(names)}; pass adapters=")
    for name, multi in new.items():
        _replace(peft_model, name, RoutedLoRA(multi))
    return new


@contextlib.contextmanager
def adapter_batch(model: nn.Module, names: Sequence[str | None]) -> Iterator[None]:
    """Within the block, sequence i of every batch the model runs goes through adapter
    names[i] (None: the base model alone). Checked on entry: the names are known to every
    layer; and on each call, before the model runs: one name per sequence."""
    layers = routed_layers(model)
    if not layers:
        raise ValueError("the model has no multi-adapter layer; multi_from_peft() first")
    if isinstance(names, str) or not len(names):
        raise ValueError(f"names must be a non-empty list, one adapter name per sequence, "
                         f"got {names!r}")  # fmt: skip
    ids = {n: layer.multi.index(list(names)) for n, layer in layers.items()}  # checks names

    def check(_: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        x = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
        if isinstance(x, Tensor) and x.dim() >= 2 and x.shape[0] != len(names):
            raise ValueError(f"the batch has {x.shape[0]} sequences, but adapter_batch gave "
                             f"{len(names)} adapter names; give one per sequence")  # fmt: skip

    # On the model, and on its embedding, which generate() reaches through wrappers first.
    get = getattr(model, "get_input_embeddings", None)
    first = [model, *([get()] if callable(get) and isinstance(get(), nn.Module) else [])]
    hooks = [m.register_forward_pre_hook(check, with_kwargs=True) for m in first]
    for n, layer in layers.items():
        layer.ids = ids[n]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for layer in layers.values():
            layer.ids = None
