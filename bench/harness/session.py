"""Bench-wide settings read from the command line, and the calibrated peaks of the run."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TypeVar

import psutil
import pytest
import torch

from bench.harness.cache import cache_bytes, copies_needed
from bench.harness.cases import DTYPES, PROFILES, SHAPES, Case, Profile
from bench.harness.kernels import variant_of
from bench.harness.rounds import Budget
from bench.harness.timing import Peaks, calibrate
from bench.schema.entries import Entry
from bench.schema.run import ImplInfo, RunMeta
from lora_kernels import IMPLS
from lora_kernels.plugins import absolute_spec

DEFAULT_DTYPES = {"cpu": ["fp32"], "cuda": ["bf16", "fp32"]}


class Job(Protocol):
    @property
    def case(self) -> object: ...


J = TypeVar("J", bound=Job)


def configure_torch(threads: int) -> None:
    """Fix the thread count. (`compiled` guards itself against dynamo's silent fallback.)"""
    torch.set_num_threads(threads)


def _folder(config: pytest.Config, value: str) -> Path:
    """A folder option's value, relative to pytest's rootdir."""
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


def impl_infos() -> list[ImplInfo]:
    """Every registered impl as a results file describes it, in registry order."""
    return [ImplInfo(i.name, i.origin, i.source, i.description, variant_of(i))
            for i in IMPLS.values()]  # fmt: skip


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it, else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if torch.device(device).type == "cuda" else cpu_model()


def command_meta(device: str, profile: str, threads: int, dtypes: list[str], cache: str,
                 allocator: str) -> RunMeta:  # fmt: skip
    """The facts of a run a command makes outside pytest (`profile`, `model`), for its
    results file: no calibrated peaks, no shard, no plugin specs."""
    return RunMeta(
        device=torch.device(device).type, device_name=device_name(device), profile=profile,
        threads=threads, interop_threads=torch.get_num_interop_threads(),
        tf32=bool(torch.backends.cuda.matmul.allow_tf32), torch=torch.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), dtypes=dtypes,
        only=[], impl_specs=[], cache=cache, cache_bytes=cache_bytes(device),
        impls=impl_infos(), shapes=list(SHAPES), peaks_start={}, peaks_end={},
        allocator=allocator,
    )  # fmt: skip


def command_infos() -> tuple[dict[str, object], dict[str, object]]:
    """The machine and the commit of a run a command makes outside pytest, as pytest-benchmark
    records them for the main job (the commit of the checkout at the current folder, if any)."""
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info
    from pytest_benchmark.utils import get_commit_info

    return pytest_benchmark_generate_machine_info(), get_commit_info()


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _devices(choice: str) -> list[str]:
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise pytest.UsageError("--lora-device cuda: CUDA is not available on this machine")
    if choice == "all":
        return ["cpu", "cuda"] if has_cuda else ["cpu"]
    return [choice]


def _dtypes(choice: str | None, devices: list[str]) -> dict[str, list[str]]:
    if choice is None:
        return {d: DEFAULT_DTYPES[d] for d in devices}
    names = [n.strip() for n in choice.split(",") if n.strip()]
    bad = [n for n in names if n not in DTYPES]
    if bad or not names:
        raise pytest.UsageError(
            f"--lora-dtype: {','.join(bad) or choice!r} not allowed; use a comma list of "
            f"{', '.join(DTYPES)}"
        )
    return {d: names for d in devices}


