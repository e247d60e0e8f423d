"""`lora-bench ab BASE_REF`: time the implementations of a base commit and of the working tree
in one run, interleaved round by round on the same cases and inputs.

Two long-lived side processes (`bench.gates.side`) each import their own `lora_kernels`: the base
commit's, exported from git, and the working tree's, in place. Both run the working tree's
harness, so only the kernels differ. This coordinator imports no torch. For each (case, impl,
mode) it sets the work up on both sides, gives both the same ops per round, then asks for
single rounds in quads of ABBA order (base, current, current, base), each after a few
milliseconds of untimed ops. A quad's ratio is current's two rounds over base's two: a linear
drift of the machine, and whatever the side before leaves behind, fall on both sides alike.
Quads stop when the ratio is sure or the budget ends (bench.harness.rounds). A flagged
comparison is timed again in two fresh processes, started in the other order. Two processes
rather than one: two versions of a package cannot share an interpreter, and a process per
side keeps each side's allocator, compile caches and thread pools its own.

The sides start with SIDE_ENV, which removes two ways one side read slow for a whole stretch
(bench/NOTES.md, "What made one side slow"): libgomp's idle threads spin for about 20 ms after
a parallel region on CPUs with a slow PAUSE, which took a core from the other side's next
round; and glibc's malloc moves its mmap threshold with the process's history, so one side
served its output-sized temporaries from fresh pages (a page fault per 4 KiB, every call) and
the other from its heap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from bench.gates import gitref, with_kernels
from bench.gates.plan import Item, match_cases, select
from bench.harness import allocator, pages
from bench.harness.rounds import TARGET, Budget, choose_inner, stop_reason
from bench.schema.ab import AbEntry, AbMemory, AbMeta, AbProblem, AbRun, AbTime
from bench.schema.io import ResultError
from bench.stats.verdicts import SAME

SIDES = ("base", "current")
ABBA = ("base", "current", "current", "base")  # one quad: each side runs once first, once second
SIDE_ENV = {
    "GOMP_SPINCOUNT": "10000",  # idle OpenMP threads sleep within about a millisecond
    **allocator.ENV,  # malloc's thresholds fixed, as in `pytest bench`
    **pages.ENV,  # large tensors on huge pages, as in `pytest bench`
}


@dataclass(frozen=True)
class Options:
    """What `lora-bench ab` was asked to do."""

    base_ref: str
    project: Path
    profile: str = "quick"
    device: str = "cpu"
    dtypes: tuple[str, ...] = ("fp32",)
    cache: str = "cold"
    threads: int = 1
    seconds: float = 5.0  # paired rounds of one comparison stop after about this long ...
    target: float = TARGET  # ... or once the ratio's 95% CI is within this of the ratio
    min_quads: int = 8  # below 8 a signed-rank p-value cannot reach 0.01
    max_quads: int = 1000
    settle_s: float = 2e-3  # untimed ops a side runs before each timed round
    rechecks: int = 2  # times a flagged comparison is set up and timed again
    threshold: float = 0.10
    alpha: float = 0.01
    memory_rel: float = 0.05
    memory_mib: float = 1.0
    memory: bool = True
    cases: tuple[str, ...] = ()
    impls: tuple[str, ...] = ()
    impl_specs: tuple[str, ...] = ()
    require_clean: bool = False


class SideProcess:
    """One side's process, spoken to in JSON lines; its stderr goes to a log shown on a crash."""

    def __init__(self, name: str, tree: Path, opts: Options, log: TextIO) -> None:
        self.name, self.log = name, log
        cmd = [
            sys.executable, "-m", with_kernels.__name__, str(tree), "side",
            str(opts.threads), str(Path.cwd()), *opts.impl_specs,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=opts.project, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            text=True, env={**os.environ, **SIDE_ENV},
        )  # fmt: skip
        if self.proc.stdin is None or self.proc.stdout is None:
            raise RuntimeError("the side was started without stdin and stdout pipes")
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def send(self, op: str, **request: object) -> None:
        self.op = op
        self.stdin.write(json.dumps({"op": op, **request}) + "\n")
        self.stdin.flush()

    def receive(self) -> dict:
        line = self.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.log.flush()
            tail = Path(self.log.name).read_text(errors="replace")[-3000:]
            raise ResultError(f"the {self.name} side exited (code {code}) on {self.op}:\n{tail}")
        return json.loads(line)

    def ask(self, op: str, **request: object) -> dict:
        self.send(op, **request)
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stdout.close()


