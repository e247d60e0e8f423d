"""The bench's options, defined once: the pytest plugin adds each as `--lora-NAME`, and
`lora-bench run` as `--NAME`. Torch-free, so the CLI can parse them without importing torch;
tests keep the choices equal to the harness's PROFILES, DTYPES and CACHE_MODES."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROFILE_NAMES = ("tiny", "quick", "full")
DEVICE_CHOICES = ("cpu", "cuda", "all")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
CACHE_CHOICES = ("cold", "warm")


@dataclass(frozen=True)
class Option:
    """One bench option: `name` is the part after --lora-."""

    name: str
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # argparse's add_argument keywords

    @property
    def dest(self) -> str:
        return "lora_" + self.name.replace("-", "_")


OPTIONS = (
    Option(
        "profile",
        "sweep to run: tiny (seconds), quick (default, minutes), full (hours on a CPU)",
        {"choices": list(PROFILE_NAMES), "default": "quick"},
    ),
    Option(
        "device",
        "devices to measure; default every device present",
        {"choices": list(DEVICE_CHOICES), "default": "all"},
    ),
    Option(
        "threads",
        "torch CPU threads, set and recorded; default the physical cores",
        {"type": int, "default": None},
    ),
    Option(
        "dtype",
        f"comma list of {', '.join(DTYPE_NAMES)}; default fp32 on cpu, bf16,fp32 on cuda",
        {"default": None},
    ),
    Option(
        "results",
        "folder for <device>-<profile>.json and .md (default results/)",
        {"default": "results"},
    ),
    Option(
        "seconds",
        "time budget of each benchmark's paired rounds (default: the profile's)",
        {"type": float, "default": None},
    ),
    Option(
        "only",
        "run only this case id, e.g. 'toy T=512 r=4 fp32 cpu'; repeatable",
        {"action": "append", "default": None, "metavar": "CASE_ID"},
    ),
    Option(
        "cache",
        "cold (default, what a serving step sees): each call reads weights and input from "
        "memory, rotating copies past the last-level cache; warm: the same copy every call",
        {"choices": list(CACHE_CHOICES), "default": "cold"},
    ),
    Option(
        "impl",
        "also check and time this Impl (module:attr or path/to/file.py:attr); repeatable. "
        "Installed plugins (entry points 'lora_bench.impls') are always loaded",
        {"action": "append", "default": None, "metavar": "MODULE:ATTR"},
    ),
)
