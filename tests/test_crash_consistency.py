"""The crash-consistency kit: each writer (a run's results pair, merge, baseline, export, a
sweep's shards and merge, profile's traces, save_adapter) runs in a loop in a child process
(tests/crash_writers.py), writing version a, then b, ..., each step of a write stretched by a
random pause; the child is killed with SIGKILL at a random moment, many times (the first
after a whole write, a third of them inside one). After each kill every output is the old
version or the new one, whole (or not there yet); a results pair split by the kill says so
through its run ids; and the next write leaves no temporary of the killed ones behind."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.schema.run import load_run, markdown_mismatch

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("crash_writers.py")
KILLS = {"results": 15, "merge": 10, "baseline": 10, "export": 10, "sweep": 10, "trace": 6}
OUTPUTS = {
    "results": ["cpu-quick.json", "cpu-quick.md"],
    "merge": ["merged.json"],
    "baseline": ["base/baseline-cpu.json"],
    "export": ["export.json"],
    "sweep": ["shards/1-of-2/cpu-quick.json", "shards/2-of-2/cpu-quick.json"],
    "trace": [],  # a profile's trace differs from one writing to the next: checked as gzip
}
PAIRS = {"results": "cpu-quick.json", "sweep": "cpu-quick.json"}  # a JSON and its .md


def killed_at_random(
    writer: str, folder: Path, rng: random.Random, window_s: float, aim: str = ""
) -> None:
    """Start the writer's loop, wait until it is set up, let it write for a random while, SIGKILL
    it. `aim` "inside": kill once a write has made its temporary; "after": wait for a whole
    write first, then the random while."""
    cmd = [sys.executable, str(CHILD), writer, str(folder)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", f"{writer}: the child did not start"
    until = {"inside": "temporary", "after": "written"}.get(aim)
    while until is not None and proc.stdout.readline().strip() not in (until, ""):
        pass  # inside a write: its temporary is there until the rename, pauses apart
    if aim != "inside":
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=rng.uniform(0.0, window_s))
    assert proc.poll() is None, f"{writer}: the child stopped writing by itself"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def versions(writer: str, tmp_path: Path) -> dict[str, dict[str, bytes]]:
    """What each output holds, whole, after a write of version a and of version b."""
    sys.path.insert(0, str(CHILD.parent))
    try:
        import crash_writers
    finally:
        sys.path.remove(str(CHILD.parent))
    out: dict[str, dict[str, bytes]] = {}
    for name in "ab":
        folder = tmp_path / f"reference-{name}"
        folder.mkdir()
        crash_writers.inputs(folder)
        crash_writers.WRITERS[writer](folder, name)
        out[name] = {o: (folder / o).read_bytes() for o in OUTPUTS[writer]}
    return out


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("writer", list(KILLS))
def test_a_writer_killed_anywhere_leaves_the_old_or_the_new_whole(
    writer: str, tmp_path: Path
) -> None:
    rng = random.Random(writer)
    want = versions(writer, tmp_path)
    folder = tmp_path / "live"
    folder.mkdir()
    seen: set[str] = set()
    inside = 0  # kills that left a temporary: inside a write
    for k in range(KILLS[writer]):
        aim = "after" if k == 0 else "inside" if k % 3 == 2 else ""
        killed_at_random(writer, folder, rng, window_s=0.4, aim=aim)
        inside += bool(temporaries(folder))
        for output in OUTPUTS[writer]:
            path = folder / output
            if not path.exists():
                continue  # killed before its first write
            data = path.read_bytes()
            match = [name for name in "ab" if data == want[name][output]]
            assert match, f"{writer}: {output} is neither version, whole ({len(data)} bytes)"
            seen.add(f"{output}={match[0]}")
        pair = folder / PAIRS.get(writer, "none")
        if pair.exists():  # whole (it loads), and its .md its own or told apart
            run = load_run(pair)
            if not pair.with_suffix(".md").exists():  # killed between the first two renames
                continue
            md = pair.with_suffix(".md").read_text()
            assert md.startswith("# lora-bench results") and md.endswith("\n")
            if f"- run: {run.meta.run_id} " not in md:  # split between the two renames
                assert markdown_mismatch(pair, run), "not told apart"
            seen.add("pair")
        if writer == "trace" and (folder / "trace.json.gz").exists():
            json.loads(gzip.decompress((folder / "trace.json.gz").read_bytes()))
            seen.add("trace")
    assert seen, f"{writer}: no output was there after a kill that came after a whole write"
    assert inside, f"{writer}: no kill landed inside a write"
    sys.path.insert(0, str(CHILD.parent))
    try:
        import crash_writers

        crash_writers.WRITERS[writer](folder, "a")  # the next run
    finally:
        sys.path.remove(str(CHILD.parent))
    assert temporaries(folder) == [], "the next write removes what killed writers left"


def test_an_adapter_folder_killed_anywhere_is_whole_or_absent(tmp_path: Path) -> None:
    pytest.importorskip("safetensors", reason="adapter files need safetensors (peft extra)")
    from safetensors.torch import load_file

    rng = random.Random(7)
    for _ in range(6):
        killed_at_random("save_adapter", tmp_path, rng, window_s=1.5)
        for folder in (p for p in tmp_path.iterdir() if not p.name.startswith(".")):
            names = sorted(p.name for p in folder.iterdir())
            assert names == ["adapter_config.json", "adapter_model.safetensors"], names
            json.loads((folder / "adapter_config.json").read_text())
            assert load_file(str(folder / "adapter_model.safetensors"))
    saved = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert saved, "no kill came after a save: the window is too short"
    import torch
    from torch import nn

    from lora_kernels import inject, save_adapter

    model = nn.Sequential(nn.Linear(8, 8))
    inject(model, "all-linear", rank=2)
    save_adapter(model, tmp_path / "next")  # the next save there
    assert temporaries(tmp_path) == [], "the next save removes killed writers' staging"
    assert torch.is_tensor(load_file(str(tmp_path / "next" / "adapter_model.safetensors"))[
        "base_model.model.0.lora_A.weight"])  # fmt: skip