class Progress:
    """One line per comparison on stderr (redrawn in place on a terminal): what is being timed
    and the estimated time left, from the time taken so far and each comparison's cost."""

    def __init__(self, costs: list[float], stream: TextIO = sys.stderr) -> None:
        self.costs, self.total = costs, len(costs)
        self.stream, self.start = stream, time.monotonic()
        self.tty = stream.isatty()

    def show(self, done: int, label: str) -> None:
        elapsed = time.monotonic() - self.start
        rate = elapsed / sum(self.costs[:done]) if done else 0.0
        left = f"about {_duration(rate * sum(self.costs[done:]))} left" if done else "…"
        line = f"ab [{done + 1}/{self.total}] {label} · {left}"
        if self.tty:
            self.stream.write(f"\r\033[K{line}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        clear = "\r\033[K" if self.tty else ""
        took = _duration(time.monotonic() - self.start)
        self.stream.write(f"{clear}ab: {self.total} comparisons in {took}\n")


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _problem(item: Item, side: str, reply: dict) -> AbProblem:
    outcome = reply.get("outcome", "error")
    message = reply.get("message") or reply.get("error") or "no reason given"
    return AbProblem(item.case["id"], item.impl, item.mode, side, outcome, str(message))


def both(sides: dict[str, SideProcess], op: str, **request: object) -> dict[str, dict]:
    """Ask both sides at once (untimed work: setup, memory) and wait for both replies."""
    for s in SIDES:
        sides[s].send(op, **request)
    return {s: sides[s].receive() for s in SIDES}


def compare_item(
    sides: dict[str, SideProcess], item: Item, opts: Options, attempt: int = 0
) -> list[AbEntry]:
    """Set the item up on both sides (at once), warm each in turn, time it in alternating
    rounds, and measure its memory on a first attempt."""
    copies = item.case["copies"][item.mode]
    request = {"case": item.case["fields"], "impl": item.impl, "mode": item.mode}
    replies = both(sides, "setup", **request, copies=copies)
    problems: list[AbEntry] = [
        _problem(item, s, r) for s, r in replies.items() if "rel_error" not in r
    ]
    if problems:
        return problems
    warm = {s: sides[s].ask("warm") for s in SIDES}
    problems = [_problem(item, s, r) for s, r in warm.items() if "per_call_s" not in r]
    if problems:
        return problems
    per_call = max(r["per_call_s"] for r in warm.values())
    inner = choose_inner(per_call)
    budget = Budget(opts.seconds, opts.min_quads, opts.max_quads, opts.target)
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    ratios: list[float] = []
    start = time.perf_counter()
    while (stop := stop_reason(ratios, time.perf_counter() - start, budget)) is None:
        for s in ABBA:
            reply = sides[s].ask("round", inner=inner, settle_s=opts.settle_s)
            if "s" not in reply:
                return [_problem(item, s, reply)]
            times[s].append(reply["s"])
        ratios.append(sum(times["current"][-2:]) / sum(times["base"][-2:]))
    out: list[AbEntry] = [
        AbTime(item.case["id"], item.case["key"], item.impl, item.mode, inner, copies,
               times["base"], times["current"], replies["base"]["rel_error"],
               replies["current"]["rel_error"], attempt, stop, "abba")
    ]  # fmt: skip
    if opts.memory and item.case["memory"] and attempt == 0:
        peaks = both(sides, "memory", **request)
        bad = [_problem(item, s, r) for s, r in peaks.items() if "peak_bytes" not in r]
        out += bad or [
            AbMemory(item.case["id"], item.case["key"], item.impl, item.mode,
                     peaks["current"]["method"], peaks["base"]["peak_bytes"],
                     peaks["current"]["peak_bytes"])
        ]  # fmt: skip
    return out


def _flagged(entries: list[AbEntry], item: Item, opts: Options) -> bool:
    """Whether every attempt at the item so far shows the same change (not SAME)."""
    ident = (item.case["id"], item.impl, item.mode)
    tries = [e for e in entries if isinstance(e, AbTime) and (e.case, e.impl, e.mode) == ident]
    seen = {e.status(opts.threshold, opts.alpha) for e in tries}
    return len(seen) == 1 and SAME not in seen


def _hello(side: SideProcess, tree: Path) -> dict:
    reply = side.ask("hello")
    if "error" in reply:
        raise ResultError(f"the {side.name} side could not start: {reply['error']}")
    if Path(reply["tree"]) != tree.resolve():
        raise ResultError(
            f"the {side.name} side imported lora_kernels from {reply['tree']}, not {tree}"
        )
    return reply


def _start(
    trees: dict[str, Path], opts: Options, logs: Mapping[str, TextIO], order: tuple[str, ...]
) -> tuple[dict[str, SideProcess], dict[str, dict]]:
    """Both sides' processes, started in `order`, and their hellos."""
    sides: dict[str, SideProcess] = {}
    try:
        for s in order:
            sides[s] = SideProcess(s, trees[s], opts, logs[s])
        return sides, {s: _hello(sides[s], trees[s]) for s in SIDES}
    except BaseException:
        _close(sides)
        raise


def _close(sides: dict[str, SideProcess]) -> None:
    for side in sides.values():
        side.close()


def run_ab(opts: Options) -> AbRun:
    """Time both sides and return the run; ResultError on unusable input."""
    start = time.monotonic()
    project = opts.project
    base_commit = gitref.resolve(project, opts.base_ref)
    gitref.check_plugin_interface(project, base_commit, opts.base_ref)
    current_commit = gitref.resolve(project, "HEAD")
    dirty = gitref.dirty_paths(project)
    if dirty and opts.require_clean:
        raise ResultError(
            f"--require-clean: the working tree has uncommitted changes: {', '.join(dirty[:10])}"
        )
    with tempfile.TemporaryDirectory(prefix="lora-bench-ab-") as tmp:
        trees = {"base": gitref.export_kernels(project, base_commit, Path(tmp) / "base"),
                 "current": project}  # fmt: skip
        logs = {s: open(Path(tmp) / f"{s}.log", "w+", encoding="utf-8") for s in SIDES}  # noqa: SIM115
        sides: dict[str, SideProcess] = {}
        try:
            sides, hellos = _start(trees, opts, logs, SIDES)
            plan = sides["current"].ask(
                "plan", profile=opts.profile, device=opts.device, dtypes=list(opts.dtypes),
                cache=opts.cache,
            )  # fmt: skip
            if "error" in plan:
                raise ResultError(f"could not list the cases: {plan['error']}")
            cases = match_cases(plan["cases"], opts.cases)
            impls = {s: {i["name"]: i for i in hellos[s]["impls"]} for s in SIDES}
            sel = select(cases, impls, opts.device, opts.impls)
            if not sel.items:
                raise ResultError("nothing to compare: no (case, impl, mode) both sides can run")
            entries: list[AbEntry] = list(sel.skipped)
            progress = Progress([i.cost for i in sel.items])
            for done, item in enumerate(sel.items):
                progress.show(done, item.label())
                entries += compare_item(sides, item, opts)
            progress.finish()
            for attempt in range(1, opts.rechecks + 1):
                flagged = [i for i in sel.items if _flagged(entries, i, opts)]
                if not flagged:
                    break
                _close(sides)  # fresh processes, started in the other order
                sides, _ = _start(trees, opts, logs, SIDES[:: (-1) ** attempt])
                progress = Progress([i.cost for i in flagged])
                for done, item in enumerate(flagged):
                    progress.show(done, f"again: {item.label()}")
                    entries += compare_item(sides, item, opts, attempt)
                progress.finish()
        finally:
            _close(sides)
            for log in logs.values():
                log.close()
    meta = AbMeta(
        base_ref=opts.base_ref,
        base_commit=base_commit,
        current_commit=current_commit,
        current_dirty=bool(dirty),
        device=opts.device,
        profile=opts.profile,
        threads=opts.threads,
        cache=opts.cache,
        torch=hellos["current"]["torch"],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=opts.seconds,
        threshold=opts.threshold,
        alpha=opts.alpha,
        memory_rel=opts.memory_rel,
        memory_mib=opts.memory_mib,
        cases=list(opts.cases),
        impls=list(opts.impls),
        only_base=sel.only_base,
        only_current=sel.only_current,
        wall_s=time.monotonic() - start,
        target=opts.target,
        side_env=dict(SIDE_ENV),
        control=bool(hellos["base"].get("control"))
        and hellos["base"].get("control") == hellos["current"].get("control"),
    )
    return AbRun(meta, entries)
