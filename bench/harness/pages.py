"""Huge pages for the large tensors of a timing process.

With 4 KiB pages, where a tensor lands in physical memory moves its time. On a 2-core Xeon VM
the same GEMM (T=1, 4096², fp32, 2 threads) read its weight 4-8% slower from 20 copies
allocated first than from 20 allocated right after them, in every process tried; allocated in
turns, the two sets read alike (bench/NOTES.md, "Where a tensor sits"). An implementation
that allocates its own weight (a merged W) is built after the copies base reads, so it read
faster than base for no reason of its own. Backed by 2 MiB pages the two sets read alike in
either order: torch asks the kernel for transparent huge pages on every CPU allocation of
2 MiB or more when THP_MEM_ALLOC_ENABLE=1 is in the environment at its first allocation.

Torch-free: the plugin sets the variable at import, before torch is imported, for a pytest
session that runs the benchmarks (and only then: an installed plugin must not change other
projects' test sessions); `ab` passes ENV to its sides. `in_force` says what the process got.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

VARIABLE = "THP_MEM_ALLOC_ENABLE"
ENV = {VARIABLE: "1"}
HUGE = "2 MiB: transparent huge pages for CPU tensors of 2 MiB or more"
SMAPS = Path("/proc/self/smaps_rollup")
BENCH = Path(__file__).resolve().parents[1]  # the benchmark package's folder


def is_bench_session(argv: Sequence[str], cwd: Path | None = None) -> bool:
    """Whether a pytest command line runs the benchmarks: --benchmark-only, and a path in
    the benchmark package (or `--pyargs bench`)."""
    if "--benchmark-only" not in argv:
        return False
    here = cwd or Path.cwd()
    for arg in argv[1:]:
        if arg.startswith("-"):
            continue
        if arg == "bench" and "--pyargs" in argv:
            return True
        path = Path(arg.partition("::")[0])
        resolved = (path if path.is_absolute() else here / path).resolve()
        if resolved == BENCH or BENCH in resolved.parents:
            return True
    return False


def ask(argv: Sequence[str]) -> None:
    """Set THP_MEM_ALLOC_ENABLE=1 for a benchmark session whose process has not imported
    torch yet (later, torch would not read it); a value already set is left alone."""
    if "torch" not in sys.modules and is_bench_session(argv):
        os.environ.setdefault(VARIABLE, "1")


def anon_huge_kib(smaps: Path | None = None) -> int | None:
    """KiB of this process's anonymous memory on huge pages (from `smaps`, by default the
    kernel's summary of this process), or None where the kernel does not say (not Linux)."""
    try:
        text = (smaps or SMAPS).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return None


def in_force(allocate: Callable[[int], object]) -> str:
    """What pages large CPU tensors get in this process, found by allocating and touching
    8 MiB with `allocate(nbytes)` (which must keep it alive until it returns) and watching
    the process's huge pages grow."""
    before = anon_huge_kib()
    if before is None:
        return "not known: the kernel does not report huge pages here"
    held = allocate(8 * 2**20)
    after = anon_huge_kib() or 0
    del held
    if after - before >= 2048:
        return HUGE
    if os.environ.get(VARIABLE) != "1":
        return (f"4 KiB: {VARIABLE}=1 was not set before torch was imported, so where a "
                "tensor sits can move its time")  # fmt: skip
    return "4 KiB: the kernel gave no transparent huge pages (THP off), so where a tensor " \
        "sits can move its time"  # fmt: skip
