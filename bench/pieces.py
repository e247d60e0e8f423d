"""Where an unmerged forward's time goes: the base GEMM, the shrink x Aᵀ, the expand into y,
and each impl, every one timed in pairs with the base GEMM (median of per-pair ratios).

python -m bench.pieces "gpt2-medium.c_proj T=2048 r=8 fp32 cpu" [--seconds 5] [--profile IMPL]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench.cases import Case
from bench.session import configure_torch, physical_cores
from bench.timing import make_round, warm_up
from lora_kernels import IMPLS


def parse_case(text: str) -> Case:
    """'shape T=512 r=16 fp32 cpu' -> Case."""
    try:
        shape, tokens, rank, dtype, device = text.split()
        return Case(
            shape, int(tokens.removeprefix("T=")), int(rank.removeprefix("r=")), dtype, device
        )
    except ValueError as err:
        raise SystemExit(f"case must look like 'toy T=512 r=4 fp32 cpu': {err}") from None


def paired_ratio(fn: object, base: object, device: str, seconds: float) -> float:
    """Median of per-pair ratios fn / base over alternating synchronized calls."""
    one, ref = make_round(fn, 1, device), make_round(base, 1, device)
    per_pair = 2 * max(warm_up(fn, device), warm_up(base, device))
    ratios = []
    for _ in range(max(9, int(seconds / per_pair))):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        one()
        ratios.append((time.perf_counter() - t1) / (t1 - t0))
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case")
    p.add_argument("--seconds", type=float, default=3.0, help="time per row")
    p.add_argument("--threads", type=int, default=physical_cores())
    p.add_argument("--profile", metavar="IMPL", help="also print torch.profiler's table for IMPL")
    args = p.parse_args(argv)
    configure_torch(args.threads)
    case = parse_case(args.case)
    w, x = case.weights(), case.input()
    base = IMPLS["base"].build(w)
    xa, y = F.linear(x, w.A), base(x)
    rows = {
        "shrink x Aᵀ": lambda: F.linear(x, w.A),
        "expand y += s·xa Bᵀ": lambda: y.addmm_(xa, w.B.t(), alpha=w.scale),
    }
    for name, impl in IMPLS.items():
        if not impl.unavailable_reason(case.device, case.torch_dtype, "infer"):
            op = impl.build(w)
            rows[name] = lambda op=op: op(x)
    table = [
        [k, f"{paired_ratio(f, lambda: base(x), case.device, args.seconds):.3f}"]
        for k, f in rows.items()
    ]
    print(f"{case}, {args.threads} threads; time / base GEMM, median of pairs")
    print(tabulate(table, ["piece or impl", "ratio"], tablefmt="github"))
    if args.profile:
        op = IMPLS[args.profile].build(w)
        with torch.profiler.profile() as prof:
            for _ in range(10):
                op(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
