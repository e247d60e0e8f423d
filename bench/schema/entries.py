"""The typed entries of a run, one dataclass per kind, each tagged by "kind" in the file.
They import neither torch nor the registry, so a results file stays readable after the code
that wrote it has changed."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

from bench.schema.decode import positive, positive_seconds
from bench.stats.setups import SetupSummary, summarize

CONTROL = "base"  # the impl timed against itself on an allocation of its own: the A/A control


def finite_error(entry: object) -> None:
    """ValueError unless the entry's error against its oracle is finite: an impl whose error
    is inf failed its check and was never timed, so no entry of it can be read."""
    error = getattr(entry, "rel_error", 0.0)
    if math.isinf(error):
        who = getattr(entry, "impl", None) or getattr(entry, "variant", "?")
        raise ValueError(
            f"{who} has an error of inf against its oracle: it failed its check and cannot have "
            "timings (only base's training step, which has no adapter gradient, may)"
        )


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) with the inclusive method; a single value gives three equal ones."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


@dataclass(frozen=True)
class Paired:
    """Seconds per op of interleaved rounds: impl_s[i] and base_s[i] are one pair, run one
    right after the other, on setup setups[i] (one setup when `setups` is empty: files from
    before setups, and families that build one). The ratio and its CI come from the setups
    (bench.stats.setups)."""

    inner: int  # ops per round
    impl_s: list[float]
    base_s: list[float]
    stopped: str = "budget"  # sure, budget or pairs: files without it ran a fixed budget
    target: float = 0.0  # the ratio CI's half-width the rounds aimed at; 0: none (fixed budget)
    setups: list[int] = field(default_factory=list)  # each pair's setup; []: all one setup

    def __post_init__(self) -> None:
        if len(self.impl_s) != len(self.base_s) or not self.impl_s:
            raise ValueError(
                f"paired rounds need as many base as impl rounds, at least one; got "
                f"{len(self.impl_s)} and {len(self.base_s)}"
            )
        if self.setups and len(self.setups) != len(self.impl_s):
            raise ValueError(
                f"setups must name the setup of every pair: {len(self.impl_s)} pairs, "
                f"{len(self.setups)} setups"
            )
        if self.inner < 1:
            raise ValueError(f"inner must be >= 1 op a round, got {self.inner}")
        positive_seconds("impl_s", self.impl_s)
        positive_seconds("base_s", self.base_s)

    @property
    def ratios(self) -> list[float]:
        return [i / b for i, b in zip(self.impl_s, self.base_s, strict=True)]

    @cached_property
    def summary(self) -> SetupSummary:
        """The ratio, its 95% CI and what they rest on (bench.stats.setups)."""
        return summarize(self.ratios, self.setups)

    @property
    def ratio(self) -> float:
        """impl / base: the median of the per-pair ratios, or over several setups the
        geometric mean of each setup's median."""
        return self.summary.ratio

    @property
    def ratio_iqr(self) -> float:
        """The spread of the per-pair ratios, all setups together."""
        q1, _, q3 = quartiles(self.ratios)
        return q3 - q1

    @property
    def ratio_ci(self) -> tuple[float, float]:
        """The 95% confidence interval of the ratio: over the setups when there are several,
        else the distribution-free interval of the median pair."""
        return self.summary.ci

    @property
    def setup_count(self) -> int:
        return self.summary.setups

    @property
    def impl_median_s(self) -> float:
        return statistics.median(self.impl_s)

    @property
    def base_median_s(self) -> float:
        return statistics.median(self.base_s)


@dataclass(frozen=True)
class CaseEntry:
    """What every entry of one impl on one case holds: the benchmark and the case."""

    fullname: str  # pytest node id, what --recheck runs again
    case: str  # "shape T=.. r=.. dtype device"
    key: str  # the case without its device: how runs of two devices are matched
    impl: str
    shape: str
    tokens: int
    rank: int
    dtype: str
    device: str


