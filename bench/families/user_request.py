"""What `lora-bench model` is asked (Request), checked whole before anything is built
(prepare): the model, the blocks, the adapter against the model, the options together, and
the memory plan against the device; and what a run gathers (Measured)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench.families import models
from bench.families import user_adapter as ua
from bench.families import user_model as um
from bench.harness.cases import DTYPES
from bench.schema.entries import ProfileEntry, UserModelEntry

MODES = ("generate", "train", "all")


@dataclass(frozen=True)
class Request:
    """What `lora-bench model` measures: MODEL, the adapter (a folder, or described), the
    modes and their sizes, dtype, device, blocks kept, and each variant's timing budget."""

    model: str
    adapter: str | None = None
    rank: int | None = None  # a described adapter's (default 16)
    alpha: float | None = None  # default 2 x rank
    targets: str | None = None  # default all-linear
    dora: bool = False
    rslora: bool = False
    mode: str = "all"
    batch: int = 1
    prompt_tokens: int = 128
    new_tokens: int = 32
    tokens: int = 128  # a training step's sequence length
    dtype: str | None = None  # default: fp32 on the CPU, bf16 on CUDA
    device: str = "cpu"
    blocks: int | None = None
    adapters: int = 1  # > 1: also a batch whose sequences take one of this many adapters
    compile: bool = False  # also generation compiled whole (static cache, torch.compile)
    base_dtype: str | None = None  # "nf4" or "int8": the frozen linear weights quantized
    seconds: float = 3.0
    threads: int = 1

    @property
    def modes(self) -> list[str]:
        return ["generate", "train"] if self.mode == "all" else [self.mode]

    @property
    def dtype_name(self) -> str:
        return self.dtype or models.MODEL_DTYPES[torch.device(self.device).type]


@dataclass
class Prepared:
    """A request that passed every check: nothing built yet."""

    request: Request
    source: um.Source
    adapter: ua.AdapterSpec
    fit: um.Fit
    notes: list[str]


def _check_request(r: Request) -> None:
    if r.mode not in MODES:
        raise um.UserInputError(f"--mode {r.mode!r}: allowed {', '.join(MODES)}")
    if r.dtype is not None and r.dtype not in DTYPES:
        raise um.UserInputError(f"--dtype {r.dtype!r}: allowed {', '.join(DTYPES)}")
    if torch.device(r.device).type == "cuda" and not torch.cuda.is_available():
        raise um.UserInputError("--device cuda: CUDA is not available on this machine")
    if r.mode != "train" and r.new_tokens < 2:
        raise um.UserInputError(
            f"--new-tokens {r.new_tokens}: at least 2 (the first comes "
            "from the prompt; time per output token needs another)"
        )
    if r.adapters > 1 and (r.mode == "train" or r.batch < 2):
        raise um.UserInputError(f"--adapters {r.adapters}: a mixed batch is served in "
                                "generation: give --mode generate or all, and --batch 2 or more "
                                "(each sequence takes one adapter)")  # fmt: skip
    if r.adapters > 1 and r.dora:
        raise um.UserInputError("--adapters with --dora: a mixed batch serves LoRA adapters")
    if r.base_dtype is not None and (r.dora or r.adapters > 1):
        raise um.UserInputError(f"--base-dtype {r.base_dtype} with "
                                f"{'--dora' if r.dora else '--adapters'}: a quantized base takes "
                                "one plain LoRA adapter here (QLoRA)")  # fmt: skip
    if r.targets is not None and not [t for t in r.targets.split(",") if t.strip()]:
        raise um.UserInputError(f"--targets {r.targets!r}: name modules, comma-separated, or "
                                "all-linear")  # fmt: skip
    described = (r.rank, r.alpha, r.targets, r.dora or None, r.rslora or None)
    if r.adapter is not None and any(v is not None for v in described):
        raise um.UserInputError("--adapter DIR gives the adapter; --rank, --alpha, --targets, "
                                "--dora and --rslora describe one instead: give one or the "
                                "other")  # fmt: skip


def prepare(r: Request) -> Prepared:
    """Every check of the request, before anything is built: the model, the blocks, the
    adapter against the model, and the memory plan against the device."""
    _check_request(r)
    reason = models.missing()
    if reason:
        raise um.UserInputError(reason)
    source = um.resolve(r.model, r.blocks)
    targets = r.targets or "all-linear"
    spec = ua.adapter_spec(r.adapter, rank=r.rank or 16, alpha=r.alpha, targets=targets,
                           dora=r.dora, rslora=r.rslora)  # fmt: skip
    meta = um.meta_model(source)
    notes = ua.check_adapter(spec, source, meta)
    if r.base_dtype is not None:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise um.UserInputError(f"--base-dtype {r.base_dtype}: bitsandbytes is not "
                                    "installed: pip install 'lora-bench[quant]'")  # fmt: skip
        if spec.use_dora:
            raise um.UserInputError(
                f"--base-dtype {r.base_dtype}: the adapter is DoRA; a "
                "quantized base takes a plain LoRA adapter here (QLoRA)"
            )
        um.check_quantizable(meta, r.base_dtype, r.device, source.label)
    size = DTYPES[r.dtype_name].itemsize
    tokens = max(r.tokens if "train" in r.modes else 0,
                 r.prompt_tokens + r.new_tokens if "generate" in r.modes else 0)  # fmt: skip
    kv = r.prompt_tokens + r.new_tokens if "generate" in r.modes else 0
    copies = 3 if r.compile and "generate" in r.modes else 2
    plan = um.fit(source, meta, size, tokens, r.batch, kv, r.device, r.base_dtype, copies)
    if not plan.fits:
        keep = plan.blocks_that_fit()
        hint = (f"--blocks {keep} would fit" if keep else "not even one block fits beside the "
                "embeddings and head: a smaller --dtype or --base-dtype, or lower --batch or "
                "the token counts")  # fmt: skip
        raise um.UserInputError(
            f"{source.label} with {source.blocks} blocks needs about "
            f"{plan.estimate / 2**30:.1f} GiB by the planner's estimate, and {r.device} has "
            f"{plan.free / 2**30:.1f} GiB free; {hint}"
        )
    return Prepared(r, source, spec, plan, notes)


@dataclass
class Measured:
    """What a run gathers, entry by entry."""

    entries: list[UserModelEntry] = field(default_factory=list)
    profiles: list[ProfileEntry] = field(default_factory=list)  # where the time goes
    screened: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_s: dict[str, list[float]] = field(default_factory=dict)
    merge_s: dict[str, list[float]] = field(default_factory=dict)


class FailedError(Exception):
    """A variant that did not compute PEFT's function: not timed."""


Say = Callable[[str], None]