@dataclass
class Settings:
    """What this run measures and how; one per pytest session."""

    profile: Profile
    devices: list[str]
    dtypes: dict[str, list[str]]
    threads: int
    results_dir: Path
    only: list[str]
    impl_specs: list[str]  # --lora-impl plugins, absolute paths for file specs
    cache: str  # "cold": rotate copies of weights and input past the last-level cache; "warm"
    seconds: float | None = None  # --lora-seconds: every benchmark's time budget
    target: float | None = None  # --lora-target: every benchmark's CI target
    allocator: str = ""  # how malloc's thresholds were set, once the benchmarks start
    pages: str = ""  # the pages large CPU tensors got (bench.harness.pages)
    deadline: float | None = None  # --lora-deadline: seconds after `started_at`
    trace_dir: Path | None = None  # --lora-trace: a trace per timed (case, impl, mode)
    started_at: float = field(default_factory=time.monotonic)
    not_run: list[str] = field(default_factory=list)  # benchmarks the deadline skipped
    shard: tuple[int, int] | None = None  # --lora-shard i/N: (i, N)
    shard_items: list[str] = field(default_factory=list)  # the shard's benchmark ids
    shard_of: str = ""  # a digest of the ids of every benchmark the shards were cut from
    peaks_start: dict[str, Peaks] = field(default_factory=dict)
    peaks_end: dict[str, Peaks] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)  # recorded by the benchmarks

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        devices = _devices(config.getoption("lora_device"))
        threads = config.getoption("lora_threads")
        threads = physical_cores() if threads is None else threads
        if threads < 1:
            raise pytest.UsageError(f"--lora-threads must be >= 1, got {threads}")
        profile = PROFILES[config.getoption("lora_profile")]
        seconds, target = config.getoption("lora_seconds"), config.getoption("lora_target")
        results = _folder(config, config.getoption("lora_results"))
        trace = config.getoption("lora_trace")
        return cls(
            profile=profile,
            devices=devices,
            dtypes=_dtypes(config.getoption("lora_dtype"), devices),
            threads=threads,
            results_dir=results,
            only=config.getoption("lora_only") or [],
            impl_specs=[absolute_spec(s) for s in config.getoption("lora_impl") or []],
            cache=config.getoption("lora_cache"),
            seconds=seconds,
            target=target,
            deadline=config.getoption("lora_deadline"),
            shard=config.getoption("lora_shard"),
            trace_dir=_folder(config, trace) if trace else None,
        )

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() - self.started_at > self.deadline

    def budget(self, budget: Budget) -> Budget:
        """A family's budget with --lora-seconds and --lora-target applied: a given time
        budget also lifts the cap on pairs, so the rounds run until sure or out of time."""
        if self.seconds is not None:
            budget = replace(budget, seconds=self.seconds, max_pairs=max(budget.max_pairs, 10_000))
        if self.target is not None:
            budget = replace(budget, target=self.target)
        return budget

    def _select(self, cases: list[Case]) -> list[Case]:
        if not self.only:
            return cases
        return [c for c in cases if any(part == str(c) for part in self.only)]

    def cases(self) -> list[Case]:
        return self._select(self.profile.cases(self.devices, self.dtypes))

    def memory_cases(self) -> list[Case]:
        return self._select(self.profile.memory_cases(self.devices, self.dtypes))

    def timer_cases(self) -> list[Case]:
        return self._select(self.profile.timer_cases(self.devices, self.dtypes))

    def breakdown_cases(self) -> list[Case]:
        return self._select(self.profile.breakdown_cases(self.devices, self.dtypes))

    def dora_cases(self, memory: bool = False) -> list[Case]:
        """The DoRA impls' cases: of the timings, or with `memory` of the memory benchmark."""
        cases = self.profile.dora_memory_cases if memory else self.profile.dora_cases
        return self._select(cases(self.devices, self.dtypes))

    def case_impls(self, memory: bool = False) -> list[tuple[Case, str]]:
        """(case, impl) pairs of the forward and training benchmarks, or with `memory` of the
        memory benchmark: the LoRA impls on the profile's (memory) grid, the DoRA impls on its
        DoRA cases (QLoRA impls have their own family, bench/test_quant.py), less those the
        profile times in full only. The id of a pair, "case-impl", is the benchmark's."""
        lora = self.memory_cases() if memory else self.cases()
        dora = self.dora_cases(memory)
        cases = lora + [c for c in dora if c not in lora]
        of = {"lora": lora, "dora": dora}  # QLoRA impls run in the quantized-base family
        later = () if memory else self.profile.timed_in_full
        return [
            (c, name)
            for c in cases
            for name, impl in IMPLS.items()
            if c in of.get(variant_of(impl), []) and name not in later
        ]

    def selected(self, jobs: list[J]) -> list[J]:
        """The jobs (of any family: each has a `case`) that --lora-only names, or all."""
        return [j for j in jobs if not self.only or str(j.case) in self.only]

    def peaks(self, device: str, dtype: str) -> Peaks:
        """Peaks of (device, dtype), calibrated on first use: the run's start reading."""
        key = f"{device}/{dtype}"
        if key not in self.peaks_start:
            self.peaks_start[key] = calibrate(device, DTYPES[dtype])
        return self.peaks_start[key]

    def recalibrate(self) -> None:
        """The end-of-run reading of every (device, dtype) calibrated at the start."""
        for key in self.peaks_start:
            device, dtype = key.split("/")
            self.peaks_end[key] = calibrate(device, DTYPES[dtype])

    def copies(self, case: Case, mode: str) -> int:
        """Copies of the case's weights and input a benchmark rotates over (1 when warm)."""
        return copies_needed(case.min_bytes(mode), cache_bytes(case.device), self.cache)

    def tf32(self) -> bool:
        return bool(torch.backends.cuda.matmul.allow_tf32)

    def meta(self, device: str, device_name: str, created: str) -> RunMeta:
        """The facts of this run on one device, for its results file."""

        def mine(key: str) -> bool:
            return key.startswith(f"{device}/")

        return RunMeta(
            device=device,
            device_name=device_name,
            profile=self.profile.name,
            threads=self.threads,
            interop_threads=torch.get_num_interop_threads(),
            tf32=self.tf32(),
            torch=torch.__version__,
            created=created,
            dtypes=self.dtypes.get(device, []),
            only=self.only,
            impl_specs=self.impl_specs,
            cache=self.cache,
            cache_bytes=cache_bytes(device),
            allocator=self.allocator,
            pages=self.pages,
            deadline=self.deadline,
            not_run=list(self.not_run),
            shard="" if self.shard is None else "/".join(map(str, self.shard)),
            shard_items=list(self.shard_items),
            shard_of=self.shard_of,
            impls=impl_infos(),
            shapes=list(SHAPES),
            peaks_start={k: p.as_dict() for k, p in self.peaks_start.items() if mine(k)},
            peaks_end={k: p.as_dict() for k, p in self.peaks_end.items() if mine(k)},
        )