@dataclass(frozen=True)
class TimeEntry(CaseEntry):
    """One timed (case, impl, mode): its paired rounds against base and what was checked."""

    kind: ClassVar[str] = "time"
    mode: str  # "infer" or "train"
    in_features: int
    out_features: int
    bias: bool
    flops: int  # useful FLOPs of one op (the base layer's alone for base)
    min_bytes: int  # fewest bytes one op moves
    floor_s: float  # roofline floor of the LoRA layer from the run's calibrated peaks
    rel_error: float  # against the float64 oracle, worst of y and the gradients
    build_s: float
    threads: int
    tf32: bool
    copied_output: bool  # op's output was not contiguous; the timed op includes the copy
    copies: int  # sets of weights and input the calls rotated over (1: a warm cache)
    rounds: Paired
    control: bool = False  # base against base on an allocation of its own: the A/A control

    def __post_init__(self) -> None:
        positive("flops, min_bytes and floor_s", [self.flops, self.min_bytes, self.floor_s])
        if not (self.impl == CONTROL and self.mode == "train"):
            finite_error(self)

    @property
    def ratio_to_base(self) -> float:
        return self.rounds.ratio

    @property
    def ratio_iqr(self) -> float:
        return self.rounds.ratio_iqr

    @property
    def median_s(self) -> float:
        """The impl's own median: compare within a case only through the paired ratio."""
        return self.rounds.impl_median_s

    @property
    def base_median_s(self) -> float:
        return self.rounds.base_median_s


@dataclass(frozen=True)
class MemoryEntry(CaseEntry):
    """Peak memory of building and running one impl once on one case."""

    kind: ClassVar[str] = "memory"
    mode: str
    method: str
    peak_bytes: int


@dataclass(frozen=True)
class ParamsEntry:
    """Trainable and total parameters of LoRALinear at one shape and rank."""

    kind: ClassVar[str] = "params"
    fullname: str
    case: str
    shape: str
    in_features: int
    out_features: int
    rank: int
    bias: bool
    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


@dataclass(frozen=True)
class TimerCheckEntry(CaseEntry):
    """One op's seconds per call by our paired timing and by independent timers of the same
    work (torch.utils.benchmark's Timer; on CUDA also CUDA events and triton's do_bench)."""

    kind: ClassVar[str] = "timer"
    copies: int
    ours_s: float
    references: dict[str, float]  # timer name -> seconds per call

    def __post_init__(self) -> None:
        positive_seconds("ours_s", [self.ours_s, *self.references.values()])


class PairedTokens:
    """Figures of an entry timed in pairs with its base over `tokens` tokens a call."""

    tokens: int
    rounds: Paired

    @property
    def ratio_to_base(self) -> float:
        return self.rounds.ratio

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.rounds.impl_median_s


class PairedSteps(PairedTokens):
    """Figures of an entry whose timed call runs `steps` steps (forwards, or training steps)."""

    steps: int

    @property
    def per_step_s(self) -> float:
        """Seconds of one step: time to first token (prefill), per output token (decode), or
        a training step."""
        return self.rounds.impl_median_s / self.steps


@dataclass(frozen=True)
class ModelEntry(PairedTokens):
    """One variant of a whole model (PEFT's, or ours through from_peft) timed in pairs with
    the frozen model: a forward, or a training step."""

    kind: ClassVar[str] = "model"
    fullname: str
    case: str  # "model targets T=.. r=.. dtype device"
    key: str
    model: str
    targets: str  # "attn" or "all-linear"
    tokens: int
    rank: int
    dtype: str
    device: str
    variant: str  # "peft", "peft_merged", or one of our impls
    mode: str
    adapted_layers: int
    trainable: int
    rel_error: float  # against PEFT's model: logits, and in training the LoRA gradients
    build_s: float
    threads: int
    adapted_share: float  # share of the variant's call spent inside the adapted layers
    base_share: float  # share of the frozen model's call spent inside the same layers
    peak_bytes: int
    memory_method: str
    rounds: Paired

    def __post_init__(self) -> None:
        finite_error(self)


