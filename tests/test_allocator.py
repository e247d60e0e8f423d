"""malloc's thresholds, fixed for a timing process: an output-sized temporary, freed and made
again, comes back from the heap rather than from fresh pages."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys

import pytest

from bench.harness import allocator

GLIBC = platform.libc_ver()[0] == "glibc"

FAULTS = """
import resource, sys, torch
from bench.harness.allocator import fix_malloc
if sys.argv[1] == "fixed":
    fix_malloc()
torch.set_num_threads(1)
x, w = torch.randn(2048, 64), torch.randn(1024, 64)
def step():  # three 8 MiB outputs, two freed at once: the two_step forward's pattern
    return x @ w.T + 2.0 * (x @ w.T)
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults[15:])[7])  # the median call's, after 15 calls of warm-up
"""


def faults_per_call(mode: str) -> int:
    """Page faults of the median call of a step making 8 MiB temporaries, in a new process,
    once warm: the heap grows over the first calls (4 of 9 faulted, and in some processes a
    fifth, with small allocations between calls splitting its free chunks), then holds."""
    cmd = [sys.executable, "-c", FAULTS, mode]
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout)


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's; elsewhere nothing is set")
def test_fixed_thresholds_serve_temporaries_from_the_heap() -> None:
    pages = 8 * 2**20 // resource.getpagesize()
    fixed, default = faults_per_call("fixed"), faults_per_call("default")
    assert fixed < pages / 20, f"{fixed} faults per call fixed, {default} by default"


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's; elsewhere nothing is set")
def test_fix_malloc_says_what_it_set() -> None:
    assert allocator.fix_malloc() == allocator.FIXED
    assert "32 MiB" in allocator.FIXED and "64 MiB" in allocator.FIXED
    env = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}
    assert env == allocator.ENV
