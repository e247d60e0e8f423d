"""`lora-bench sweep --ray [ADDRESS]`: a profile's benchmarks in N shards (`--lora-shard i/N`)
as Ray tasks. With --device cuda each shard takes a GPU (num_gpus=1); on the CPU each takes a
whole node, one shard a node at a time (shards on one machine would share its memory
bandwidth and caches and corrupt each other's timings). Each shard's results files come back
to this machine under RESULTS/shards/, and are merged into RESULTS/<device>-<profile>.json
and .md. A failed shard is named with the end of its output, and nothing is merged unless
--partial. Ray comes with the `cluster` extra."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cli.merge import merge_runs
from bench.cli.run import add_bench_options, pytest_argv
from bench.harness.processes import die_with_parent
from bench.plugin.options import positive_int, positive_number
from bench.report.document import write_results
from bench.schema.io import ResultError, check_writable, write_atomic
from bench.schema.run import parse_run

NOT_PASSED = ("results", "shard", "trace", "device")  # the sweep's own, or no use on a node
NO_TESTS = 5  # pytest's exit code when a shard holds no benchmark
TAIL = 3000  # characters of a shard's output kept for its report
LOCAL = (None, "auto", "local")  # --ray values that find or start a cluster on this machine
CLIENT_PORT = 10001  # Ray client's port when a ray:// address gives none


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard's run gave: pytest's exit code, the results files it wrote (name ->
    text), where and for how long it ran, and the end of its output."""

    shard: str  # "i/N"
    node: str
    returncode: int
    files: dict[str, str]
    started: float  # time.time() on the node
    ended: float
    tail: str

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and any(n.endswith(".json") for n in self.files)

    @property
    def empty(self) -> bool:
        return self.returncode == NO_TESTS and not self.files


