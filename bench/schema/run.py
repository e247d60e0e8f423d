"""A run: its facts (RunMeta) and typed entries, the one writer (`dump_run`) and the one
reader (`load_run`).

A run file is JSON: {"lora_bench": RunMeta, "machine_info": {...}, "commit_info": {...},
"entries": [TimeEntry | MemoryEntry | ... | MultiEntry, ...]}, each entry tagged by "kind".
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.schema.decode import from_dict, parse_entries, positive
from bench.schema.entries import (
    ENTRY_KINDS,
    ConvEntry,
    ConvModelEntry,
    Entry,
    FusedEntry,
    GenerationEntry,
    LifecycleEntry,
    MemoryEntry,
    ModelEntry,
    MultiEntry,
    PairedTokens,
    ParamsEntry,
    ProfileEntry,
    QuantEntry,
    TimeEntry,
    TimerCheckEntry,
    TPEntry,
    UNetEntry,
    UNetFuseEntry,
    UserModelEntry,
    UserModelInfo,
)
from bench.schema.io import ResultError, read_json

SCHEMA = 2  # version of the whole file; load_run refuses any other
PEAKS = ("gemm_gflops", "copy_gbs")  # the calibrated peaks the tables divide by


def parse_shard(text: str) -> tuple[int, int]:
    """(i, N) of "i/N", 1 <= i <= N (shard i of N, 1-based); ValueError saying what is
    allowed otherwise."""
    head, sep, tail = text.partition("/")
    if not sep or not head.strip().isdigit() or not tail.strip().isdigit():
        raise ValueError(f"a shard is written i/N (e.g. 2/4), got {text!r}")
    index, count = int(head), int(tail)
    if not 1 <= index <= count:
        raise ValueError(f"shard {text}: i must be in 1..N (N = {count}), got {index}")
    return index, count


@dataclass(frozen=True)
class ImplInfo:
    """What a run knew of an implementation: where it came from and what it does."""

    name: str
    origin: str  # "ours", "peer" or "plugin"
    source: str
    description: str
    variant: str = "lora"  # the function it computes: a registry variant ("lora", "dora", ...)


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
    allocator: str = ""  # how malloc's thresholds were set (bench.harness.allocator); "" before
    pages: str = ""  # the pages large CPU tensors got (bench.harness.pages); "" before
    deadline: float | None = None  # --lora-deadline, seconds
    not_run: list[str] = field(default_factory=list)  # benchmark ids the deadline skipped
    shard: str = ""  # "i/N" for a run of --lora-shard, "" for a whole run
    shard_items: list[str] = field(default_factory=list)  # the benchmark ids of the shard
    shard_of: str = ""  # digest of all the benchmark ids the shards were cut from ("" before)
    missing_shards: list[str] = field(default_factory=list)  # a --partial merge's absent "i/N"
    run_id: str = ""  # names the run in its JSON and in its .md, so a reader can pair them
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        for shard in ([self.shard] if self.shard else []) + self.missing_shards:
            parse_shard(shard)
        for name, peaks in (("peaks_start", self.peaks_start), ("peaks_end", self.peaks_end)):
            for key, peak in peaks.items():
                if set(peak) < set(PEAKS):
                    raise ValueError(f"{name}[{key!r}] needs {', '.join(PEAKS)}, got {set(peak)}")
                positive(f"{name}[{key!r}]", [peak[p] for p in PEAKS])


@dataclass(frozen=True)
class Run:
    meta: RunMeta
    machine_info: dict[str, object]
    commit_info: dict[str, object]
    entries: list[Entry] = field(default_factory=list)

    def times(self, mode: str | None = None) -> list[TimeEntry]:
        return [e for e in self.entries if isinstance(e, TimeEntry) and mode in (None, e.mode)]

    def controls(self) -> dict[tuple[str, str], TimeEntry]:
        """The A/A control of each timed (case, mode): base against base on an allocation of
        its own. Empty for runs from before the control."""
        return {(e.case, e.mode): e for e in self.times() if e.control}

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

    def profiles(self) -> list[ProfileEntry]:
        return [e for e in self.entries if isinstance(e, ProfileEntry)]

    def generation(self) -> list[GenerationEntry]:
        return [e for e in self.entries if isinstance(e, GenerationEntry)]

    def lifecycle(self) -> list[LifecycleEntry]:
        return [e for e in self.entries if isinstance(e, LifecycleEntry)]

    def quant(self) -> list[QuantEntry]:
        return [e for e in self.entries if isinstance(e, QuantEntry)]

    def fused(self) -> list[FusedEntry]:
        return [e for e in self.entries if isinstance(e, FusedEntry)]

    def conv(self) -> list[ConvEntry]:
        return [e for e in self.entries if isinstance(e, ConvEntry)]

    def conv_model(self) -> list[ConvModelEntry]:
        return [e for e in self.entries if isinstance(e, ConvModelEntry)]

    def unet(self) -> list[UNetEntry]:
        return [e for e in self.entries if isinstance(e, UNetEntry)]

    def unet_fuse(self) -> list[UNetFuseEntry]:
        return [e for e in self.entries if isinstance(e, UNetFuseEntry)]

    def tp(self) -> list[TPEntry]:
        return [e for e in self.entries if isinstance(e, TPEntry)]

    def user_model(self) -> list[UserModelEntry]:
        return [e for e in self.entries if isinstance(e, UserModelEntry)]

    def user_model_info(self) -> UserModelInfo | None:
        return next((e for e in self.entries if isinstance(e, UserModelInfo)), None)

    def impl_info(self, impl: str) -> ImplInfo:
        """What the run recorded of the impl; a name it did not record counts as a LoRA
        plugin."""
        known = next((i for i in self.meta.impls if i.name == impl), None)
        return known or ImplInfo(impl, "plugin", "", "")

    def variant(self, impl: str) -> str:
        """The function the impl computes (a registry variant: "lora", "dora", "conv", ...), as
        the run recorded it."""
        return self.impl_info(impl).variant

    def impl_rank(self, impl: str) -> int:
        """Position of impl in the run's registry order (unknown names last)."""
        names = [i.name for i in self.meta.impls]
        return names.index(impl) if impl in names else len(names)

    def shape_rank(self, shape: str) -> int:
        return self.meta.shapes.index(shape) if shape in self.meta.shapes else len(self.meta.shapes)