@dataclass(frozen=True)
class MultiEntry(PairedTokens):
    """One variant on one multi-adapter case, timed in pairs with the base GEMM: a
    multi-adapter impl (ours, or PEFT's mixed batch), or a single-adapter impl on the same
    shape and tokens ("single:<impl>", one adapter of rank r_max), the reference of what
    mixing adapters costs."""

    kind: ClassVar[str] = "multi"
    fullname: str
    case: str  # "shape T=.. n=.. distribution r=.. dtype device"
    key: str
    shape: str
    tokens: int
    adapters: int
    distribution: str
    ranks: str  # "8", or "mixed"
    dtype: str
    device: str
    r_max: int  # the widest adapter: the rank of the single-adapter references
    variant: str
    origin: str  # "ours", "peer", or "single"
    in_use: int  # distinct adapters the batch's index uses
    rel_error: float  # against the float64 oracle (per token for the multi-adapter impls)
    build_s: float
    threads: int
    peak_bytes: int  # above the inputs, over one call
    memory_method: str
    rounds: Paired

    def __post_init__(self) -> None:
        finite_error(self)


@dataclass(frozen=True)
class GenerationEntry(PairedSteps):
    """One variant generating on one case, one phase timed in pairs with the frozen model:
    prefill (the prompt to the first new token: time to first token) or decode (the other
    new - 1 tokens from the prompt's KV cache: time per output token = median / steps)."""

    kind: ClassVar[str] = "generation"
    fullname: str
    case: str  # "model B=.. prompt=.. new=.. n=.. r=.. [r_max=..] dtype device"
    key: str
    model: str
    batch: int
    prompt: int
    new: int
    adapters: int  # 1: one adapter for every sequence; n > 1: one per sequence
    rank: int  # the single adapter's; mixed batches take MIXED_RANKS
    r_max: int  # ours stacked to this rank (0: the largest)
    dtype: str
    device: str
    variant: str
    origin: str  # "ours" or "peer"
    merged: bool  # the adapter folded into W (one adapter only)
    reference: str  # the PEFT variant its tokens and logits were checked against
    phase: str  # "prefill" or "decode"
    steps: int  # forwards a timed call runs: 1 (prefill) or new - 1 (decode)
    tokens: int  # tokens a timed call processes: batch * prompt, or batch * steps
    tokens_equal: float  # share of the generated token ids equal to the reference's
    rel_error: float  # teacher-forced logits over prompt and new tokens, against the reference
    build_s: float
    threads: int
    peak_bytes: int
    memory_method: str
    rounds: Paired

    def __post_init__(self) -> None:
        finite_error(self)
        positive("batch, prompt, new, steps and tokens",
                 [self.batch, self.prompt, self.new, self.steps, self.tokens])  # fmt: skip
        if self.phase not in ("prefill", "decode"):
            raise ValueError(f"phase must be prefill or decode, got {self.phase!r}")
        if not 0.0 <= self.tokens_equal <= 1.0:
            raise ValueError(f"tokens_equal must be in [0, 1], got {self.tokens_equal}")


@dataclass(frozen=True)
class FusedEntry:
    """One module-level impl (q, k and v together, or a SwiGLU MLP) on one module case, its
    forward or training step timed in pairs with the frozen module's, and in training the
    bytes autograd kept for backward (the frozen module's beside) and the step's peak."""

    kind: ClassVar[str] = "fused"
    fullname: str
    case: str  # "model module T=.. r=.. dtype device"
    key: str
    module: str  # "qkv" or "mlp"
    model: str
    tokens: int
    rank: int
    dtype: str
    device: str
    impl: str
    mode: str
    origin: str  # "ours" or "peer"
    threads: int
    rel_error: float  # against the module's float64 oracle, worst of outputs and gradients
    saved_bytes: int
    frozen_saved_bytes: int
    peak_bytes: int
    rounds: Paired

    def __post_init__(self) -> None:
        finite_error(self)


