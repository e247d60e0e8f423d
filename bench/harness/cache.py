"""Warm and cold caches. Back-to-back calls on one set of weights read them from the last-level
cache (CPU L3, GPU L2) whenever they fit, which a serving step, passing through every layer of
a model before it comes back to this one, never does. A cold run rotates enough copies of the
weights and the input, one per call, that their total exceeds the cache twice over."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import torch

CACHE_MODES = ("cold", "warm")
FALLBACK_CACHE_BYTES = 32 * 2**20  # when the size cannot be read
MAX_COPIES = 64
MAX_ROTATION_BYTES = 2 * 2**30  # fewer copies rather than more memory than this


def _size(text: str) -> int:
    """'32768K', '32M' or '1024' (bytes) from sysfs, in bytes."""
    text = text.strip().upper()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def cpu_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """Size of the largest (last-level) cache of CPU 0, from sysfs; a fallback elsewhere."""
    sizes = []
    for index in root.glob("index*"):
        try:
            sizes.append(_size((index / "size").read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=FALLBACK_CACHE_BYTES)


@cache
def cache_bytes(device: str) -> int:
    """The last-level cache the cold mode must overflow: L2 on a GPU, L3 (or the largest) on
    a CPU. Read once per device."""
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        return int(getattr(props, "L2_cache_size", 0)) or FALLBACK_CACHE_BYTES
    return cpu_cache_bytes()


def copies_needed(set_bytes: int, cache: int, mode: str) -> int:
    """How many copies of a (weights, input) set of `set_bytes` to rotate: 1 warm; cold, at
    least 2 and enough to exceed twice the cache, within MAX_COPIES and MAX_ROTATION_BYTES."""
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {CACHE_MODES}, got {mode!r}")
    if mode == "warm":
        return 1
    wanted = max(2, math.ceil(2 * cache / max(set_bytes, 1)))
    affordable = max(1, MAX_ROTATION_BYTES // max(set_bytes, 1))
    return max(1, min(wanted, MAX_COPIES, affordable))
