"""One side of `lora-bench ab`: a long-lived process that checks and times the implementations
of one source tree, one round at a time, when the coordinator (`bench.ab`) asks. Start it as
`python -m bench.gates.with_kernels TREE side THREADS CWD [PLUGIN_SPEC ...]`: plugin files are
found from CWD, the directory `lora-bench ab` was started in.

It builds the same work as `pytest bench` (`forward_work`, `train_work`: seeded inputs, the
oracle check, cold-cache copies), so both sides run the same cases and inputs. Requests and
replies are JSON lines on stdin and on the process's original stdout; anything else written to
stdout (a plugin's print, a C library) goes to stderr.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TextIO

import pytest
import torch

import lora_kernels
from bench.harness.cache import cache_bytes, copies_needed
from bench.harness.cases import DTYPES, PROFILES, Case
from bench.harness.kernels import variant_of
from bench.harness.memory import CPU_METHOD, CUDA_METHOD, CpuProbe, measure_cuda
from bench.harness.runner import forward_work, train_work
from bench.harness.session import configure_torch
from bench.harness.timing import make_round, time_call, warm_up
from bench.schema.entries import CONTROL
from lora_kernels import IMPLS, load_plugins
from lora_kernels.plugins import absolute_spec

Reply = dict[str, object]


def source_digest(impl: object) -> str:
    """A digest of the source of an impl's builder: two sides whose `base` has the same one
    run the same code, so its comparison is the run's A/A control ("" when it cannot be
    read)."""
    try:
        source = inspect.getsource(impl.builder)  # type: ignore[attr-defined]
    except (AttributeError, OSError, TypeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class Side:
    """The state of one side: its thread count, plugins, and the work set up last."""

    def __init__(self, threads: int, impl_specs: list[str], launcher: ModuleType) -> None:
        configure_torch(threads)
        load_plugins(impl_specs)
        self.threads, self.impl_specs = threads, impl_specs
        self.launcher = launcher  # bench.gates.with_kernels, which starts the probe too
        self.tree = Path(lora_kernels.__file__).resolve().parents[1]
        self.work: Callable[[], object] | None = None
        self.device = "cpu"
        self.rounds: dict[int, Callable[[], None]] = {}
        self.probe: CpuProbe | None = None

    def hello(self) -> Reply:
        """Where its kernels come from, and what it can run."""
        impls = [
            {
                "name": i.name,
                "origin": i.origin,
                "devices": sorted(i.devices),
                "dtypes": sorted(n for n, d in DTYPES.items() if d in i.dtypes),
                "modes": sorted(i.modes),
                "variant": variant_of(i),
                "unavailable": i.requires(),
            }
            for i in IMPLS.values()
        ]
        return {"tree": str(self.tree), "torch": torch.__version__, "impls": impls,
                "control": source_digest(IMPLS.get(CONTROL))}  # fmt: skip

    def plan(self, profile: str, device: str, dtypes: list[str], cache: str) -> Reply:
        """The profile's cases on the device, with the copies a cold cache needs per mode,
        whether the profile measures the case's memory, and the variants whose impls it runs
        there (LoRA on the grid, DoRA on the DoRA cases)."""
        prof = PROFILES[profile]
        on = ([device], {device: dtypes})
        memory = {str(c) for c in prof.memory_cases(*on)}
        grid, dora = prof.cases(*on), prof.dora_cases(*on)
        cases = []
        for c in grid + [c for c in dora if c not in grid]:
            copies = {
                mode: copies_needed(c.min_bytes(mode), cache_bytes(device), cache)
                for mode in ("infer", "train")
            }
            cases.append(
                {"id": str(c), "key": c.key, "fields": asdict(c), "copies": copies,
                 "flops": {m: c.flops(m) for m in copies}, "memory": str(c) in memory,
                 "variants": [v for v, cs in (("lora", grid), ("dora", dora)) if c in cs],
                 "skip": c.skip_reason()}
            )  # fmt: skip
        return {"cases": cases}

    def setup(self, case: dict, impl: str, mode: str, copies: int) -> Reply:
        """Build the impl's work on the case and check it against the oracle."""
        self.work, self.rounds = None, {}
        gc.collect()
        c = Case(**case)
        try:
            checked = (forward_work if mode == "infer" else train_work)(c, impl, copies)
        except pytest.skip.Exception as err:
            return {"outcome": "skipped", "message": err.msg}
        except pytest.fail.Exception as err:
            return {"outcome": "not equivalent", "message": err.msg}
        self.work, self.device = checked.work, c.device
        return {
            "rel_error": checked.rel_error,
            "build_s": checked.build_s,
            "copied_output": checked.copied_output,
        }

    def warm(self) -> Reply:
        """Warm the work set up last; the median seconds of one call seen doing so."""
        if self.work is None:
            raise RuntimeError("warm before a successful setup")
        return {"per_call_s": warm_up(self.work, self.device)}

    def round(self, inner: int, settle_s: float) -> Reply:
        """Seconds per op of one synchronized round of `inner` ops of the work set up last,
        after at least `settle_s` of untimed ops: the other side has just run, and its idle
        threads and what it left in the caches would otherwise weigh on this round alone."""
        if self.work is None:
            raise RuntimeError("round before a successful setup")
        settled = 0.0
        while settled < settle_s:
            settled += time_call(self._round(1))
        return {"s": time_call(self._round(inner)) / inner}

    def _round(self, inner: int) -> Callable[[], None]:
        """The synchronized round of `inner` ops of the current work, built once."""
        if self.work is None:
            raise RuntimeError("no work set up: ask 'setup' first")
        if inner not in self.rounds:
            self.rounds[inner] = make_round(self.work, inner, self.device)
        return self.rounds[inner]

    def memory(self, case: dict, impl: str, mode: str) -> Reply:
        """Peak memory of building and running the impl once, as the bench measures it."""
        c = Case(**case)
        if torch.device(c.device).type == "cuda":
            return {"peak_bytes": measure_cuda(impl, c, mode), "method": CUDA_METHOD}
        if self.probe is None:
            server = (str(self.tree), "probe")  # the probe imports this side's kernels too
            self.probe = CpuProbe(self.threads, self.impl_specs, self.launcher, server)
        return {"peak_bytes": self.probe.measure(impl, c, mode), "method": CPU_METHOD}

    def handle(self, request: dict) -> Reply:
        ops: dict[str, Callable[..., Reply]] = {
            "hello": self.hello,
            "plan": self.plan,
            "setup": self.setup,
            "warm": self.warm,
            "round": self.round,
            "memory": self.memory,
        }
        op = request.pop("op", None)
        if op not in ops:
            return {"error": f"unknown request {op!r}; known: {', '.join(ops)}"}
        try:
            return ops[op](**request)
        except Exception as err:  # reported to the coordinator, which shows it
            traceback.print_exc()
            return {"error": f"{type(err).__name__}: {err}"}

    def close(self) -> None:
        if self.probe is not None:
            self.probe.close()


def serve(requests: TextIO, replies: TextIO, side: Side) -> None:
    for line in requests:
        replies.write(json.dumps(side.handle(json.loads(line))) + "\n")
        replies.flush()
    side.close()


def main(argv: list[str], launcher: ModuleType) -> None:
    replies = os.fdopen(os.dup(1), "w")  # the protocol keeps the real stdout ...
    os.dup2(2, 1)  # ... and any other output to fd 1 goes to stderr
    sys.stdout = sys.stderr
    os.chdir(argv[1])
    serve(sys.stdin, replies, Side(int(argv[0]), [absolute_spec(s) for s in argv[2:]], launcher))
