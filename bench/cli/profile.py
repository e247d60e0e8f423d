"""`lora-bench profile`: where one case's time goes, per implementation (loads torch). Writes a
trace per implementation, the breakdown's entries as a results JSON that `report` reads, and
its tables as markdown, into one folder; prints the tables."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from bench.plugin.options import CACHE_CHOICES, DTYPE_NAMES, positive_int, positive_number
from bench.schema.io import ResultError, check_writable

CASE_ID = re.compile(r"^(\S+) T=(\d+) r=(\d+) (\w+) (\w+)$")


def parse_case(args: argparse.Namespace):  # -> bench.harness.cases.Case
    """The case the arguments name: a whole case id, or a shape with --tokens and --rank."""
    from bench.harness.cases import Case
    from bench.harness.session import DEFAULT_DTYPES

    whole = CASE_ID.match(args.case)
    if whole:
        if args.tokens or args.rank or args.dtype:
            raise ResultError("a whole case id already gives tokens, rank and dtype; drop them")
        shape, tokens, rank, dtype, device = whole.groups()
        if device != args.device:
            raise ResultError(f"the case id says {device!r}; give --device {device}")
        return Case(shape, int(tokens), int(rank), dtype, device)
    if args.tokens is None or args.rank is None:
        raise ResultError(f"{args.case!r}: give a shape with --tokens and --rank, or a whole case "
                          "id such as 'llama3-8b.q_proj T=16 r=16 fp32 cpu'")  # fmt: skip
    dtype = args.dtype or DEFAULT_DTYPES[args.device][0]
    return Case(args.case, args.tokens, args.rank, dtype, args.device)


def chosen_impls(names: list[str] | None, case, mode: str) -> tuple[list[str], list[str]]:
    """(impls to profile, lines on those left out): the named ones, each of which must run
    here; by default base, the peers and ours that run on this device, dtype and mode."""
    from lora_kernels import IMPLS

    if names:
        unknown = [n for n in names if n not in IMPLS]
        if unknown:
            raise ResultError(f"--impl {', '.join(unknown)}: unknown; known: {', '.join(IMPLS)}")
        for n in names:
            reason = IMPLS[n].unavailable_reason(case.device, case.torch_dtype, mode)
            if IMPLS[n].variant == "qlora":
                reason = "a QLoRA impl runs on a quantized base: see bench/test_quant.py"
            if reason:
                raise ResultError(f"--impl {n}: {reason}")
        return list(dict.fromkeys(["base", *names])), []
    chosen, left = [], []
    for name, impl in IMPLS.items():
        if impl.origin == "plugin" or impl.variant in ("qlora", "conv"):
            continue  # they need a quantized base or a convolution: their families profile them
        reason = impl.unavailable_reason(case.device, case.torch_dtype, mode)
        if reason:
            left.append(f"{name}: {reason}")
        else:
            chosen.append(name)
    return chosen, left


def cmd_profile(args: argparse.Namespace) -> int:
    import pytest
    import torch

    from bench.harness.allocator import fix_malloc
    from bench.harness.cache import cache_bytes, copies_needed
    from bench.harness.memory import shortfall
    from bench.harness.profiling import (
        PAIRED,
        case_folder,
        file_stem,
        profile_entry,
        profile_meta,
    )
    from bench.harness.runner import checked_work
    from bench.harness.session import command_infos, configure_torch, physical_cores
    from bench.report.base import render
    from bench.report.document import write_results
    from bench.report.profile import profile_tables
    from bench.schema.entries import Entry
    from bench.schema.run import Run
    from lora_kernels import load_plugins

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ResultError("--device cuda: CUDA is not available on this machine")
    if args.nvtx and args.device != "cuda":
        raise ResultError("--nvtx needs CUDA: NVTX ranges are read by nsys and ncu on a GPU")
    threads = physical_cores() if args.threads is None else args.threads
    load_plugins()
    try:
        case = parse_case(args)
    except ValueError as err:
        raise ResultError(str(err)) from None
    if case.skip_reason():
        raise ResultError(f"{case}: {case.skip_reason()}")
    copies = copies_needed(case.min_bytes(args.mode), cache_bytes(case.device), args.cache)
    too_big = shortfall(case, args.mode, copies)
    if too_big:
        raise ResultError(too_big)
    impls, left = chosen_impls(args.impl, case, args.mode)
    folder = Path(args.output or Path("results") / "profiles" / case_folder(case))
    check_writable(folder)
    configure_torch(threads)
    allocator = fix_malloc()
    paired = replace(PAIRED, seconds=args.seconds)
    entries: list[Entry] = []
    failed: list[str] = []
    for name in impls:
        try:
            checked = checked_work(case, name, args.mode, copies)
        except pytest.fail.Exception as err:  # the oracle check failed: not profiled
            failed.append(name)
            print(f"{name}: not profiled: {err}", file=sys.stderr)
            continue
        except pytest.skip.Exception as err:  # it cannot run the case: said, not a failure
            left.append(f"{name}: {err.msg}")
            continue
        fullname = f"lora-bench profile {case} {name} {args.mode}"
        works = (checked.work, checked.base_work)
        entry = profile_entry(case, name, args.mode, works, fullname, folder, args.nvtx, paired)
        entries.append(entry)
        print(f"{name}: {entry.wall_s * 1e3:.3f} ms a call profiled, trace {folder / entry.trace}")
    for line in left:
        print(f"not profiled: {line}")
    run = Run(profile_meta(case, threads, args.cache, allocator), *command_infos(), entries)
    stem = folder / f"profile-{args.mode}"
    write_results(stem.with_suffix(".json"), run)
    sys.stdout.write(render(profile_tables(run), "plain") + "\n")
    print(f"wrote {stem}.json and .md, and a trace per implementation ({file_stem('*', args.mode)}"
          ".trace.json.gz) for Perfetto or chrome://tracing")  # fmt: skip
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="where one case's time goes: traces and a breakdown")
    p.add_argument("case", help="a shape (with --tokens and --rank), or a whole case id such as "
                   "'llama3-8b.q_proj T=16 r=16 fp32 cpu'")  # fmt: skip
    p.add_argument("--tokens", type=int, help="tokens T of the call")
    p.add_argument("--rank", type=int, help="the adapter's rank r")
    p.add_argument("--mode", choices=["infer", "train"], default="infer",
                   help="a forward (default) or a training step")  # fmt: skip
    p.add_argument("--impl", action="append", metavar="NAME",
                   help="profile this impl (repeatable; base always comes too); default: base, "
                   "the peers and ours that run on this device, dtype and mode")  # fmt: skip
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=list(DTYPE_NAMES), help="default fp32 on cpu, bf16 on cuda")
    p.add_argument("--cache", choices=list(CACHE_CHOICES), default="cold",
                   help="as the bench's --lora-cache (default cold)")  # fmt: skip
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads, >= 1 (default: the physical cores)")  # fmt: skip
    p.add_argument("--seconds", type=positive_number, default=1.0,
                   help="most time of each impl's paired timing (default 1)")  # fmt: skip
    p.add_argument("--nvtx", action="store_true",
                   help="an NVTX range around each impl's profiled calls (CUDA)")  # fmt: skip
    p.add_argument("-o", "--output", help="folder (default results/profiles/<case>/)")
    p.set_defaults(func=cmd_profile)