@dataclass(frozen=True)
class ConvEntry:
    """One Conv2d LoRA impl on one convolution case, its forward or training step timed in
    pairs with the frozen convolution's; in training the bytes autograd kept for backward
    (the frozen convolution's beside) and the step's peak."""

    kind: ClassVar[str] = "conv"
    fullname: str
    case: str  # "layer N=.. r=.. dtype device"
    key: str
    layer: str
    batch: int
    rank: int
    dtype: str
    device: str
    impl: str
    mode: str
    origin: str  # "ours", "peer" or "plugin"
    threads: int
    rel_error: float  # against the float64 oracle, worst of the output and every gradient
    build_s: float
    copied_output: bool  # the op's output was strided: the timed work includes its copy
    flops: int  # forward, with the adapter
    base_flops: int  # forward, the frozen convolution alone
    saved_bytes: int
    frozen_saved_bytes: int
    peak_bytes: int
    rounds: Paired
    layout: str = "nchw"  # "nhwc": the impl ran channels-last, the frozen conv still NCHW

    def __post_init__(self) -> None:
        finite_error(self)
        positive("batch, rank and flops", [self.batch, self.rank, self.flops, self.base_flops])
        if self.mode not in ("infer", "train"):
            raise ValueError(f"mode must be infer or train, got {self.mode!r}")
        if self.layout not in ("nchw", "nhwc"):
            raise ValueError(f"layout must be nchw or nhwc, got {self.layout!r}")
        if self.base_flops > self.flops:
            raise ValueError(f"base_flops {self.base_flops} exceeds flops {self.flops}: the "
                             "adapter adds work")  # fmt: skip


@dataclass(frozen=True)
class ConvModelEntry:
    """A convolutional model with LoRA on its convolutions (one of our Conv2d impls, or
    PEFT's): its training step timed in pairs with a full fine-tune step of the same model,
    the parameters each trains, and the bytes a step keeps for backward."""

    kind: ClassVar[str] = "conv_model"
    fullname: str
    case: str  # "model N=.. ..px r=.. dtype device"
    key: str
    model: str
    batch: int
    size: int
    rank: int
    dtype: str
    device: str
    variant: str  # one of our Conv2d impls, or "peft"
    origin: str
    threads: int
    rel_error: float  # logits and every A and B gradient against the float64 oracle, worst
    floor_error: float  # the most the check allowed, over FLOOR_FACTOR: the written function's
    trainable_params: int
    full_params: int
    saved_bytes: int
    full_saved_bytes: int
    rounds: Paired  # impl: the LoRA step; base: the full fine-tune step

    def __post_init__(self) -> None:
        finite_error(self)
        counts: list[float] = [
            self.batch,
            self.size,
            self.rank,
            self.trainable_params,
            self.full_params,
        ]
        positive("batch, size, rank and parameter counts", counts)
        if self.trainable_params >= self.full_params:
            raise ValueError(f"trainable_params {self.trainable_params} must be below "
                             f"full_params {self.full_params}: LoRA trains a part")  # fmt: skip


@dataclass(frozen=True)
class UNetEntry:
    """A diffusion UNet with LoRA on `targets` (PEFT's layers as diffusers puts them, or ours
    through from_peft): its denoising call or training step timed in pairs with the frozen
    UNet's."""

    kind: ClassVar[str] = "unet"
    fullname: str
    case: str  # "model targets N=.. r=.. dtype device"
    key: str
    model: str
    targets: str  # "attn" or "attn+conv"
    batch: int
    rank: int
    dtype: str
    device: str
    variant: str  # "peft", or our "<linear impl>" or "<linear impl>/<conv impl>"
    mode: str  # "infer" (one denoising call) or "train"
    origin: str
    threads: int
    rel_error: float  # against PEFT's UNet: the prediction, in training every A and B gradient
    lora_layers: int
    lora_params: int
    rounds: Paired

    def __post_init__(self) -> None:
        finite_error(self)
        positive("batch, rank, LoRA layers and parameters",
                 [self.batch, self.rank, self.lora_layers, self.lora_params])  # fmt: skip


