"""The results schema: the typed entries of a run, the one writer (`dump_run`) and the one
reader (`load_run`). It imports neither torch nor the registry, so a results file stays
readable after the code that wrote it has changed.

A run file is JSON: {"lora_bench": RunMeta, "machine_info": {...}, "commit_info": {...},
"entries": [TimeEntry | MemoryEntry | ... | MultiEntry, ...]}, each entry tagged by "kind".
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

SCHEMA = 2  # version of the whole file; load_run refuses any other


class ResultError(ValueError):
    """A results file is missing, corrupt, of another schema, or not from lora-bench."""


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) with the inclusive method; a single value gives three equal ones."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


@dataclass(frozen=True)
class Paired:
    """Seconds per op of interleaved rounds: base_s[i] ran right before impl_s[i]."""

    inner: int  # ops per round
    impl_s: list[float]
    base_s: list[float]

    def __post_init__(self) -> None:
        if len(self.impl_s) != len(self.base_s) or not self.impl_s:
            raise ValueError(
                f"paired rounds need as many base as impl rounds, at least one; got "
                f"{len(self.impl_s)} and {len(self.base_s)}"
            )

    @property
    def ratios(self) -> list[float]:
        return [i / b for i, b in zip(self.impl_s, self.base_s, strict=True)]

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios impl / base."""
        return quartiles(self.ratios)[1]

    @property
    def ratio_iqr(self) -> float:
        q1, _, q3 = quartiles(self.ratios)
        return q3 - q1

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


Entry = TimeEntry | MemoryEntry | ParamsEntry | TimerCheckEntry | ModelEntry | MultiEntry
ENTRY_KINDS: dict[str, type] = {
    c.kind: c
    for c in (TimeEntry, MemoryEntry, ParamsEntry, TimerCheckEntry, ModelEntry, MultiEntry)
}


@dataclass(frozen=True)
class ImplInfo:
    """What a run knew of an implementation: where it came from and what it does."""

    name: str
    origin: str  # "ours", "peer" or "plugin"
    source: str
    description: str
    variant: str = "lora"  # the function it computes: "lora" or "dora"


@dataclass(frozen=True)
class RunMeta:
    """Facts of one run on one device. `impls` and `shapes` give the order of the tables."""

    device: str
    device_name: str
    profile: str
    threads: int
    interop_threads: int
    tf32: bool
    torch: str
    created: str  # ISO 8601, UTC
    dtypes: list[str]
    only: list[str]
    impl_specs: list[str]  # --lora-impl module:attr plugins, passed again by --recheck
    cache: str  # "cold" or "warm"
    cache_bytes: int  # the last-level cache a cold run overflows
    impls: list[ImplInfo]
    shapes: list[str]
    peaks_start: dict[str, dict[str, float]]  # "device/dtype" -> gemm_gflops, copy_gbs, ...
    peaks_end: dict[str, dict[str, float]]
    schema: int = SCHEMA


@dataclass(frozen=True)
class Run:
    meta: RunMeta
    machine_info: dict[str, object]
    commit_info: dict[str, object]
    entries: list[Entry] = field(default_factory=list)

    def times(self, mode: str | None = None) -> list[TimeEntry]:
        return [e for e in self.entries if isinstance(e, TimeEntry) and mode in (None, e.mode)]

    def memory(self) -> list[MemoryEntry]:
        return [e for e in self.entries if isinstance(e, MemoryEntry)]

    def params(self) -> list[ParamsEntry]:
        return [e for e in self.entries if isinstance(e, ParamsEntry)]

    def timer_checks(self) -> list[TimerCheckEntry]:
        return [e for e in self.entries if isinstance(e, TimerCheckEntry)]

    def models(self) -> list[ModelEntry]:
        return [e for e in self.entries if isinstance(e, ModelEntry)]

    def multi(self) -> list[MultiEntry]:
        return [e for e in self.entries if isinstance(e, MultiEntry)]

    def impl_info(self, impl: str) -> ImplInfo:
        """What the run recorded of the impl; a name it did not record counts as a LoRA
        plugin."""
        known = next((i for i in self.meta.impls if i.name == impl), None)
        return known or ImplInfo(impl, "plugin", "", "")

    def variant(self, impl: str) -> str:
        """The function the impl computes, "lora" or "dora", as the run recorded it."""
        return self.impl_info(impl).variant

    def impl_rank(self, impl: str) -> int:
        """Position of impl in the run's registry order (unknown names last)."""
        names = [i.name for i in self.meta.impls]
        return names.index(impl) if impl in names else len(names)

    def shape_rank(self, shape: str) -> int:
        return self.meta.shapes.index(shape) if shape in self.meta.shapes else len(self.meta.shapes)


