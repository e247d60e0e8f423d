"""Whole models for the end-to-end bench: transformers models built from a preset's config with
seeded random weights (no download), PEFT's LoRA on them, and our implementations through
from_peft, all sharing one set of weights; the forward and training-step work of each."""

from __future__ import annotations

import copy
import importlib.util
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.harness.cases import DTYPES, Keyed
from bench.harness.rounds import Budget
from bench.harness.timing import Work, synchronize
from lora_kernels import IMPLS, PRESETS, Preset, from_peft, fuse_modules, fused_modules
from lora_kernels.presets import llama


def _blocks(name: str, preset: Preset, blocks: int, layers_field: str) -> Preset:
    return replace(preset, name=name, blocks=blocks, hf={**preset.hf, layers_field: blocks})


# The models the bench builds: presets with fewer blocks, or scaled to a CPU.
MODELS: dict[str, Preset] = {
    # The Llama-3 architecture at a CPU's scale: 2 blocks, hidden 1024, MLP 3584, 16 heads,
    # 4 KV heads, vocab 8192.
    "llama-cpu": llama("llama-cpu", "Llama-3 on a CPU", 1024, 3584, 2, 16, 4, 8192),
    # The same, tiny, for the bench's own tests.
    "llama-tiny": llama("llama-tiny", "Llama-3 architecture, tiny", 64, 96, 2, 4, 2, 256),
    # GPT-2 small with its real sizes (vocab and head included), 2 of its 12 blocks.
    "gpt2-2blocks": _blocks("gpt2-2blocks", PRESETS["gpt2"], 2, "n_layer"),
    # Llama-3-8B with its real sizes, 2 of its 32 blocks: for GPUs.
    "llama3-8b-2blocks": _blocks("llama3-8b-2blocks", PRESETS["llama3-8b"], 2, "num_hidden_layers"),
}
FORWARD_PEERS = ("peft", "peft_merged")
# Our per-layer `autograd` with attention's q, k and v and the SwiGLU MLPs fused (fuse_modules)
FUSED = "fused"
FUSED_BASE_IMPL = "autograd"
TRAIN_PEERS = ("peft",)
MODEL_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 1e-2}  # over every layer of a model
MODEL_DTYPES = {"cpu": "fp32", "cuda": "bf16"}
RANK = 16


@dataclass(frozen=True)
class ModelProfile:
    """The model cases of a bench profile, which of our impls run, and the paired rounds'
    budget: a model's call is long, so fewer rounds than a layer's still time seconds."""

    grid: tuple[tuple[str, int, str], ...]  # (model, tokens, targets)
    cuda_grid: tuple[tuple[str, int, str], ...]
    ours: tuple[str, ...] | None  # None: every LoRA impl of ours that runs the mode, and fused
    budget: Budget


