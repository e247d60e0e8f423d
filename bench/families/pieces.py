"""Where an unmerged forward's time goes: the base GEMM, the shrink x Aᵀ, the expand into y,
and each impl, every one timed in pairs with the base GEMM (median of per-pair ratios), on
one copy of the weights (a warm cache, unlike the bench's cold default).

python -m bench.families.pieces gpt2-medium.c_proj --tokens 2048 --rank 8 [--seconds 5]
    [--profile IMPL]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tabulate import tabulate

from bench.harness.allocator import fix_malloc
from bench.harness.cases import DTYPES, SHAPES, Case
from bench.harness.rounds import Budget
from bench.harness.runner import charge_copy
from bench.harness.session import configure_torch, physical_cores
from bench.harness.timing import PairedTimer
from lora_kernels import IMPLS, load_plugins


def paired_ratio(
    work: Callable[[], object], base: Callable[[], object], device: str, seconds: float
) -> float:
    """Median of per-pair ratios work / base, over the bench's own paired rounds: until the
    ratio is sure (the default target) or `seconds` have passed."""
    timer = PairedTimer([(work, base)], device)
    return timer.run(Budget(seconds, min_pairs=9, max_pairs=100_000)).ratio


def neighbours_table(case: Case, seconds: float) -> str:
    """Base GEMM time per FLOP at (in + p, out + p) over that at (in, out), from paired rounds:
    below 1 means the neighbour is cheaper per FLOP, i.e. the case's size pays a penalty."""
    x, W = case.input(), case.weights().W
    rows = []
    for pad in (16, 32, 64):
        gen = torch.Generator().manual_seed(pad)
        xp = torch.randn(case.tokens, case.in_features + pad, generator=gen).to(x)
        Wp = torch.randn(case.out_features + pad, case.in_features + pad, generator=gen).to(W)
        padded, plain = functools.partial(F.linear, xp, Wp), functools.partial(F.linear, x, W)
        time_ratio = paired_ratio(padded, plain, case.device, seconds)
        flop_ratio = (case.in_features + pad) * (case.out_features + pad) / W.numel()
        rows.append([f"+{pad}", f"{time_ratio:.3f}", f"{flop_ratio:.3f}",
                     f"{time_ratio / flop_ratio:.3f}"])  # fmt: skip
    headers = ["in, out", "time / base", "FLOPs / base", "time per FLOP / base"]
    return tabulate(rows, headers, tablefmt="github")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shape", choices=list(SHAPES))
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seconds", type=float, default=3.0, help="time per row")
    p.add_argument("--threads", type=int, default=physical_cores())
    p.add_argument("--profile", metavar="IMPL", help="also print torch.profiler's table for IMPL")
    p.add_argument(
        "--neighbours",
        action="store_true",
        help="also time the base GEMM at in and out padded by 16, 32 and 64, per FLOP: does "
        "the case's size pay a power-of-two penalty?",
    )
    args = p.parse_args(argv)
    configure_torch(args.threads)
    fix_malloc()
    load_plugins()
    try:
        case = Case(args.shape, args.tokens, args.rank, args.dtype, args.device)
    except ValueError as err:
        p.error(str(err))
    w, x = case.weights(), case.input()
    base = IMPLS["base"].build(w)
    xa, y = F.linear(x, w.A), base(x)
    rows = {
        "shrink x Aᵀ": lambda: F.linear(x, w.A),
        "expand y += s·xa Bᵀ": lambda: y.addmm_(xa, w.B.t(), alpha=w.scale),
    }
    for name, impl in IMPLS.items():
        if impl.variant == "lora" and not impl.unavailable_reason(
            case.device, case.torch_dtype, "infer"
        ):
            op, _ = charge_copy(impl.build(w), x)
            rows[name] = functools.partial(op, x)
    table = [
        [k, f"{paired_ratio(f, lambda: base(x), case.device, args.seconds):.3f}"]
        for k, f in rows.items()
    ]
    print(f"{case}, {args.threads} threads; time / base GEMM, median of pairs")
    print(tabulate(table, ["piece or impl", "ratio"], tablefmt="github"))
    if args.neighbours:
        print(neighbours_table(case, args.seconds))
    if args.profile:
        op = IMPLS[args.profile].build(w)
        with torch.profiler.profile() as prof:
            for _ in range(10):
                op(x)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
