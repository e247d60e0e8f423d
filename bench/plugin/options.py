"""The bench's options, defined once: the pytest plugin adds each as `--lora-NAME`, and
`lora-bench run` as `--NAME`. Torch-free, so the CLI can parse them without importing torch;
tests keep the choices equal to the harness's PROFILES, DTYPES and CACHE_MODES."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.schema.run import parse_shard

PROFILE_NAMES = ("tiny", "quick", "full")
DEVICE_CHOICES = ("cpu", "cuda", "all")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
CACHE_CHOICES = ("cold", "warm")


def positive_number(text: str) -> float:
    """A finite number > 0, or a usage error saying what is allowed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return value


INT_MAX = 2**31 - 1  # what torch and the C libraries below it take as an int


def positive_int(text: str) -> int:
    """A whole number in [1, INT_MAX], or a usage error saying what is allowed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number in [1, {INT_MAX}]")
    return value


def non_negative_number(text: str) -> float:
    """A finite number >= 0, or a usage error saying what is allowed."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number >= 0")
    return value


def text(value: str) -> str:
    """Text that is not empty: an empty value is a mistake, never "the default"."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty: give a value, or leave the option out")
    return value


def shard_option(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def fraction(text: str) -> float:
    """'1%' or 0.01 -> 0.01: a finite fraction in (0, 1), or a usage error."""
    try:
        value = positive_number(text[:-1]) / 100 if text.endswith("%") else positive_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number > 0, as 1% or 0.01") from None
    if not value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be under 100% (1.0)")
    return value


def shard_text(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"


@dataclass(frozen=True)
class Option:
    """One bench option: `name` is the part after --lora-; `text` writes a parsed value back
    as the command line gives it (`lora-bench run` hands its options on to pytest)."""

    name: str
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)  # argparse's add_argument keywords
    text: Callable[[Any], str] = str

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
        "torch CPU threads (>= 1), set and recorded; default the physical cores",
        {"type": positive_int, "default": None},
    ),
    Option(
        "dtype",
        f"comma list of {', '.join(DTYPE_NAMES)}; default fp32 on cpu, bf16,fp32 on cuda",
        {"type": text, "default": None},
    ),
    Option(
        "results",
        "folder for <device>-<profile>.json and .md (default results/)",
        {"default": "results"},
    ),
    Option(
        "seconds",
        "time budget of each benchmark's paired rounds (default: the profile's)",
        {"type": positive_number, "default": None},
    ),
    Option(
        "target",
        "stop each benchmark's paired rounds once the 95%% CI of its ratio to base is within "
        "this much of the ratio, e.g. 1%% or 0.01 (default: the profile's)",
        {"type": fraction, "default": None},
    ),
    Option(
        "trace",
        "also write a torch.profiler trace (Chrome JSON, gzipped) of every timed benchmark's "
        "work, taken after its timed rounds, into DIR/<case>/<impl>-<mode>.trace.json.gz",
        {"default": None, "metavar": "DIR"},
    ),
    Option(
        "deadline",
        "seconds after the session starts past which no further benchmark starts: the rest "
        "skip, and the results say how many (default: none)",
        {"type": positive_number, "default": None},
    ),
    Option(
        "shard",
        "run the i-th of N shards of the profile's benchmarks, balanced by expected seconds, "
        "e.g. 2/4; `lora-bench merge` joins the shards' results",
        {"type": shard_option, "default": None, "metavar": "i/N"},
        shard_text,
    ),
    Option(
        "only",
        "run only this case id, e.g. 'toy T=512 r=4 fp32 cpu'; repeatable",
        {"action": "append", "type": text, "default": None, "metavar": "CASE_ID"},
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
        {"action": "append", "type": text, "default": None, "metavar": "MODULE:ATTR"},
    ),
)