# --- writing ---------------------------------------------------------------------------------


def entry_dict(entry: Entry) -> dict[str, object]:
    """The entry as JSON-ready data, tagged with its kind; time entries also carry their
    summary figures (ratio_to_base, ratio_iqr, median_s, base_median_s) for readers of the
    raw JSON. The reader recomputes those from the rounds."""
    data: dict[str, object] = {"kind": entry.kind, **dataclasses.asdict(entry)}
    if isinstance(entry, PairedTokens):
        data.update(ratio_to_base=entry.ratio_to_base, tokens_per_s=entry.tokens_per_s)
    if isinstance(entry, TimeEntry):
        data.update(
            ratio_to_base=entry.ratio_to_base,
            ratio_iqr=entry.ratio_iqr,
            median_s=entry.median_s,
            base_median_s=entry.base_median_s,
        )
    return data


def dump_run(run: Run) -> str:
    """The run as the JSON text of a results file."""
    data = {
        "lora_bench": dataclasses.asdict(run.meta),
        "machine_info": run.machine_info,
        "commit_info": run.commit_info,
        "entries": [entry_dict(e) for e in run.entries],
    }
    return json.dumps(data, indent=1, default=str) + "\n"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and os.replace, so a
    reader never sees a half-written file and a failed write leaves the old one intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- reading ---------------------------------------------------------------------------------


def _check_value(where: str, value: object, typ: object) -> object:
    """Value converted to `typ` (dataclasses built from dicts), or ValueError saying why not."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {type(value).__name__}")
        return from_dict(typ, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {type(value).__name__}")
        return [_check_value(f"{where}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be an object, got {type(value).__name__}")
        return value
    allowed = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}[typ]
    if (isinstance(value, bool) and typ is not bool) or not isinstance(value, allowed):
        raise ValueError(f"{where} must be {typ.__name__}, got {value!r}")
    return float(value) if typ is float else value


def from_dict(cls: type, data: dict, where: str) -> object:
    """Build dataclass `cls` from JSON data; extra keys (summaries, kind) are ignored."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    values = {
        f.name: _check_value(f"{where}.{f.name}", data[f.name], hints[f.name])
        for f in fields
        if f.name in data
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def parse_run(data: object, source: str) -> Run:
    """A Run from the JSON data of a results file; ResultError says what is wrong."""
    if not isinstance(data, dict):
        raise ResultError(f"{source}: not a lora-bench results file (not a JSON object)")
    meta = data.get("lora_bench")
    if not isinstance(meta, dict):
        raise ResultError(f"{source}: not written by lora-bench (no 'lora_bench' section)")
    schema = meta.get("schema")
    if schema != SCHEMA:
        raise ResultError(
            f"{source}: results schema {schema!r}, written by "
            f"{'an older' if isinstance(schema, int) and schema < SCHEMA else 'another'} "
            f"lora-bench; this version reads schema {SCHEMA}: run `pytest bench "
            "--benchmark-only` again to get a file it reads"
        )
    try:
        run_meta = from_dict(RunMeta, meta, "lora_bench")
        parsed = parse_entries(data.get("entries"), ENTRY_KINDS)
    except ValueError as err:
        raise ResultError(f"{source}: {err}") from None
    info = {k: data.get(k) or {} for k in ("machine_info", "commit_info")}
    return Run(run_meta, info["machine_info"], info["commit_info"], parsed)


def parse_entries(entries: object, kinds: dict[str, type]) -> list:
    """Typed entries from a JSON list of objects tagged by "kind"; ValueError says which entry
    is wrong and why."""
    if not isinstance(entries, list):
        raise ValueError("no 'entries' list")
    parsed = []
    for i, e in enumerate(entries):
        kind = e.get("kind") if isinstance(e, dict) else None
        if kind not in kinds:
            raise ValueError(f"entry {i} has kind {kind!r}; known: {', '.join(kinds)}")
        parsed.append(from_dict(kinds[kind], e, f"entry {i} ({kind})"))
    return parsed


def read_json(path: str | Path, what: str = "results file") -> object:
    """The JSON data of a file; ResultError when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: not valid JSON ({err})") from None


def load_run(path: str | Path) -> Run:
    """Load a results JSON written by `pytest bench`; ResultError says what is wrong."""
    return parse_run(read_json(path), str(path))
