"""What the quick profile may spend on a 2-core CPU: per benchmark file, how many benchmarks
it runs there and the seconds pytest counted for them (`pytest bench --benchmark-only
--lora-device cpu --durations=0`, rounds that stop when sure). tests/test_budget.py fails when
a file's quick benchmarks outnumber its budget, or when the budgets add up past LIMIT_S: a
new case or family comes with a measured budget, or moves to `full`."""

from __future__ import annotations

from typing import NamedTuple

LIMIT_S = 300.0  # the quick profile's promise, start to end, from a fresh clone
STARTUP_S = 25.0  # outside the benchmarks: imports, collection, calibration, the results


class FileBudget(NamedTuple):
    benchmarks: int  # collected on a CPU with every extra and the example plugin (some skip)
    seconds: float  # what they took (setup, rounds and teardown), with some room


QUICK: dict[str, FileBudget] = {
    "bench/test_forward.py": FileBudget(44, 75.0),
    "bench/test_train_step.py": FileBudget(44, 58.0),
    "bench/test_memory.py": FileBudget(88, 60.0),
    "bench/test_model.py": FileBudget(18, 35.0),
    "bench/test_multi.py": FileBudget(18, 18.0),
    "bench/test_timer_check.py": FileBudget(6, 11.0),
    "bench/test_params.py": FileBudget(39, 1.0),
    "bench/test_breakdown.py": FileBudget(16, 14.0),  # 2 skip: merged has no training step
}
