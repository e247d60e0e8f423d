"""Shards of a profile's benchmarks for sweeps spread over devices or machines: `--lora-shard
i/N` runs the i-th of N deterministic shards, balanced by each benchmark's expected seconds
(not by count), and `lora-bench merge` joins the shards' results into one run."""

from __future__ import annotations


def assign(seconds: dict[str, float], count: int) -> list[list[str]]:
    """The benchmark ids in `count` shards: longest expected first, each to the shard with
    the fewest expected seconds so far (the lowest index on a tie); every id in one shard,
    the same shards for the same ids and figures, each shard's ids in their given order."""
    loads = [0.0] * count
    chosen: dict[str, int] = {}
    for name in sorted(seconds, key=lambda n: (-seconds[n], n)):
        i = min(range(count), key=lambda k: (loads[k], k))
        chosen[name] = i
        loads[i] += seconds[name]
    return [[n for n in seconds if chosen[n] == i] for i in range(count)]
