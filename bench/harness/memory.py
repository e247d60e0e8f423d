"""Peak memory of building and running one impl on one case.

CUDA: allocator statistics in-process: max_memory_allocated after a reset, minus what the
inputs already held. CPU: growth of the peak RSS (VmHWM) over the RSS before the build, in a
child process that serves every CPU measurement of a session. The child routes large
allocations through mmap and trims the heap before each measurement, so memory freed by an
earlier measurement cannot hide a later peak. It measures resident pages, not bytes asked for.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import torch

from bench.harness import pages
from bench.harness.cases import Case
from bench.harness.kernels import variant_of
from bench.harness.quiet import without_kineto_lines
from lora_kernels import LoRAWeights, get_impl

if TYPE_CHECKING:
    from lora_kernels.dora import DoRAWeights

CPU_METHOD = "peak RSS growth (VmHWM) in a child process"
CUDA_METHOD = "torch.cuda.max_memory_allocated minus inputs"
CPU_CALL_METHOD = "peak RSS growth (VmHWM) over one call, built and warmed, in a child process"
CUDA_CALL_METHOD = "torch.cuda.max_memory_allocated over one call, minus what was held before"


Inputs: TypeAlias = "tuple[LoRAWeights | DoRAWeights, torch.Tensor, torch.Tensor | None]"


def _inputs(case: Case, mode: str, impl: str) -> Inputs:
    """Weights of the impl's variant, x and (in train mode) the upstream gradient; x and the
    trainable tensors require grad."""
    w, x = case.weights(variant=variant_of(get_impl(impl))), case.input()
    if mode != "train":
        return w, x, None
    w.requires_grad_()
    x.requires_grad_()
    return w, x, torch.randn(case.tokens, case.out_features).to(x)


def _build_and_run(impl: str, inputs: Inputs, mode: str) -> torch.Tensor:
    """Build the op and run it once (forward, plus backward in train mode); returns y."""
    w, x, grad_out = inputs
    y = get_impl(impl).build(w, mode)(x)
    if grad_out is not None:
        y.backward(grad_out)
    return y


def free_bytes(device: str) -> int:
    """Memory the device has free now: CUDA's free memory, or the system's available RAM."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def shortfall(case: Case, mode: str, copies: int) -> str | None:
    """Why the case cannot fit the device's free memory, or None. A lower bound of what its
    check and timing hold at once: each of `copies` copies of its inputs and outputs, and the
    float64 oracle's copy of them; what an impl makes on top only adds."""
    one = case.min_bytes(mode)
    need = one * copies + one * 8 // case.torch_dtype.itemsize
    free = free_bytes(case.device)
    if need <= free:
        return None
    fewer = "fewer tokens, or --cache warm" if copies > 1 else "fewer tokens"
    return (f"{case} ({mode}) needs at least {need / 2**30:.1f} GiB (its inputs and outputs, "
            f"{copies} cache cop{'ies' if copies > 1 else 'y'} of them and the float64 oracle's"
            f"), and {case.device} has {free / 2**30:.1f} GiB free: take {fewer}")  # fmt: skip


def measure_cuda(impl: str, case: Case, mode: str) -> int:
    """Peak bytes allocated above the inputs while building and running the op once."""
    _build_and_run(impl, _inputs(case, mode, impl), mode)  # warm-up: compile, cuBLAS workspaces
    inputs = _inputs(case, mode, impl)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _build_and_run(impl, inputs, mode)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(found.group(1))


