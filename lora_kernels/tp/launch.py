"""Start `world` processes on this machine joined in one process group (gloo on a CPU, NCCL
when each rank has a GPU of its own), run a function on each, and gather what each returns.
Nothing to install or start by hand: the rendezvous is a file in a temporary folder."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

BACKENDS = ("gloo", "nccl")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class RankError(RuntimeError):
    """A rank raised, died or timed out on a collective; the message names each rank and why.
    `crashed`: the first rank to stop was killed by a signal (a crash in native code, not a
    Python error); `began`: some rank had joined the group and begun fn by then."""

    def __init__(self, message: str, crashed: bool = False, began: bool = True) -> None:
        super().__init__(message)
        self.crashed, self.began = crashed, began


def _child(index: int, world: int, backend: str, folder: str, timeout_s: float, threads: int,
           fn: Callable[..., Any], args: tuple) -> None:  # fmt: skip
    if sys.platform.startswith("linux"):  # a parent killed with SIGKILL takes its ranks along
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    faulthandler.enable()  # a rank that crashes says where on its stderr
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(index)
    try:
        dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", rank=index,
                                world_size=world, timeout=timedelta(seconds=timeout_s))  # fmt: skip
        (Path(folder) / f"rank{index}.started").touch()
        result = fn(index, world, *args)
        part = Path(folder) / f"rank{index}.pt"
        torch.save(result, f"{part}.partial")
        os.replace(f"{part}.partial", part)  # whole, or not there
    except BaseException as err:
        lines = str(err).strip().splitlines() or [""]
        (Path(folder) / f"rank{index}.error").write_text(f"{type(err).__name__}: {lines[0]}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # The result is on disk: leave without the interpreter's teardown. A rank that took a
    # torch profile with gloo up now and then aborted there ("terminate called without an
    # active exception", no Python frame: a C++ thread destroyed at exit), failing a run
    # whose every result was in.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(
    world: int,
    fn: Callable[..., Any],
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 60.0,
    threads: int = 1,
) -> list[Any]:
    """fn(index, world, *args) on each of `world` new processes in one process group; returns
    each rank's result (what torch.save takes), in rank order. fn must be importable (a
    module-level function). A rank that raises, dies or waits on a collective longer than
    `timeout_s` stops the others and raises RankError; no result is returned half. A group
    that fails to form (no rank began fn: a rank crashed while it started, or gloo could not
    connect) is started once more, with a warning saying why."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int >= 1, got {world!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world:
        raise ValueError(f"nccl with {world} ranks needs {world} GPUs, this machine has "
                         f"{torch.cuda.device_count()}; use gloo, or fewer ranks")  # fmt: skip
    try:
        return _run_once(world, fn, args, backend, timeout_s, threads)
    except RankError as err:
        if err.began:
            raise
        warnings.warn(f"the process group did not form ({err}); starting it once more",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
    return _run_once(world, fn, args, backend, timeout_s, threads)


def _run_once(world: int, fn: Callable[..., Any], args: tuple, backend: str, timeout_s: float,
              threads: int) -> list[Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lora-tp-") as folder:
        try:
            with _faulthandler_from_start():
                mp.spawn(_child, args=(world, backend, folder, timeout_s, threads, fn, args),
                         nprocs=world, join=True)  # fmt: skip
        except ProcessException as err:
            code = err.exit_code if isinstance(err, ProcessExitedException) else None
            began = any((Path(folder) / f"rank{i}.started").exists() for i in range(world))
            raise RankError(_failures(folder, world, err), code is not None and code < 0,
                            began) from None  # fmt: skip
        parts = [Path(folder) / f"rank{i}.pt" for i in range(world)]
        missing = [i for i, p in enumerate(parts) if not p.exists()]
        if missing:
            raise RankError(f"ranks {missing} of {world} returned no result")
        return [torch.load(p, weights_only=False) for p in parts]


@contextmanager
def _faulthandler_from_start() -> Iterator[None]:
    """The ranks started meanwhile print a traceback on a crash from their first line on (the
    unpickling of fn and its imports included), not only once _child enables it."""
    before = os.environ.get("PYTHONFAULTHANDLER")
    os.environ["PYTHONFAULTHANDLER"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONFAULTHANDLER"]
        else:
            os.environ["PYTHONFAULTHANDLER"] = before


def _failures(folder: str, world: int, err: ProcessException) -> str:
    """The rank that stopped first, and every rank's error that was written down."""
    said = {}
    for i in range(world):
        path = Path(folder) / f"rank{i}.error"
        if path.exists():
            said[i] = f"rank {i} of {world} raised {path.read_text()}"
    first = err.error_index
    if first not in said:
        code = err.exit_code if isinstance(err, ProcessExitedException) else None
        when = "" if (Path(folder) / f"rank{first}.started").exists() else " before it began"
        said[first] = f"rank {first} of {world} " + (
            "failed" if code is None else f"died (exit {code}){when}")  # fmt: skip
    return "; ".join(said[i] for i in sorted(said)) + "; the others were stopped"
