"""The writers of the crash-consistency kit, each in a loop: `python tests/crash_writers.py
WRITER FOLDER` writes version a, then b, then a ... of its output into FOLDER until it is
killed, printing "ready" once set up, "temporary" each time a write has made its temporary
and "written" each time a write is done. Each step of a write (fsync, rename) is stretched
by a random pause, so that a SIGKILL lands inside writes as often as between them."""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/: runs, peft_models

from runs import make_run

from bench.schema.run import Run, dump_run


def stretched(fn: Callable[..., object]) -> Callable[..., object]:
    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(random.uniform(0, 0.02))
        out = fn(*args, **kwargs)
        time.sleep(random.uniform(0, 0.02))
        return out

    return slow


def said(mkstemp: Callable[..., object]) -> Callable[..., object]:
    """mkstemp that prints "temporary" once a write's temporary exists (not the probe that
    checks a folder can be written): the rename that ends the write is pauses away."""

    def make(*args: object, **kwargs: object) -> object:
        out = mkstemp(*args, **kwargs)
        if "-probe." not in str(kwargs.get("prefix", "")):
            print("temporary", flush=True)
        return out

    return make


def version(name: str, copies: int = 40) -> Run:
    """Run a or b: other ratios, another run id, a few hundred KiB of JSON."""
    run = make_run(ratios={("toy T=512 r=4 fp32", "addmm"): 1.5 if name == "b" else 1.05})
    big = [e for _ in range(copies) for e in run.entries]
    meta = type(run.meta)(**{**run.meta.__dict__, "run_id": name})
    return Run(meta, run.machine_info, run.commit_info, big)


def results_pair(folder: Path, name: str) -> None:
    from bench.report.document import run_markdown
    from bench.schema.io import write_together

    run = version(name)
    write_together({folder / "cpu-quick.json": dump_run(run),
                    folder / "cpu-quick.md": run_markdown(run)})  # fmt: skip


def cli(argv_of: Callable[[Path, str], list[str]]) -> Callable[[Path, str], None]:
    def write(folder: Path, name: str) -> None:
        from bench.cli.main import main

        code = main(argv_of(folder, name))
        assert code == 0, code

    return write


def inputs(folder: Path) -> None:
    """The commands' inputs, both versions, beside the outputs."""
    for name in "ab":
        (folder / f"in-{name}.json").write_text(dump_run(version(name, copies=2)))
        run = version(name, copies=1)  # a shard holds each entry once
        for i in (1, 2):
            meta = type(run.meta)(**{**run.meta.__dict__, "shard": f"{i}/2", "run_id": ""})
            shard = Run(meta, run.machine_info, run.commit_info, run.entries[i - 1 :: 2])
            (folder / f"in-{name}-{i}.json").write_text(dump_run(shard))


def sweep_results(folder: Path, name: str) -> None:
    """What a sweep writes once its shards are back: each shard's files, then the merge."""
    from bench.cli.sweep import ShardOutcome, merge_shards, save_shards

    texts = {i: (folder / f"in-{name}-{i}.json").read_text() for i in (1, 2)}
    outcomes = [ShardOutcome(f"{i}/2", "node", 0, {"cpu-quick.json": texts[i]}, 0.0, 1.0, "")
                for i in (1, 2)]  # fmt: skip
    save_shards(outcomes, folder)
    merge_shards(outcomes, folder, partial=False)


def trace(folder: Path, name: str) -> None:
    """A profile's trace, gzipped: a small profile (8x8 for a, 16x16 for b), taken afresh for
    each write, since a profile's trace can be exported only once."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.harness.profiling import write_trace

    n = 8 if name == "a" else 16
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.mm(torch.randn(n, n), torch.randn(n, n))
    write_trace(prof, folder / "trace.json.gz")


def save_adapter_loop(folder: Path) -> None:
    """save_adapter into folder/0, folder/1, ...: each must appear whole or not at all."""
    import torch
    from torch import nn

    from lora_kernels import inject, save_adapter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))
    inject(model, "all-linear", rank=64)
    print("ready", flush=True)
    k = 0
    while True:
        while (folder / str(k)).exists():  # a killed child's saves came before
            k += 1
        save_adapter(model, folder / str(k))


WRITERS: dict[str, Callable[[Path, str], None]] = {
    "results": results_pair,
    "merge": cli(lambda f, n: ["merge", str(f / f"in-{n}-1.json"), str(f / f"in-{n}-2.json"),
                               "-o", str(f / "merged.json"), "--force"]),
    "baseline": cli(lambda f, n: ["baseline", str(f / f"in-{n}.json"), "--dir", str(f / "base"),
                                  "--force"]),
    "export": cli(lambda f, n: ["export", str(f / f"in-{n}.json"), "--format",
                                "github-action-benchmark", "-o", str(f / "export.json")]),
    "sweep": sweep_results,
    "trace": trace,
}  # fmt: skip


def main(writer: str, folder: Path) -> None:
    tempfile.mkstemp = said(stretched(tempfile.mkstemp))  # type: ignore[assignment]
    os.fchmod = stretched(os.fchmod)  # type: ignore[assignment]
    os.fsync = stretched(os.fsync)  # type: ignore[assignment]
    os.replace = stretched(os.replace)  # type: ignore[assignment]
    os.rename = stretched(os.rename)  # type: ignore[assignment]
    if writer == "save_adapter":
        save_adapter_loop(folder)
        return
    inputs(folder)
    write = WRITERS[writer]
    print("ready", flush=True)
    for k in range(10**6):
        write(folder, "ab"[k % 2])
        print("written", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