def rss_growth(fn: Callable[[], object]) -> int:
    """Peak RSS growth (bytes) over one call of fn, freed memory trimmed first."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def measure_cpu_here(impl: str, case: Case, mode: str) -> int:
    """In this process: peak RSS growth while building and running the op once (bytes)."""
    _build_and_run(impl, _inputs(case, mode, impl), mode)  # warm-up: compile, thread pools
    inputs = _inputs(case, mode, impl)
    return rss_growth(lambda: _build_and_run(impl, inputs, mode))


def pipes(proc: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    """(stdin, stdout) of a process started with both piped."""
    if proc.stdin is None or proc.stdout is None:
        raise RuntimeError("the child process was started without stdin and stdout pipes")
    return proc.stdin, proc.stdout


@dataclass
class CpuProbe:
    """A child process that answers one JSON line per measurement request: `server` run as a
    module, with the same plugins as the parent (the installed ones and `impl_specs`). ab's
    sides start it through bench.gates.with_kernels, so it imports their tree's kernels."""

    threads: int
    impl_specs: list[str]
    server: ModuleType  # run as `python -m SERVER [*server_args] THREADS [SPEC ...]`
    server_args: tuple[str, ...] = ()  # e.g. a source tree and a role, for with_kernels
    proc: subprocess.Popen[str] | None = None

    def measure(self, impl: str, case: Case, mode: str) -> int:
        """Peak RSS growth of building and running `impl` once on `case`."""
        return self._ask({"impl": impl, "case": asdict(case), "mode": mode})

    def measure_multi(self, case: Any, variant: str) -> int:  # a families.multi.MultiCase
        """Peak RSS growth over one call of a multi-adapter bench variant on `case`."""
        return self._ask({"kind": "multi", "case": asdict(case), "variant": variant})

    def _ask(self, request: dict) -> int:
        if self.proc is None or self.proc.poll() is not None:
            # The folder `bench` is imported from, so the child imports the same copy.
            depth = self.server.__name__.count(".")
            root = str(Path(self.server.__file__ or "").resolve().parents[depth])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
            env = {
                **os.environ,
                "PYTHONPATH": path,
                "MALLOC_MMAP_THRESHOLD_": "65536",
                "MALLOC_TRIM_THRESHOLD_": "0",
                pages.VARIABLE: "0",  # 4 KiB pages: RSS grows by what was touched
            }
            cmd = [sys.executable, "-m", self.server.__name__, *self.server_args]
            self.proc = subprocess.Popen(
                [*cmd, str(self.threads), *self.impl_specs],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        stdin, stdout = pipes(self.proc)
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"memory probe exited with code {self.proc.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"memory probe failed on {request}: {reply['error']}")
        return int(reply["peak_bytes"])

    def close(self) -> None:
        if self.proc is not None:
            stdin, stdout = pipes(self.proc)
            stdin.close()
            self.proc.wait(timeout=30)
            stdout.close()
            self.proc = None


# --- one call's saved tensors and peak, in this process (families beyond the layer grid) ---


def saved_bytes(step: Callable[[], object], held: Sequence[torch.Tensor] = ()) -> int:
    """Bytes of the storages autograd keeps for backward in one call of `step`, each once,
    leaving out those of `held` (weights that exist whether or not a step runs)."""
    seen: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in held}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def peak_bytes(
    step: Callable[[], object], device: str, clear_grads: Sequence[torch.Tensor] = ()
) -> int:
    """Peak bytes allocated over one call of `step` above what was held before it: CUDA's
    allocator statistics; on the CPU, the torch profiler's memory timeline (every tensor
    created and destroyed in the call, in order). `clear_grads`: the tensors a training step
    clears the .grad of; dropped first, as a training loop's zero_grad does, or the step would
    free the previous call's gradients inside the measurement and hide their size."""
    for t in clear_grads:
        t.grad = None
    if device != "cuda":
        return _profiled_peak(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _profiled_peak(step: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with without_kineto_lines(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                         record_shapes=True, with_stack=True) as prof:  # fmt: skip
        step()
    live = peak = 0
    for _, action, (key, _version), size in prof._memory_profile().timeline:
        if key.device.type == "cpu" and action in (Action.CREATE, Action.DESTROY):
            live += size if action == Action.CREATE else -size
            peak = max(peak, live)
    return peak
