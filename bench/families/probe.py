"""The memory probe's server: a child process that answers one JSON line per CPU measurement
request of a session, for every family (`python -m bench.families.probe THREADS [SPEC ...]`).
A layer request is {"impl", "case", "mode"}; a multi-adapter one is {"kind": "multi", "case",
"variant"}. The reply is {"peak_bytes"} or {"error"}."""

from __future__ import annotations

import json
import sys

from bench.harness.cases import Case
from bench.harness.memory import measure_cpu_here, rss_growth
from bench.harness.processes import die_with_parent
from bench.harness.session import configure_torch
from lora_kernels import load_plugins


def measure_multi_cpu_here(case: dict, variant: str) -> int:
    """In this process: peak RSS growth over one call of a multi-adapter bench variant, built
    and run once before (bytes)."""
    # Imported here: the layer's probe also serves `lora-bench ab`'s base side, whose kernels
    # may predate lora_kernels.multi.
    from bench.families.multi import Batch, MultiCase, build_work

    work, _ = build_work(variant, Batch.of(MultiCase(**case)))
    work()
    return rss_growth(work)


def measure(request: dict) -> int:
    if request.get("kind") == "multi":
        return measure_multi_cpu_here(request["case"], request["variant"])
    return measure_cpu_here(request["impl"], Case(**request["case"]), request["mode"])


def main(argv: list[str]) -> None:
    die_with_parent()
    configure_torch(int(argv[0]))
    load_plugins(argv[1:])
    for line in sys.stdin:
        try:
            reply: dict[str, object] = {"peak_bytes": measure(json.loads(line))}
        except Exception as err:  # reported to the parent, which fails the test with it
            reply = {"error": f"{type(err).__name__}: {err}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
