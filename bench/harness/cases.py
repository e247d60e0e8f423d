"""What the bench measures: layer shapes (with their origin), ranks, token counts, profiles,
and the Case record whose str is the test id."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

import torch

from bench.harness.rounds import Budget
from lora_kernels import LoRAWeights
from lora_kernels.weights import DTYPE_NAMES

if TYPE_CHECKING:
    from lora_kernels.dora import DoRAWeights

DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class Shape:
    """A linear layer: in_features -> out_features, with or without bias."""

    in_features: int
    out_features: int
    bias: bool


SHAPES: dict[str, Shape] = {
    "toy": Shape(64, 10, True),  # the seed example
    "gpt2.c_attn": Shape(768, 2304, True),  # GPT-2 small, fused QKV projection
    "gpt2-medium.c_proj": Shape(1024, 1024, True),  # GPT-2 medium, attention output
    "bert-base.ffn_up": Shape(768, 3072, True),  # BERT-base intermediate dense
    "llama3-8b.q_proj": Shape(4096, 4096, False),  # Llama 3 8B attention query
    "llama3-8b.k_proj": Shape(4096, 1024, False),  # Llama 3 8B key, GQA: 8 KV heads x 128
    "llama3-8b.down_proj": Shape(14336, 4096, False),  # Llama 3 8B MLP down projection
}
RANKS = (1, 4, 8, 16, 64, 256)
TOKENS = (1, 16, 512, 2048)  # decode: 1 and 16 sequences; prefill: 512 and 2048 tokens
LONG_PREFILL = (4096, 8192)  # CUDA only: hours on a CPU

# Half precision on the CPU is timed only up to this many forward FLOPs: CPUs without native
# bf16/fp16 matmul run them about 100x slower than fp32.
CPU_HALF_MAX_FLOPS = 2e7


class Keyed:
    """A case named by its key (the case without its device: how runs of two devices are
    matched) and its device; `fields()` gives an entry its id, key and the case's parts."""

    device: str

    @property
    def key(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.key} {self.device}"

    def fields(self) -> dict[str, Any]:
        """The case's fields of a results entry: its id, key and parts (a dataclass's)."""
        return {"case": str(self), "key": self.key, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Case:
    """One measured configuration; str(case) is its test id and its key across runs."""

    shape: str
    tokens: int
    rank: int
    dtype: str = "fp32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.tokens < 1:
            raise ValueError(f"tokens must be >= 1, got {self.tokens}")
        limit = min(self.in_features, self.out_features)
        if not 1 <= self.rank <= limit:
            raise ValueError(f"rank must be in [1, {limit}] for {self.shape}, got {self.rank}")

    def __str__(self) -> str:
        return f"{self.shape} T={self.tokens} r={self.rank} {self.dtype} {self.device}"

    @property
    def key(self) -> str:
        """The id without the device: matches the same case across CPU and GPU runs."""
        return f"{self.shape} T={self.tokens} r={self.rank} {self.dtype}"

    @property
    def in_features(self) -> int:
        return SHAPES[self.shape].in_features

    @property
    def out_features(self) -> int:
        return SHAPES[self.shape].out_features

    @property
    def bias(self) -> bool:
        return SHAPES[self.shape].bias

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def flops(self, mode: str = "infer", adapter: bool = True) -> int:
        """Useful FLOPs. infer: 2T(in·out + r(in+out)); train adds dx, dA and dB:
        2T(2·in·out + 3r(in+out)). adapter=False counts the base layer alone (r = 0).
        Bias adds and scaling are not counted."""
        io = self.in_features * self.out_features
        r_io = self.rank * (self.in_features + self.out_features) if adapter else 0
        if mode == "train":
            return 2 * self.tokens * (2 * io + 3 * r_io)
        return 2 * self.tokens * (io + r_io)

    def min_bytes(self, mode: str = "infer", adapter: bool = True) -> int:
        """Fewest bytes moved: each input read once, each output written once.
        infer: x, W, b, A, B in, y out. train also reads dy and writes dx, dA, dB.
        adapter=False leaves A, B, dA and dB out."""
        t, i, o = self.tokens, self.in_features, self.out_features
        r = self.rank if adapter else 0
        weights = i * o + (o if self.bias else 0) + r * (i + o)
        elems = t * i + weights + t * o
        if mode == "train":
            elems += t * o + t * i + r * (i + o)
        return elems * DTYPES[self.dtype].itemsize

    def weights(self, seed: int = 0, variant: str = "lora") -> LoRAWeights | DoRAWeights:
        """Seeded weights of the case; variant "dora" adds a magnitude to the same W, b, A, B."""
        if variant not in ("lora", "dora"):
            raise ValueError(f"variant must be 'lora' or 'dora', got {variant!r}")
        if variant == "lora":
            kind: type[LoRAWeights | DoRAWeights] = LoRAWeights
        else:  # imported here: kernels from before DoRA (ab's base side) lack the package
            from lora_kernels.dora import DoRAWeights

            kind = DoRAWeights
        return kind.random(self.in_features, self.out_features, self.rank, bias=self.bias,
                           seed=seed, dtype=self.torch_dtype, device=self.device)  # fmt: skip

    def input(self, seed: int = 1) -> torch.Tensor:
        """x: (T, in), standard normal, on the case's device and dtype."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(self.tokens, self.in_features, generator=gen)
        return x.to(device=self.device, dtype=self.torch_dtype)

    def skip_reason(self) -> str | None:
        """Why this case is not run, or None."""
        if self.device == "cpu" and self.dtype != "fp32" and self.flops() > CPU_HALF_MAX_FLOPS:
            return (
                f"{self.dtype} on the CPU is timed for tiny shapes only "
                f"(<= {CPU_HALF_MAX_FLOPS:.0e} FLOPs): without native half-precision matmul "
                "it runs about 100x slower than fp32"
            )
        return None

    def fields(self) -> dict[str, Any]:
        """The case's fields of a results entry: its id, key and parts."""
        return {"case": str(self), "key": self.key, **asdict(self)}


@dataclass(frozen=True)
class Profile:
    """A sweep: (shape, tokens, rank) triples plus the timing budget of each benchmark."""

    name: str
    grid: tuple[tuple[str, int, int], ...]
    budget: Budget  # when each benchmark's paired rounds stop
    memory_grid: tuple[tuple[str, int, int], ...] | None = None  # None: same as grid
    timer_grid: tuple[tuple[str, int, int], ...] = ()  # cases of the independent timer check
    # the profiler's breakdown on a CPU (CUDA takes timer_grid); None: same as timer_grid
    breakdown_grid: tuple[tuple[str, int, int], ...] | None = None
    cuda_grid: tuple[tuple[str, int, int], ...] = ()  # more cases on CUDA: long prefill
    dora_grid: tuple[tuple[str, int, int], ...] = ()  # cases the DoRA impls run (time, memory)
    dora_memory_grid: tuple[tuple[str, int, int], ...] | None = None  # None: same as dora_grid
    # impls timed in `full` only (their memory is still measured): the anti-patterns kept for
    # contrast, whose ratios swing with the machine's page faults (lora-bench check ignores them)
    timed_in_full: tuple[str, ...] = ()

    def cases(self, devices: list[str], dtypes: dict[str, list[str]]) -> list[Case]:
        """Every valid case of the grid for each device and that device's dtypes; CUDA adds
        cuda_grid, cases a CPU would take too long over."""
        out = _expand(self.grid, devices, dtypes)
        return out + _expand(self.cuda_grid, [d for d in devices if d == "cuda"], dtypes)

    def memory_cases(self, devices: list[str], dtypes: dict[str, list[str]]) -> list[Case]:
        return _expand(self.memory_grid or self.grid, devices, dtypes)

    def timer_cases(self, devices: list[str], dtypes: dict[str, list[str]]) -> list[Case]:
        return _expand(self.timer_grid, devices, dtypes)

    def breakdown_cases(self, devices: list[str], dtypes: dict[str, list[str]]) -> list[Case]:
        if self.breakdown_grid is None:
            return _expand(self.timer_grid, devices, dtypes)
        cuda = [d for d in devices if d == "cuda"]
        cpu = [d for d in devices if d != "cuda"]
        return _expand(self.breakdown_grid, cpu, dtypes) + _expand(self.timer_grid, cuda, dtypes)

    def dora_cases(self, devices: list[str], dtypes: dict[str, list[str]]) -> list[Case]:
        return _expand(self.dora_grid, devices, dtypes)

    def dora_memory_cases(self, devices: list[str], dtypes: dict[str, list[str]]) -> list[Case]:
        grid = self.dora_grid if self.dora_memory_grid is None else self.dora_memory_grid
        return _expand(grid, devices, dtypes)


def _expand(
    grid: tuple[tuple[str, int, int], ...], devices: list[str], dtypes: dict[str, list[str]]
) -> list[Case]:
    out = []
    for device in devices:
        for dtype, (shape, tokens, rank) in product(dtypes[device], grid):
            if rank <= min(SHAPES[shape].in_features, SHAPES[shape].out_features):
                out.append(Case(shape, tokens, rank, dtype, device))
    return out


# The quick profile: one decode and one prefill case of each family; the sweeps run in full.
QUICK_DECODE = ("llama3-8b.q_proj", 1, 16)  # one token: W's 64 MiB read from memory
QUICK_PREFILL = ("gpt2-medium.c_proj", 2048, 8)  # compute-bound GEMM, memory-bound adapter
QUICK_GRID = (QUICK_DECODE, QUICK_PREFILL)

PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        "tiny",
        (("toy", 16, 4), ("toy", 512, 8)),
        Budget(0.05, 4, 6, target=0.05, setups=2),
        timer_grid=(("toy", 512, 8),),
        dora_grid=(("toy", 512, 8),),
    ),
    "quick": Profile(
        "quick",
        QUICK_GRID,
        Budget(1.0, 12, 200, setups=4),
        # Memory at the prefill only: at one token every impl holds the same weights.
        memory_grid=(QUICK_PREFILL,),
        timer_grid=QUICK_GRID,
        # On a CPU the profiler's breakdown runs in full: its 14 s paid for the Conv2d family's
        # cases. A GPU run keeps it at the timer cases.
        breakdown_grid=(),
        cuda_grid=(("llama3-8b.q_proj", 4096, 16), ("llama3-8b.down_proj", 8192, 16)),
        dora_grid=QUICK_GRID,
        dora_memory_grid=(QUICK_PREFILL,),
        # PEFT's DoRA forms W + s·B A on every call, as dora_dense does: 12 s of the quick
        # profile, which paid for its setups (bench/NOTES.md, "Figures that hold")
        timed_in_full=("delta_weight", "dora_dense", "peft_dora"),
    ),
    "full": Profile(
        "full",
        tuple(product(SHAPES, TOKENS, RANKS)),
        Budget(1.0, 12, 100, setups=4),
        memory_grid=tuple(product(SHAPES, TOKENS, (16,))),
        timer_grid=(
            ("gpt2.c_attn", 16, 16),
            ("gpt2-medium.c_proj", 2048, 8),
            ("llama3-8b.q_proj", 1, 16),
            ("llama3-8b.q_proj", 2048, 16),
        ),
        cuda_grid=tuple(product(SHAPES, LONG_PREFILL, (16,))),
        dora_grid=(("gpt2-medium.c_proj", 2048, 8), *product(["llama3-8b.q_proj"], TOKENS, [16])),
    ),
}
