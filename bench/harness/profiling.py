"""torch.profiler over warmed-up calls of one impl's work, taken outside any timed round: the
trace (Chrome trace JSON, gzipped, for Perfetto or chrome://tracing), the breakdown of the
call into parts (bench.harness.breakdown), and on CUDA the allocator's snapshot (for
PyTorch's memory visualizer) and NVTX ranges (for nsys and ncu)."""

from __future__ import annotations

import contextlib
import gzip
import math
import pickle
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from bench.harness.breakdown import Dims, Record, breakdown
from bench.harness.cases import Case
from bench.harness.quiet import without_kineto_lines
from bench.harness.rounds import Budget
from bench.harness.session import command_meta
from bench.harness.timing import PairedTimer, Work, make_round, synchronize, time_call, warm_up
from bench.schema.entries import ProfileEntry
from bench.schema.io import write_atomic
from bench.schema.run import RunMeta

MIN_PROFILED_S = 0.1  # profiled calls last at least this long in all ...
MAX_CALLS = 50  # ... within this many calls
PAIRED = Budget(1.0, 5, 10_000, target=0.02)  # the paired timing beside the breakdown


def file_stem(impl: str, mode: str) -> str:
    return f"{impl}-{mode}"


def trace_name(impl: str, mode: str) -> str:
    return file_stem(impl, mode) + ".trace.json.gz"


def range_name(impl: str, mode: str) -> str:
    """The name of the range around an impl's profiled calls, in traces and for NVTX."""
    return f"lora-bench {impl} {mode}"


def case_folder(case: Case) -> str:
    """A folder name for the case: its id with spaces as underscores and no '='."""
    return str(case).replace(" ", "_").replace("=", "")


@contextlib.contextmanager
def nvtx_range(name: str, on: bool) -> Iterator[None]:
    """An NVTX range around the block when `on` (CUDA only), so nsys and ncu --nvtx see it."""
    if on:
        torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        if on:
            torch.cuda.nvtx.range_pop()


def records(prof: profile, label: str, device: str) -> list[Record]:
    """The CPU-side ops of the profile, callers before callees, without the label's range."""
    events = [e for e in prof.events() if e.device_type == DeviceType.CPU and e.name != label]
    events.sort(key=lambda e: (e.time_range.start, -e.time_range.end))
    index = {id(e): n for n, e in enumerate(events)}
    cuda = torch.device(device).type == "cuda"
    out = []
    for e in events:
        parent = e.cpu_parent
        while parent is not None and id(parent) not in index:
            parent = parent.cpu_parent
        device_us = getattr(e, "self_device_time_total", 0.0) if cuda else 0.0
        self_bytes = getattr(e, "self_device_memory_usage" if cuda else "self_cpu_memory_usage", 0)
        out.append(
            Record(
                name=e.name,
                shapes=[list(s) if isinstance(s, (list, tuple)) else [] for s in e.input_shapes],
                start_us=e.time_range.start,
                end_us=e.time_range.end,
                self_cpu_us=e.self_cpu_time_total,
                self_device_us=float(device_us or 0.0),
                self_bytes=int(self_bytes or 0),
                kernels=len(getattr(e, "kernels", ()) or ()),
                parent=None if parent is None else index[id(parent)],
            )
        )
    return out


def capture(work: Work, device: str, calls: int, label: str, nvtx: bool) -> tuple[profile, float]:
    """Profile `calls` calls of `work` (already warm) in one named range; returns the profile
    and the wall seconds of the calls, synchronized."""
    activities = [ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    prof = profile(activities=activities, record_shapes=True, profile_memory=True)
    with without_kineto_lines(), prof, record_function(label), nvtx_range(label, nvtx):
        start = time.perf_counter()
        for _ in range(calls):
            work()
        synchronize(device)
        wall = time.perf_counter() - start
    return prof, wall


def write_trace(prof: profile, path: Path) -> None:
    """The profile as a gzipped Chrome trace at `path`, written atomically."""
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "trace.json"
        prof.export_chrome_trace(str(raw))
        write_atomic(path, gzip.compress(raw.read_bytes()))


def trace_calls(work: Work, device: str, folder: Path, impl: str, mode: str) -> None:
    """A trace of three calls of `work` (already warm) into `folder`: --lora-trace's."""
    prof, _ = capture(work, device, 3, range_name(impl, mode), nvtx=False)
    write_trace(prof, folder / trace_name(impl, mode))


def cuda_memory(work: Work, path: Path | None) -> int:
    """Peak bytes allocated over one call above what was held before; with `path`, the
    allocator's history of that call as a snapshot for PyTorch's memory visualizer."""
    synchronize("cuda")
    if path is not None:
        torch.cuda.memory._record_memory_history(max_entries=100_000)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    work()
    synchronize("cuda")
    peak = torch.cuda.max_memory_allocated() - before
    if path is not None:
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        write_atomic(path, pickle.dumps(snapshot))
    return peak


def profile_entry(
    case: Case,
    impl: str,
    mode: str,
    works: tuple[Work, Work],
    fullname: str,
    folder: Path | None = None,
    nvtx: bool = False,
    paired: Budget | None = PAIRED,
) -> ProfileEntry:
    """Profile the impl's work (checked against the oracle first, by the caller; warm, outside
    any timed round) and, with `paired`, time it in pairs with base's work (`works`); with
    `folder`, write the trace (and on CUDA the allocator's snapshot) there."""
    work, base_work = works
    per_call = warm_up(work, case.device)
    calls = min(MAX_CALLS, max(3, math.ceil(MIN_PROFILED_S / per_call)))
    unprofiled = time_call(make_round(work, calls, case.device)) / calls
    name = range_name(impl, mode)
    prof, wall = capture(work, case.device, calls, name, nvtx)
    dims = Dims(case.tokens, case.in_features, case.out_features, case.rank)
    parts = breakdown(records(prof, name, case.device), dims, mode == "train", calls, wall)
    trace = snapshot = ""
    peak = 0
    if folder is not None:
        trace = trace_name(impl, mode)
        write_trace(prof, folder / trace)
    if torch.device(case.device).type == "cuda":
        snapshot_path = None
        if folder is not None:
            snapshot = file_stem(impl, mode) + ".memory.pickle"
            snapshot_path = folder / snapshot
        peak = cuda_memory(work, snapshot_path)
    impl_s = base_s = 0.0
    if paired is not None:
        timed = PairedTimer([(work, base_work)], case.device).run(paired)
        impl_s, base_s = timed.impl_median_s, timed.base_median_s
    return ProfileEntry(
        fullname=fullname,
        **case.fields(),
        impl=impl,
        mode=mode,
        **asdict(parts),  # calls, wall_s, outside_s, cpu_s, device_s, ops and the counts
        peak_bytes=peak,
        unprofiled_s=unprofiled,
        paired_s=impl_s,
        base_paired_s=base_s,
        trace=trace,
        snapshot=snapshot,
    )


def profile_meta(case: Case, threads: int, cache: str, allocator: str) -> RunMeta:
    """The facts of a `lora-bench profile` run, for its results file."""
    return command_meta(case.device, "breakdown", threads, [case.dtype], cache, allocator)
