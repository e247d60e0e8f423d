"""What adapters cost in service, beside the forward: loading one from PEFT's files, switching
the active one, deleting one, each with n adapters loaded already; merging and unmerging a
whole model; and a hot swap of a compiled model's adapter (recompiles, time, and whether the
output is still right). PEFT's PeftModel against ours (lora_kernels.adapters) on the same
files and base weights."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.families import models
from bench.families.models import MODEL_DTYPES, ModelCase
from bench.harness.cases import Keyed
from lora_kernels import (
    adapter_names,
    delete_adapter,
    from_peft,
    hotswap_adapter,
    load_adapter,
    lora_layers,
    merge,
    set_adapter,
    unmerge,
)

VARIANTS = ("peft", "ours")
GROWING = ("load", "switch", "delete")  # timed at each count of adapters loaded
ONCE = ("merge", "unmerge", "hotswap")  # timed with one adapter loaded


@dataclass(frozen=True)
class LifeCase(Keyed):
    """`loaded` adapters of rank `rank` on the `targets` of `model`, PEFT's files on disk."""

    model: str
    targets: str
    rank: int
    loaded: int
    dtype: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.model} {self.targets} r={self.rank} loaded={self.loaded} {self.dtype}"

    @property
    def model_case(self) -> ModelCase:
        return ModelCase(self.model, self.targets, 16, self.rank, self.dtype, self.device)


@dataclass(frozen=True)
class LifeJob:
    case: LifeCase
    variant: str
    op: str

    def __str__(self) -> str:
        return f"{self.op} {self.variant} {self.case}"


@dataclass(frozen=True)
class LifeProfile:
    """A profile's model, the counts of adapters loaded, the rounds of each op, and the
    compile backend of the hot swap ("" leaves the hot swap out)."""

    model: str
    loaded: tuple[int, ...]
    rounds: int
    backend: str


LIFE_PROFILES: dict[str, LifeProfile] = {
    "tiny": LifeProfile("llama-tiny", (1, 4), 3, "eager"),
    # The hot swap's recompiles are dynamo's (its guards), whatever the backend: the quick
    # profile traces with "eager" (seconds); inductor's compile (15-25 s a model on a 2-core
    # CPU) runs in full.
    "quick": LifeProfile("llama-cpu", (1, 16), 5, "eager"),
    "full": LifeProfile("llama-cpu", (1, 4, 16, 64), 9, "inductor"),
}


def life_jobs(profile: str, devices: list[str]) -> list[LifeJob]:
    spec = LIFE_PROFILES[profile]
    jobs = []
    for device in devices:
        for n in spec.loaded:
            case = LifeCase(spec.model, "all-linear", models.RANK, n, MODEL_DTYPES[device], device)
            ops = GROWING + (ONCE if n == spec.loaded[0] else ())
            jobs += [LifeJob(case, v, op) for op in ops for v in VARIANTS
                     if op != "hotswap" or spec.backend]  # fmt: skip
    return jobs


# --- models and files ------------------------------------------------------------------------


def peft_model(base: nn.Module, case: LifeCase) -> Any:  # a PeftModel
    """PEFT's LoRA on a shared copy of `base`, A and B random: the adapter "default"."""
    return models.peft_model(base, case.model_case)


def randomize(model: nn.Module, seed: int) -> None:
    """Fresh random A and B for every LoRA layer of a PEFT model (its active adapter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02).to(p.dtype))


@dataclass
class Files:
    """Adapters saved in PEFT's format: `one` to load and switch to, `two` to hot-swap in."""

    root: Path
    one: Path
    two: Path


def save_files(base: nn.Module, case: LifeCase) -> Files:
    """Two random adapters of the case's shape, saved by PEFT in a temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="lora-bench-adapters-"))
    for name, seed in (("one", 21), ("two", 22)):
        model = peft_model(base, case)
        randomize(model, seed)
        model.save_pretrained(root / name)
    return Files(root, root / "one", root / "two")


def logits(model: Any, ids: Tensor) -> Tensor:  # a model, or a compiled one
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@dataclass
class Side:
    """One variant's model with `loaded` adapters (default, then l1, l2, ...) and its ops."""

    variant: str
    model: Any
    names: list[str]

    def load(self, folder: Path, name: str) -> None:
        if self.variant == "peft":
            self.model.load_adapter(str(folder), adapter_name=name, autocast_adapter_dtype=False)
        else:
            load_adapter(self.model, folder, name)

    def switch(self, name: str) -> None:
        if self.variant == "peft":
            self.model.set_adapter(name)
        else:
            set_adapter(self.model, name)

    def delete(self, name: str) -> None:
        if self.variant == "peft":
            self.model.delete_adapter(name)
        else:
            delete_adapter(self.model, name)

    def merge(self) -> None:
        if self.variant == "peft":
            self.model.merge_adapter()
        else:
            merge(self.model)

    def unmerge(self) -> None:
        if self.variant == "peft":
            self.model.unmerge_adapter()
        else:
            unmerge(self.model)

    def loaded(self) -> list[str]:
        """The names of the adapters the model holds."""
        return list(self.model.peft_config) if self.variant == "peft" else adapter_names(self.model)

    def merged(self) -> bool:
        """Whether the model's layers hold their adapter merged."""
        if self.variant == "peft":
            return any(getattr(m, "merged", False) for m in self.model.modules()
                       if hasattr(m, "merged_adapters"))  # fmt: skip
        return any(layer.merged for _, layer in lora_layers(self.model))

    def hotswap(self, folder: Path) -> None:
        if self.variant == "peft":
            from peft.utils.hotswap import hotswap_adapter as peft_hotswap

            peft_hotswap(self.model, str(folder), adapter_name="default")
        else:
            hotswap_adapter(self.model, folder)


def side(variant: str, base: nn.Module, case: LifeCase, files: Files) -> Side:
    """The variant's model on a shared copy of `base` (its own adapter tensors), holding the
    "default" adapter and loaded - 1 more, l1, l2, ..., all from file `one`."""
    peft = peft_model(base, case)
    model = peft
    if variant == "ours":
        model = copy.deepcopy(peft)  # its own A and B: a hot swap writes them in place
        for p in model.parameters():
            if not any(p is q for q in base.parameters()):
                p.requires_grad_(False)
        from_peft(model)
    s = Side(variant, model, ["default"])
    for i in range(1, case.loaded):
        s.load(files.one, f"l{i}")
        s.names.append(f"l{i}")
    return s


@dataclass
class Timed:
    """An op and the setup that runs before each of its rounds, untimed."""

    op: Callable[[], None]
    setup: Callable[[], None]


def timed_op(s: Side, op: str, files: Files) -> Timed:
    """The op of a lifecycle job on its side; each round starts from the same state."""
    other = s.names[1] if len(s.names) > 1 else s.names[0]
    state = {"active": s.names[0]}

    def flip() -> None:
        state["active"] = other if state["active"] == s.names[0] else s.names[0]
        s.switch(state["active"])

    def drop_new() -> None:
        if "new" in s.loaded():
            s.delete("new")

    def add_new() -> None:
        if "new" not in s.loaded():
            s.load(files.one, "new")

    def ensure_unmerged() -> None:
        if s.merged():
            s.unmerge()

    def ensure_merged() -> None:
        if not s.merged():
            s.merge()

    ops = {
        "load": Timed(lambda: s.load(files.one, "new"), drop_new),
        "switch": Timed(flip, lambda: None),
        "delete": Timed(lambda: s.delete("new"), add_new),
        "merge": Timed(s.merge, ensure_unmerged),
        "unmerge": Timed(s.unmerge, ensure_merged),
    }
    return ops[op]