@dataclass(frozen=True)
class UNetFuseEntry:
    """Our merge and unmerge of every LoRA layer of a UNet against diffusers' fuse_lora and
    unfuse_lora: one cycle of each in paired rounds (impl: ours; base: diffusers'), and how far
    `cycles` cycles moved the base weights (worst relative change)."""

    kind: ClassVar[str] = "unet_fuse"
    fullname: str
    case: str
    key: str
    model: str
    targets: str
    batch: int
    rank: int
    dtype: str
    device: str
    variant: str
    threads: int
    cycles: int
    drift: float
    diffusers_drift: float
    peak_bytes: int  # allocated over one cycle above what was held: ours
    diffusers_peak_bytes: int
    rounds: Paired

    def __post_init__(self) -> None:
        positive("cycles", [self.cycles])
        if not (math.isfinite(self.drift) and math.isfinite(self.diffusers_drift)):
            raise ValueError("drift must be finite: a cycle that breaks the weights fails its job")


@dataclass(frozen=True)
class TPEntry:
    """One split of a tensor-parallel LoRA layer on `world` ranks: its forward or training
    step timed in pairs (on rank 0, every call started on a barrier) with the frozen
    tensor-parallel layer of the same split, in the same processes; the bytes its collectives
    put in per call on a rank (measured, and equal to the formulas of
    lora_kernels.tp.expected_traffic, or the job fails), the frozen layer's beside; the peak
    bytes of a call on the worst rank."""

    kind: ClassVar[str] = "tp"
    fullname: str
    case: str  # "layer kind/adapter tp=.. T=.. r=.. dtype device"
    key: str
    layer: str
    parallel: str  # "column" or "row": how the base splits
    adapter: str  # "replicated", "sharded" or "fully_sharded"
    world: int
    tokens: int
    rank: int
    dtype: str
    device: str
    backend: str  # "gloo" or "nccl"
    mode: str
    threads: int  # per rank
    rel_error: float  # worst rank's, against its slices of the whole layer's float64 oracle
    comm_bytes: int
    base_comm_bytes: int
    peak_bytes: int
    base_peak_bytes: int
    rounds: Paired
    adapters: int = 0  # n > 0: a multi-adapter batch of n adapters (forward); 0: one adapter

    def __post_init__(self) -> None:
        finite_error(self)


@dataclass(frozen=True)
class QuantEntry:
    """One job of the quantized-base family. A layer job: an impl's forward or training step
    (impl "dense": the float base layer) timed in pairs with the quantized base's own, and
    the bytes autograd kept for backward. "merge": the requantized merged layer's forward
    paired with the unmerged one (qlora_lean), and the merge's errors. "model": our whole
    QLoRA model's training step paired with PEFT's (same codes, A and B)."""

    kind: ClassVar[str] = "quant"
    fullname: str
    case: str  # "shape T=.. r=.. format dtype device"
    key: str
    shape: str  # a layer shape, or the model of a "model" job
    tokens: int
    rank: int
    fmt: str
    dtype: str
    device: str
    impl: str
    mode: str
    threads: int
    rel_error: float  # against the oracle on the dequantized base (model: against PEFT)
    base_bytes: int  # bytes holding W: the codes and scales, or the float W for "dense"
    saved_bytes: int  # training: bytes autograd kept for backward (model: ours), else 0
    peak_bytes: int  # training: peak allocated over one step above what was held, else 0
    rounds: Paired
    peer_saved_bytes: int = 0  # model: PEFT's saved bytes
    peer_peak_bytes: int = 0  # model: PEFT's peak
    vs_unmerged: float = 0.0  # merge: output error against the unmerged quantized layer
    vs_float: float = 0.0  # merge: against the float layer the base was quantized from
    quantized: float = 0.0  # merge: the unmerged quantized layer's error against the float one
    weight_error: float = 0.0  # merge: ‖Ŵ' − (Ŵ + s·B A)‖ / ‖Ŵ + s·B A‖

    def __post_init__(self) -> None:
        finite_error(self)


