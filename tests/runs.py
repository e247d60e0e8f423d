"""Small results JSONs, shaped like those `pytest bench` writes, for the report tests."""

from __future__ import annotations

import copy

from bench.results import SCHEMA

CASES = ("toy T=512 r=4 fp32", "gpt2.c_attn T=512 r=16 fp32", "llama3-8b.q_proj T=1 r=16 fp32")
IMPLS = ("base", "two_step", "addmm")


def time_entry(
    key: str,
    impl: str,
    device: str,
    median_s: float,
    ratio: float,
    iqr: float = 0.01,
    mode: str = "infer",
) -> dict:
    shape, tokens, rank, dtype = key.split()
    data = [median_s * f for f in (0.97, 0.99, 1.0, 1.01, 1.03)]
    return {
        "group": f"forward {key} {device}",
        "name": f"test_forward[{key} {device}-{impl}]",
        "fullname": f"bench/test_forward.py::test_forward[{key} {device}-{impl}]",
        "params": {"impl_name": impl},
        "param": f"{key} {device}-{impl}",
        "extra_info": {
            "kind": "time",
            "case": f"{key} {device}",
            "key": key,
            "impl": impl,
            "mode": mode,
            "shape": shape,
            "tokens": int(tokens[2:]),
            "rank": int(rank[2:]),
            "dtype": dtype,
            "device": device,
            "in": 64,
            "out": 10,
            "rel_error": 1e-7,
            "build_s": 0.001,
            "threads": 2,
            "tf32": False,
            "median_s": median_s,
            "tokens_per_s": int(tokens[2:]) / median_s,
            "gflops": 1.0,
            "gbs": 1.0,
            "pct_peak_gemm": 50.0,
            "pct_peak_copy": 10.0,
            "floor_s": median_s / 2,
            "time_over_floor": 2.0,
            "ratio_to_base": ratio,
            "ratio_iqr": iqr,
            "base_median_s": median_s / ratio,
            "inner": 1,
            "rounds": len(data),
        },
        "options": {},
        "stats": {
            "min": min(data),
            "max": max(data),
            "mean": median_s,
            "median": median_s,
            "iqr": data[3] - data[1],
            "rounds": len(data),
            "iterations": 1,
            "data": data,
        },
    }


def make_run(
    device: str = "cpu",
    profile: str = "quick",
    seconds: float = 1e-3,
    ratios: dict[tuple[str, str], float] | None = None,
    copy_gbs: float = 20.0,
    threads: int = 2,
) -> dict:
    """A run over CASES x IMPLS; `ratios[(key, impl)]` overrides the default ratio 1.05."""
    ratios = ratios or {}
    benches = []
    for key in CASES:
        for impl in IMPLS:
            ratio = 1.0 if impl == "base" else ratios.get((key, impl), 1.05)
            benches.append(time_entry(key, impl, device, seconds * ratio, ratio))
    benches.append(
        {
            "name": "test_memory[toy]",
            "fullname": "bench/test_memory.py::test_memory[toy]",
            "extra_info": {
                "kind": "memory",
                "case": f"{CASES[0]} {device}",
                "key": CASES[0],
                "impl": "two_step",
                "mode": "infer",
                "device": device,
                "peak_bytes": 3 * 2**20,
                "method": "test",
            },
            "stats": {"median": 0.1, "iqr": 0.0, "data": [0.1]},
        }
    )
    benches.append(
        {
            "name": "test_params[toy r=4]",
            "fullname": "bench/test_params.py::test_params[toy r=4]",
            "extra_info": {
                "kind": "params",
                "case": "toy r=4",
                "shape": "toy",
                "rank": 4,
                "device": "any",
                "in": 64,
                "out": 10,
                "trainable": 296,
                "total": 946,
                "fraction": 296 / 946,
            },
            "stats": {"median": 1e-4, "iqr": 0.0, "data": [1e-4]},
        }
    )
    peaks = {f"{device}/fp32": {"gemm_gflops": 120.0, "copy_gbs": copy_gbs}}
    return {
        "machine_info": {"lora_bench": {"torch": "2.13.0", "device_name": "test cpu"}},
        "commit_info": {},
        "benchmarks": benches,
        "datetime": "2026-01-01T00:00:00+00:00",
        "version": "5.2.3",
        "lora_bench": {
            "schema": SCHEMA,
            "device": device,
            "profile": profile,
            "threads": threads,
            "tf32": False,
            "peaks_start": peaks,
            "peaks_end": copy.deepcopy(peaks),
        },
    }