def entry_dict(entry: Entry) -> dict[str, object]:
    """The entry as JSON-ready data, tagged with its kind; time entries also carry their
    summary figures (ratio_to_base, ratio_iqr, ratio_ci, median_s, base_median_s) for readers
    of the raw JSON, and paired-token entries their ratio, CI and tokens/s. The reader
    recomputes those from the rounds."""
    data: dict[str, object] = {"kind": entry.kind, **dataclasses.asdict(entry)}
    if isinstance(entry, PairedTokens):
        data.update(
            ratio_to_base=entry.ratio_to_base,
            ratio_ci=list(entry.rounds.ratio_ci),
            tokens_per_s=entry.tokens_per_s,
        )
    if isinstance(entry, TimeEntry):
        data.update(
            ratio_to_base=entry.ratio_to_base,
            ratio_iqr=entry.ratio_iqr,
            ratio_ci=list(entry.rounds.ratio_ci),
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


def markdown_mismatch(path: str | Path, run: Run) -> str | None:
    """Why the .md beside the run's JSON at `path` is not that run's (it names another run
    id: a writer killed between the two files' renames), or None. A .md without an id, or
    no .md, says nothing either way."""
    md = Path(path).with_suffix(".md")
    try:
        head = md.read_text(encoding="utf-8")[:4096]
    except OSError:
        return None
    found = re.search(r"^- run: (\w+)", head, re.MULTILINE)
    if found is None or not run.meta.run_id or found.group(1) == run.meta.run_id:
        return None
    return (
        f"{md} is run {found.group(1)}'s tables, not this run's ({run.meta.run_id}): "
        f"lora-bench report {path} gives this run's"
    )


def load_run(path: str | Path) -> Run:
    """Load a results JSON written by `pytest bench`; ResultError says what is wrong."""
    return parse_run(read_json(path), str(path))