@dataclass(frozen=True)
class LifecycleEntry:
    """What one adapter operation costs one variant (PEFT's PeftModel, or ours) with `loaded`
    adapters held: seconds of each round, each from the same state. A hot swap records the
    compiled model's compile (first call), its call before the swap, its first call after,
    and the recompiles the swap caused."""

    kind: ClassVar[str] = "lifecycle"
    fullname: str
    case: str  # "model targets r=.. loaded=.. dtype device"
    key: str
    model: str
    targets: str
    rank: int
    loaded: int
    dtype: str
    device: str
    variant: str  # "peft" or "ours"
    op: str  # load, switch, delete, merge, unmerge, hotswap
    seconds: list[float]
    rel_error: float  # the model's logits after the op against PEFT's function of that adapter
    threads: int
    backend: str = ""  # hot swap: torch.compile's backend
    compile_s: float = 0.0
    call_s: float = 0.0
    first_call_s: float = 0.0  # the first call after the swaps: a recompile shows here
    recompiles: int = 0

    def __post_init__(self) -> None:
        positive_seconds("seconds", self.seconds)
        positive("loaded", [self.loaded])
        if self.recompiles < 0:
            raise ValueError(f"recompiles must be >= 0, got {self.recompiles}")

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def iqr_s(self) -> float:
        q1, _, q3 = quartiles(self.seconds)
        return q3 - q1


USER_PHASES = ("prefill", "decode", "train", "denoise")  # what a UserModelEntry times


@dataclass(frozen=True)
class UserModelEntry(PairedSteps):
    """One variant on the user's own model and adapter (`lora-bench model`), one phase timed
    in pairs with the frozen model (the same model with no adapter, compiled alike): prefill
    (time to first token), decode (time per output token = median / steps), train (a step:
    forward, backward and AdamW on the adapter) or, for a diffusion UNet, denoise (one call;
    its tokens are the latent positions, N·h·w)."""

    kind: ClassVar[str] = "user_model"
    fullname: str
    case: str  # "model blocks=.. adapter B=.. prompt=.. new=.. | T=.. dtype device"
    key: str
    model: str
    adapter: str
    variant: str  # "peft", "peft_merged", "fused", or one of our impls
    origin: str  # "ours" or "peer"
    merged: bool
    compiled: bool
    phase: str  # prefill, decode or train
    batch: int
    adapters: int  # 1: one adapter for the batch; n > 1: each sequence takes one of n
    steps: int  # forwards a timed call runs: 1, new - 1, or 1 training step
    tokens: int  # tokens a timed call processes
    dtype: str
    device: str
    tokens_equal: float  # generation: share of the greedy tokens equal to PEFT's
    rel_error: float  # against PEFT: logits, and in training the LoRA gradients
    build_s: float
    compile_s: float  # the first call of the compiled variant, apart from every round
    threads: int
    peak_bytes: int
    memory_method: str
    trainable: int
    rounds: Paired

    def __post_init__(self) -> None:
        finite_error(self)
        positive("batch, adapters, steps and tokens",
                 [self.batch, self.adapters, self.steps, self.tokens])  # fmt: skip
        if self.phase not in USER_PHASES:
            raise ValueError(f"phase must be one of {', '.join(USER_PHASES)}, got {self.phase!r}")
        if not 0.0 <= self.tokens_equal <= 1.0:
            raise ValueError(f"tokens_equal must be in [0, 1], got {self.tokens_equal}")

    @property
    def label(self) -> str:
        """The variant, and "compiled" where it ran compiled whole."""
        return f"{self.variant} compiled" if self.compiled else self.variant

    @property
    def impl(self) -> str:
        """The variant, as compare and check name what ran."""
        return self.label

    @property
    def mode(self) -> str:
        """The phase, as compare and check name what was timed."""
        return self.phase