BOTH = ("attn", "all-linear")
MODEL_PROFILES: dict[str, ModelProfile] = {
    "tiny": ModelProfile((("llama-tiny", 32, "attn"),), (), ("addmm", FUSED),
                         Budget(0.05, 3, 5, target=0.05)),
    # Within the quick bench's 5 minutes on a 2-core CPU: a short step (16 tokens: one token
    # would leave attention nothing to weigh, so k_proj's adapter no gradient to check), with
    # LoRA on every linear layer; PEFT's form, the fastest eager and the memory-lean impl of
    # ours. The prefill of 128 tokens is the generation bench's; it, attention-only LoRA and
    # GPT-2 (its 50k vocabulary) run here in full.
    "quick": ModelProfile(
        (("llama-cpu", 16, "all-linear"),),
        (("llama-cpu", 512, "attn"), ("llama-cpu", 512, "all-linear")),
        ("two_step", "addmm", "autograd", FUSED), Budget(0.5, 5, 21),
    ),
    "full": ModelProfile(
        tuple((m, t, g) for m, t in (("llama-cpu", 16), ("llama-cpu", 128), ("llama-cpu", 512),
                                     ("gpt2-2blocks", 512)) for g in BOTH),
        tuple(("llama3-8b-2blocks", 2048, g) for g in BOTH),
        None, Budget(1.0, 7, 41),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ModelCase(Keyed):
    """LoRA of `rank` on the `targets` of `model` (batch 1, `tokens` tokens)."""

    model: str
    targets: str  # "attn" or "all-linear"
    tokens: int
    rank: int
    dtype: str
    device: str

    @property
    def key(self) -> str:
        """The case without its device: how runs of two devices are matched."""
        return f"{self.model} {self.targets} T={self.tokens} r={self.rank} {self.dtype}"

    @property
    def preset(self) -> Preset:
        return MODELS[self.model]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def model_cases(profile: str, devices: list[str]) -> list[ModelCase]:
    """The profile's model cases on each device, in the device's model dtype."""
    spec = MODEL_PROFILES[profile]
    return [
        ModelCase(model, targets, tokens, RANK, MODEL_DTYPES[device], device)
        for device in devices
        for model, tokens, targets in spec.grid + (spec.cuda_grid if device == "cuda" else ())
    ]


@dataclass(frozen=True)
class ModelJob:
    """One variant of one model case in one mode: a test of the end-to-end bench."""

    case: ModelCase
    mode: str
    variant: str

    def __str__(self) -> str:
        return f"{'forward' if self.mode == 'infer' else 'train'} {self.variant} {self.case}"


def model_jobs(profile: str, devices: list[str]) -> list[ModelJob]:
    """Every (case, mode, variant) of the profile: forward first, then the training step."""
    return [
        ModelJob(case, mode, variant)
        for case in model_cases(profile, devices)
        for mode in ("infer", "train")
        for variant in variants(mode, case.device, MODEL_PROFILES[profile].ours)
        if variant != FUSED or fusable(case)
    ]


def missing() -> str | None:
    """Why the model bench cannot run here, or None."""
    for module, extra in (("transformers", "models"), ("peft", "peers")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install 'lora-bench[{extra}]'"
    return None


def fusable(case: ModelCase) -> bool:
    """Whether the case's model has modules fuse_modules fuses: Llama's attention and MLP."""
    return case.preset.hf["model_type"] == "llama"


def variants(mode: str, device: str, only: tuple[str, ...] | None = None) -> list[str]:
    """PEFT's variants, then each of our LoRA impls that runs `mode` on `device`, then fused
    (those in `only` when given)."""
    peers = FORWARD_PEERS if mode == "infer" else TRAIN_PEERS
    ours = [
        name for name, impl in IMPLS.items()
        if impl.origin == "ours" and impl.lora_equivalent and impl.variant == "lora"
        and (only is None or name in only)
        and not impl.unavailable_reason(device, torch.float32, mode)
    ]  # fmt: skip
    fused = [FUSED] if only is None or FUSED in only else []
    return [*peers, *ours, *fused]


def unique_bytes(tensors: list[Tensor]) -> int:
    """Bytes of the tensors' storages, each storage once (views and shared tensors too)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors."""
    memo: dict[int, object] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def hf_model(case: ModelCase) -> nn.Module:
    """The transformers model of the case's preset with seeded random weights, frozen, in
    eval mode (dropout off), on the case's device and dtype."""
    import transformers

    fields = dict(case.preset.hf)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device(case.device):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.to(case.torch_dtype).eval().requires_grad_(False)


def peft_model(base: nn.Module, case: ModelCase) -> nn.Module:
    """PEFT's LoRA on a shared copy of `base`; A and B random (B non-zero), in base's dtype."""
    from peft import LoraConfig, get_peft_model

    targets = case.preset.resolve(case.targets)
    config = LoraConfig(
        r=case.rank, lora_alpha=2 * case.rank, target_modules=targets,
        init_lora_weights=False, fan_in_fan_out=case.preset.hf["model_type"] == "gpt2",
    )  # fmt: skip
    torch.manual_seed(1)
    return get_peft_model(shared_copy(base), config, autocast_adapter_dtype=False).eval()


def build(variant: str, peft: Any) -> nn.Module:  # peft: a PeftModel
    """The model of one variant: PEFT's model, PEFT merged into its own copy of the weights,
    or our impl through from_peft on a copy sharing PEFT's tensors (fused: `autograd`, then
    fuse_modules, which refuses a model where a module with LoRA cannot fuse)."""
    if variant == "peft":
        return peft
    if variant == "peft_merged":
        return copy.deepcopy(peft).merge_and_unload()
    model = shared_copy(peft)
    from_peft(model, impl=FUSED_BASE_IMPL if variant == FUSED else variant)
    if variant == FUSED:
        fuse_modules(model)
    return model


@dataclass
class Inputs:
    """The input embeddings (1, T, hidden) every variant reads, and random next-token labels."""

    embeds: Tensor
    labels: Tensor

    @classmethod
    def of(cls, base: Any, case: ModelCase) -> Inputs:  # base: a transformers model
        gen = torch.Generator().manual_seed(2)
        ids = torch.randint(0, case.preset.vocab, (1, case.tokens), generator=gen)
        with torch.no_grad():
            embeds = base.get_input_embeddings()(ids.to(case.device))
        return cls(embeds, ids.to(case.device))


def forward(model: nn.Module, inputs: Inputs) -> Tensor:
    """Logits (1, T, vocab) without autograd."""
    with torch.no_grad():
        return model(inputs_embeds=inputs.embeds, use_cache=False).logits


def backward(model: nn.Module, inputs: Inputs) -> None:
    """Forward, cross-entropy and backward: the gradients of a step, without the update."""
    logits = model(inputs_embeds=inputs.embeds, use_cache=False).logits
    F.cross_entropy(logits.flatten(0, 1).float(), inputs.labels.flatten()).backward()


def train_work(model: nn.Module, inputs: Inputs) -> Work:
    """One training step: forward, cross-entropy, backward to the input embeddings and the
    LoRA parameters, and an AdamW step on them. The step runs in full with lr=0, so that it
    leaves A and B as they were: the variants share them and are checked on the same values.
    The frozen base model has no parameter to train: its step is the forward and the backward
    to the embeddings, as the layer bench's base step is the forward and dx."""
    embeds = inputs.embeds.detach().requires_grad_()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0) if params else None

    def step() -> None:
        embeds.grad = None
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        backward(model, Inputs(embeds, inputs.labels))
        if optimizer is not None:
            optimizer.step()

    return step


def lora_grads(model: nn.Module) -> dict[str, Tensor]:
    """Gradients of the LoRA parameters by layer name and A/B, PEFT's and ours alike."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            out[name.replace(".default.weight", "").replace("base_model.model.", "")] = p.grad
    return out


def target_names(base: nn.Module, case: ModelCase) -> list[str]:
    """Full names of the targeted layers in the base model."""
    suffixes = tuple(f".{m}" for m in case.preset.resolve(case.targets))
    return [n for n, _ in base.named_modules() if n.endswith(suffixes)]


def adapted_names(model: nn.Module, targets: list[str]) -> list[str]:
    """The modules whose calls hold the targeted layers' work in `model`: the targets, and
    its fused MLPs (which run their layers without calling them)."""
    return targets + [n for n, kind in fused_modules(model).items() if kind == "mlp"]


def share_in(model: nn.Module, names: list[str], work: Work, device: str) -> float:
    """Share of one call of `work` spent inside the modules called `names` (forward and
    backward, between hooks that synchronize the device). An instrumented call, apart from
    the timed rounds: hooks add their own cost to both sides of the share."""
    suffixes = tuple(f".{n}" for n in names)
    modules = [m for n, m in model.named_modules() if n.endswith(suffixes) or n in names]
    spent, starts = [0.0], {}

    def start(m: nn.Module, *_: object) -> None:
        synchronize(device)
        starts[id(m)] = time.perf_counter()

    def stop(m: nn.Module, *_: object) -> None:
        synchronize(device)
        spent[0] += time.perf_counter() - starts.pop(id(m))

    handles = []
    for m in modules:
        handles += [m.register_forward_pre_hook(start), m.register_forward_hook(stop)]
        handles += [m.register_full_backward_pre_hook(start), m.register_full_backward_hook(stop)]
    try:
        work()
        spent[0] = 0.0
        synchronize(device)
        begin = time.perf_counter()
        work()
        synchronize(device)
        total = time.perf_counter() - begin
    finally:
        for h in handles:
            h.remove()
    return spent[0] / total