def run_shard(argv: list[str], shard: str, cwd: str) -> ShardOutcome:
    """On the node this runs on: `python -m pytest ARGV --lora-shard SHARD` into a temporary
    results folder, in `cwd` when the node has it; the results files' texts come back."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="lora-bench-shard-") as tmp:
        cmd = [sys.executable, "-m", "pytest", *argv, "--lora-shard", shard, "--lora-results", tmp]
        where = cwd if os.path.isdir(cwd) else tmp
        proc = subprocess.run(cmd, cwd=where, capture_output=True, text=True, check=False)
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(tmp).iterdir())
                 if p.suffix in (".json", ".md")}  # fmt: skip
    tail = (proc.stdout + proc.stderr)[-TAIL:]
    return ShardOutcome(shard, socket.gethostname(), proc.returncode, files, start,
                        time.time(), tail)  # fmt: skip


def _ray() -> Any:
    # Ray's own retries and connection warnings: the sweep's one line says what failed
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
    except ImportError:
        raise ResultError(
            "lora-bench sweep --ray needs Ray: pip install 'lora-bench[cluster]'"
        ) from None
    return ray


def check_options(argv: list[str], count: int) -> None:
    """Give the shards' pytest command line to pytest here first, collecting only: an option
    it refuses (a plugin that does not load, an unknown --only, a bad dtype) is refused now,
    in one line, before Ray starts anything. ResultError with pytest's own words."""
    with tempfile.TemporaryDirectory(prefix="lora-bench-sweep-") as tmp:
        cmd = [sys.executable, "-m", "pytest", *argv, "--collect-only", "-q",
               "--lora-shard", f"1/{count}", "--lora-results", tmp,
               "--benchmark-storage", Path(tmp, "storage").as_uri()]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              preexec_fn=die_with_parent)  # fmt: skip
    if proc.returncode in (0, NO_TESTS):
        return
    said = [line.strip() for line in (proc.stderr + proc.stdout).splitlines()
            if line.strip().startswith(("ERROR:", "Exit:", "pytest: error:"))]  # fmt: skip
    last = said[-1] if said else (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise ResultError(f"the shards' pytest options are refused here, so no shard started: "
                      f"{last.removeprefix('ERROR: ')}")  # fmt: skip


def connect(ray: Any, address: str | None, timeout: float) -> None:
    """Join the Ray cluster at `address` (or the local one), or ResultError within about
    `timeout` seconds naming the address: Ray itself retries an address where nothing
    answers for minutes, printing a warning at each try."""
    if ray.is_initialized():
        return
    if address not in LOCAL:
        target = address.removeprefix("ray://")
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            host, port = target, str(CLIENT_PORT)
        try:
            socket.create_connection((host, int(port)), timeout=min(timeout, 10)).close()
        except OSError as err:
            raise ResultError(f"--ray {address}: no Ray cluster answers at {host}:{port} "
                              f"({err.strerror or err}); give its head's address, or leave "
                              "--ray without one to start a local cluster") from None  # fmt: skip
    failed: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    # Ray's core prints each failed try to the process's stderr (fd 2) from its own threads,
    # past any logging setting: while it connects, fd 2 goes nowhere and Python's own
    # messages to a copy of it; on success both come back, on failure Ray's stay away.
    sys.stderr.flush()
    saved, previous = os.dup(2), sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w")
    with open(os.devnull, "w") as nowhere:
        os.dup2(nowhere.fileno(), 2)
    worker = threading.Thread(target=init, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ResultError(f"--ray {address}: Ray did not connect within {timeout:g} s "
                          "(--connect-timeout)")  # fmt: skip
    if failed:
        raise ResultError(f"--ray {address}: {type(failed[0]).__name__}: {failed[0]}")
    os.dup2(saved, 2)
    os.close(saved)
    sys.stderr.close()
    sys.stderr = previous


def on_ray(ray: Any, argv: list[str], count: int, device: str) -> list[ShardOutcome]:
    """Run shards 1..count of argv on the Ray cluster `ray` is connected to, printing each
    as it ends. A task that Ray loses (its node died, it could not be placed) is a failed
    shard; nothing is retried."""
    task = ray.remote(max_retries=0)(run_shard)
    cwd = os.getcwd()
    todo = [f"{i}/{count}" for i in range(1, count + 1)]
    running: dict[Any, tuple[str, str | None]] = {}  # ref -> (shard, node id or None)
    nodes: dict[str, float] = {}  # node id -> its CPUs, for CPU shards
    free: list[str] = []  # the nodes no shard runs on
    if device == "cuda":
        gpus = ray.cluster_resources().get("GPU", 0)
        if not gpus:
            raise ResultError("--device cuda: the Ray cluster has no GPU")
        running = {task.options(num_gpus=1).remote(argv, s, cwd): (s, None) for s in todo}
        todo = []
        print(f"lora-bench sweep: {count} shard(s) on {gpus:g} GPU(s), one shard a GPU")
    else:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = {n["NodeID"]: n["Resources"]["CPU"] for n in ray.nodes()
                 if n["Alive"] and n["Resources"].get("CPU", 0) >= 1}  # fmt: skip
        if not nodes:
            raise ResultError("the Ray cluster has no node with a CPU to run a shard on")
        free = sorted(nodes)
        print(f"lora-bench sweep: {count} shard(s) on {len(nodes)} node(s), one at a time each")
    outcomes = []
    while todo or running:
        while todo and free:  # the node's every CPU: nothing else of Ray runs there meanwhile
            target, next_shard = free.pop(0), todo.pop(0)
            where = NodeAffinitySchedulingStrategy(node_id=target, soft=False)
            ref = task.options(num_cpus=nodes[target], scheduling_strategy=where)
            running[ref.remote(argv, next_shard, cwd)] = (next_shard, target)
        if not running:  # every node was lost
            for left in todo:
                print(f"lora-bench sweep: shard {left}: FAILED, no node left to run it on")
                outcomes.append(ShardOutcome(left, "no node", -1, {}, 0.0, 0.0, "no node left"))
            todo = []
            continue
        [done], _ = ray.wait(list(running), num_returns=1)
        shard, node = running.pop(done)  # node: None for a GPU shard
        try:
            outcome, lost = ray.get(done), False
        except Exception as err:  # Ray's errors for a lost task or node: report, go on
            failure = f"{type(err).__name__}: {err}"
            outcome = ShardOutcome(shard, node or "a GPU node", -1, {}, 0.0, 0.0, failure)
            lost = not isinstance(err, ray.exceptions.RayTaskError)  # not just run_shard's
        if node is not None and not lost:  # a node lost takes no further shard
            free.append(node)
        outcomes.append(outcome)
        print(f"lora-bench sweep: shard {shard} on {outcome.node}: " + _status(outcome))
    return sorted(outcomes, key=lambda o: int(o.shard.partition("/")[0]))


def _status(o: ShardOutcome) -> str:
    if o.ok:
        return f"done in {o.seconds:.0f} s"
    if o.empty:
        return "no benchmark in this shard"
    last = [line for line in o.tail.splitlines() if line.strip()][-12:]
    return f"FAILED (exit {o.returncode})\n    " + "\n    ".join(last)


def save_shards(outcomes: list[ShardOutcome], results: Path) -> None:
    """Each shard's results files under results/shards/<i>-of-<N>/."""
    for o in outcomes:
        for name, text in o.files.items():
            write_atomic(results / "shards" / o.shard.replace("/", "-of-") / name, text)


def merge_shards(outcomes: list[ShardOutcome], results: Path, partial: bool) -> list[Path]:
    """Each results JSON merged over the shards that wrote it into results/<name>, with its
    .md; the merged paths. `partial`: shards may be missing (empty ones always may)."""
    names = sorted({n for o in outcomes if o.ok for n in o.files if n.endswith(".json")})
    partial = partial or any(o.empty for o in outcomes)
    written = []
    for name in names:
        runs = {f"shard {o.shard}": parse_run(json.loads(o.files[name]), f"shard {o.shard}")
                for o in outcomes if o.ok and name in o.files}  # fmt: skip
        path = results / name
        write_results(path, merge_runs(runs, partial=partial))
        written.append(path)
    return written


def cmd_sweep(args: argparse.Namespace) -> int:
    results = Path(args.lora_results)
    ray = _ray()
    merged = results / f"{args.lora_device}-{args.lora_profile}.json"
    shards = results / "shards"
    for there in (merged, shards):
        if there.exists() and not args.force:
            raise ResultError(f"{there} exists; pass --force to replace it")
    check_writable(results)  # before any shard starts
    args.lora_results = args.lora_shard = args.lora_trace = None  # each shard: its own
    argv = pytest_argv(args, args.pytest_args)
    check_options(argv, args.shards)
    connect(ray, args.ray, args.connect_timeout)
    outcomes = on_ray(ray, argv, args.shards, args.lora_device)
    save_shards(outcomes, results)
    failed = [o.shard for o in outcomes if not (o.ok or o.empty)]
    if failed and not args.partial:
        print(f"lora-bench sweep: shard(s) {', '.join(failed)} of {args.shards} failed; each "
              f"shard's results are in {shards}; nothing merged (--partial merges the others)",
              file=sys.stderr)  # fmt: skip
        return 1
    for path in merge_shards(outcomes, results, args.partial):
        print(f"lora-bench sweep: wrote {path} and .md")
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a profile's benchmarks in shards on a Ray cluster and merge the results",
        description="Submit --shards N shards of the profile as Ray tasks (one GPU each with "
        "--device cuda; else a whole node each, one at a time), gather and merge their "
        "results into RESULTS. pytest's own options go after `--`.",
    )
    p.add_argument("--ray", nargs="?", const=None, default=None, metavar="ADDRESS",
                   required=True, help="the Ray cluster (default: the running local one, or "
                   "a new local instance); e.g. auto, ray://head:10001")  # fmt: skip
    p.add_argument("--shards", type=positive_int, required=True, help="how many shards (N)")
    p.add_argument("--connect-timeout", type=positive_number, default=30.0, metavar="S",
                   help="seconds to wait for the Ray cluster (default 30)")  # fmt: skip
    p.add_argument("--device", dest="lora_device", choices=["cpu", "cuda"], default="cpu",
                   help="what each shard measures and takes: a node, or a GPU")  # fmt: skip
    add_bench_options(p, leave_out=NOT_PASSED)
    p.add_argument("--results", dest="lora_results", default="results",
                   help="folder for the merged results and shards/")  # fmt: skip
    p.add_argument("--partial", action="store_true", help="merge the shards that succeeded")
    p.add_argument("--force", action="store_true", help="replace earlier sweep results there")
    p.set_defaults(func=cmd_sweep)