@dataclass(frozen=True)
class UserModelInfo:
    """What one `lora-bench model` run measured: the model and adapter as resolved, what
    was left out and why, the memory plan, and the adapter's load and merge seconds."""

    kind: ClassVar[str] = "user_model_info"
    model: str
    model_source: str  # how MODEL resolved, and where the weights came from
    adapter: str
    adapter_source: str
    blocks: int
    total_blocks: int
    random_weights: bool
    adapted_layers: int
    seconds: float  # each variant's paired-timing budget
    estimate_bytes: int  # the planner's peak for the run
    free_bytes: int  # what the device had free
    screened: list[str]  # "variant: why it was not timed"
    notes: list[str]
    load_s: dict[str, list[float]]  # variant -> seconds of each adapter load
    merge_s: dict[str, list[float]]  # variant -> seconds of each merge
    model_kind: str = "causal-lm"  # or "unet": a diffusers UNet2DConditionModel

    def __post_init__(self) -> None:
        positive("blocks", [self.blocks, self.total_blocks, self.seconds])
        if self.blocks > self.total_blocks:
            raise ValueError(f"blocks {self.blocks} > total_blocks {self.total_blocks}")
        for name, times in (*self.load_s.items(), *self.merge_s.items()):
            positive_seconds(f"seconds of {name}", times)
        if self.model_kind not in ("causal-lm", "unet"):
            raise ValueError(f"model_kind must be causal-lm or unet, got {self.model_kind!r}")


# The parts of a call a profile splits its time into (bench.harness.breakdown), in table order.
PARTS = ("base GEMM", "shrink", "expand", "W + s·B A", "y add/copy/scale", "norm", "other ops")
OUTSIDE = "outside ops"  # wall time no op covers: Python and dispatch between ops


@dataclass(frozen=True)
class ProfileEntry(CaseEntry):
    """Where one impl's call goes, from torch.profiler over `calls` warmed-up calls taken
    outside any timed round. Seconds and counts are per call; `cpu_s` holds each part's ops'
    self time on the CPU side, `device_s` their kernels' time (CUDA). `paired_s` is the
    unprofiled paired timing of the same work (0: not timed with the profile)."""

    kind: ClassVar[str] = "profile"
    mode: str
    calls: int
    wall_s: float  # one call under the profiler
    outside_s: float
    cpu_s: dict[str, float]
    device_s: dict[str, float]
    ops: dict[str, list[str]]  # part -> the distinct op names given to it
    op_count: float  # ATen ops dispatched
    kernel_count: float  # device kernels launched (0 on the CPU)
    allocated_bytes: float  # by the ops themselves (profile_memory)
    peak_bytes: int  # CUDA: above what was held, over one call; 0 on the CPU
    paired_s: float
    base_paired_s: float
    trace: str  # the trace's file name beside the results, or ""
    snapshot: str  # CUDA: the allocator's snapshot beside the trace, or ""
    unprofiled_s: float  # the same calls right before, without the profiler

    def __post_init__(self) -> None:
        positive("calls, wall_s and unprofiled_s", [self.calls, self.wall_s, self.unprofiled_s])
        unknown = (set(self.cpu_s) | set(self.device_s) | set(self.ops)) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")

    @property
    def overhead(self) -> float:
        """The profiler's own cost: a profiled call's wall time over the same calls' without
        it, taken right before (a fraction, 0.05 for 5%)."""
        return self.wall_s / self.unprofiled_s - 1


Entry = (
    TimeEntry
    | MemoryEntry
    | ParamsEntry
    | TimerCheckEntry
    | ModelEntry
    | MultiEntry
    | ProfileEntry
    | GenerationEntry
    | LifecycleEntry
    | QuantEntry
    | FusedEntry
    | ConvEntry
    | ConvModelEntry
    | UNetEntry
    | UNetFuseEntry
    | TPEntry
    | UserModelEntry
    | UserModelInfo
)
ENTRY_KINDS: dict[str, type] = {
    c.kind: c
    for c in (
        TimeEntry,
        MemoryEntry,
        ParamsEntry,
        TimerCheckEntry,
        ModelEntry,
        MultiEntry,
        ProfileEntry,
        GenerationEntry,
        LifecycleEntry,
        QuantEntry,
        FusedEntry,
        ConvEntry,
        ConvModelEntry,
        UNetEntry,
        UNetFuseEntry,
        TPEntry,
        UserModelEntry,
        UserModelInfo,
    )
}
