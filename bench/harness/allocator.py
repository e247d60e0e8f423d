"""glibc malloc's thresholds, fixed for a timing process.

glibc serves a block past its mmap threshold from fresh pages (a page fault per 4 KiB, on
every call) and moves that threshold with the process's history: freeing a large mapped
block raises it, up to 32 MiB. So an output-sized temporary of 8 MiB came from the heap in
one run and from fresh pages in another, depending on which tests ran before it, and the ratio
of an implementation that makes one moved by 30% (bench/NOTES.md, "What made one side slow").
Fixed at glibc's own maximum, every timing process is in the state of a long-running one.
Torch-free: the `ab` coordinator passes ENV to its sides."""

from __future__ import annotations

import ctypes
import platform

MMAP_THRESHOLD = 32 * 2**20  # glibc's dynamic maximum on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the ratio glibc itself keeps when it moves the threshold
ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
FIXED = f"glibc, mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB"
DEFAULT = "the C library's default (not glibc)"


def fix_malloc() -> str:
    """Fix the thresholds in this process; returns what is in force. Off glibc (macOS,
    Windows, musl) nothing changes and it says so."""
    if platform.libc_ver()[0] != "glibc":
        return DEFAULT
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):  # fmt: skip
        raise RuntimeError("glibc refused mallopt for the mmap and trim thresholds")
    return FIXED
