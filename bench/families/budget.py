"""What the quick profile may spend on a 2-core CPU: per benchmark file, how many benchmarks
it runs there and the seconds pytest counted for them (`pytest bench --benchmark-only
--lora-device cpu --durations=0`, rounds that stop when sure). tests/test_budget.py fails when
a file's quick benchmarks outnumber its budget, or when the budgets add up past LIMIT_S: a
new case or family comes with a measured budget, or moves to `full`."""

from __future__ import annotations

from typing import NamedTuple

LIMIT_S = 300.0  # the quick profile's promise, start to end, from a fresh clone
STARTUP_S = 15.0  # outside the benchmarks: imports, collection, calibration, the results


class FileBudget(NamedTuple):
    benchmarks: int  # collected on a CPU with every extra and the example plugin (some skip)
    seconds: float  # what they took (setup, rounds and teardown), with some room


# Measured in the committed quick run (results/reference/xeon-480m/quick.json, 258 s start to
# end on a 2-core Intel VM), each file's seconds there with about 10% room. The convolution
# families (29.4 s and 13.1 s) bought their place with the profiler's breakdown (14.2 s in
# the run before), which runs in full only on a CPU, and the budgets, which had drifted above
# what the files take (their sum was 299.5 s for a profile that ran 210-243 s), are what
# they measure now.
QUICK: dict[str, FileBudget] = {
    "bench/test_forward.py": FileBudget(38, 62.0),
    "bench/test_train_step.py": FileBudget(38, 46.0),
    "bench/test_memory.py": FileBudget(44, 17.0),  # the prefill case only
    "bench/test_model.py": FileBudget(11, 12.0),
    "bench/test_multi.py": FileBudget(18, 14.0),
    "bench/test_timer_check.py": FileBudget(6, 12.0),
    "bench/test_params.py": FileBudget(39, 1.0),
    "bench/test_breakdown.py": FileBudget(8, 0.5),  # full only on a CPU: 8 empty-set skips
    "bench/test_generate.py": FileBudget(6, 28.0),
    "bench/test_lifecycle.py": FileBudget(18, 8.0),
    "bench/test_quant.py": FileBudget(12, 19.0),
    "bench/test_fused.py": FileBudget(6, 11.0),
    "bench/test_conv.py": FileBudget(20, 32.0),
    "bench/test_conv_models.py": FileBudget(2, 15.0),
    "bench/test_unet.py": FileBudget(1, 1.5),  # full only on a CPU: one empty-set skip
    "bench/test_tp.py": FileBudget(1, 0.5),  # none on a CPU: collected as one empty-set skip
}


# Seconds per benchmark in the full profile, where a file's full benchmarks differ from its
# quick ones (longer budgets, other sizes); measured on the 2-core CPU from one run of the
# file each: tensor-parallel 36 in 211 s, quantized base 43 in 276 s, fused modules 24 in 75 s.
FULL_PER_BENCHMARK: dict[str, float] = {
    "bench/test_unet.py": 9.0,
    "bench/test_breakdown.py": 1.0,
    "bench/test_tp.py": 5.9,
    "bench/test_quant.py": 6.4,
    "bench/test_fused.py": 3.1,
}


def expected_seconds(path: str, profile: str = "quick") -> float:
    """Seconds a benchmark of the file at `path` (e.g. "bench/test_forward.py", or that file
    installed elsewhere) is expected to take in `profile`: the full profile's measurement per
    benchmark where there is one, else its quick one; 1 s for a file without either. What
    --lora-shard balances shards by (the files' proportions, not their seconds, matter)."""
    name = f"bench/{path.rpartition('/')[2]}"  # pytest's ids use "/"
    if profile == "full" and name in FULL_PER_BENCHMARK:
        return FULL_PER_BENCHMARK[name]
    budget = QUICK.get(name)
    if budget is None or budget.benchmarks == 0:
        return 1.0
    return budget.seconds / budget.benchmarks
