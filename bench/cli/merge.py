"""`lora-bench merge`: join the results of a sweep's shards (`--lora-shard i/N`) into one run,
refusing shards of different profiles, commits, devices or schema, or cut from different sets
of benchmarks; the same shard twice, entries in two shards, and a missing shard (unless
--partial, which says which are missing)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path

from bench.schema.io import ResultError, check_output, write_atomic
from bench.schema.run import Run, dump_run, load_run, parse_shard

SAME = ("profile", "device", "schema", "threads", "dtypes", "cache")


def merge_runs(runs: dict[str, Run], partial: bool = False) -> Run:
    """One run of the shards' entries, in shard order; its meta is the first shard's, less
    the shard. ResultError naming the shards when they do not belong together."""
    shards = {path: run.meta.shard for path, run in runs.items()}
    whole = [path for path, shard in shards.items() if not shard]
    if whole:
        raise ResultError(f"not the results of a shard (no --lora-shard): {', '.join(whole)}")
    counts = {parse_shard(s)[1] for s in shards.values()}
    if len(counts) > 1:
        raise ResultError(f"shards of different counts: {_named(shards)}")
    collections = {path: run.meta.shard_of for path, run in runs.items()}
    if len(set(collections.values())) > 1:
        raise ResultError("shards cut from different sets of benchmarks (another -k, --lora-only, "
                          f"plugin or version): {_named(collections)}")  # fmt: skip
    first = next(iter(runs.values()))
    for name in SAME:
        values = {path: getattr(run.meta, name) for path, run in runs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            raise ResultError(f"shards of different {name}: {_named(values)}")
    commits = {path: run.commit_info.get("id") for path, run in runs.items()}
    if len(set(commits.values())) > 1:
        raise ResultError(f"shards of different commits: {_named(commits)}")
    by_index: dict[int, str] = {}
    for path, shard in shards.items():
        index = parse_shard(shard)[0]
        if index in by_index:
            raise ResultError(f"shard {shard} given twice: {by_index[index]} and {path}")
        by_index[index] = path
    (count,) = counts
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in by_index]
    if missing and not partial:
        raise ResultError(f"missing shard(s) {', '.join(missing)} of {count}; pass --partial "
                          "to merge the others")  # fmt: skip
    seen: dict[str, str] = {}
    entries = []
    for index in sorted(by_index):
        path = by_index[index]
        for e in runs[path].entries:
            key = f"{e.kind} {getattr(e, 'fullname', '')} {getattr(e, 'mode', '')}"
            if key in seen:
                raise ResultError(f"{key.strip()} is in two shards: {seen[key]} and {path}")
            seen[key] = path
            entries.append(e)
    metas = [runs[by_index[i]].meta for i in sorted(by_index)]
    meta = dataclasses.replace(
        first.meta, shard="", shard_items=[], shard_of="", created=min(m.created for m in metas),
        not_run=[n for m in metas for n in m.not_run], missing_shards=missing, run_id="",
    )  # fmt: skip
    return Run(meta, first.machine_info, first.commit_info, entries)


def _named(values: Mapping[str, object]) -> str:
    return ", ".join(f"{path}: {value}" for path, value in values.items())


def cmd_merge(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.shards]
    twice = [
        str(p) for i, p in enumerate(inputs) if p.resolve() in {q.resolve() for q in inputs[:i]}
    ]
    if twice:
        raise ResultError(f"{', '.join(twice)}: given twice; give each shard's results once")
    out = Path(args.output)
    check_output(out, inputs, "-o")
    if out.exists() and not args.force:
        raise ResultError(f"{out} exists; pass --force to replace it")
    runs = {str(p): load_run(p) for p in inputs}
    merged = merge_runs(runs, args.partial)
    write_atomic(out, dump_run(merged))
    missing = merged.meta.missing_shards
    partial = f"; partial: shard(s) {', '.join(missing)} missing" if missing else ""
    print(f"wrote {out}: {len(merged.entries)} entries from {len(runs)} shard(s){partial}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="join the results of a sweep's shards into one run")
    p.add_argument("shards", nargs="+", help="the shards' results JSONs")
    p.add_argument("-o", "--output", required=True, help="the merged run's JSON")
    p.add_argument("--partial", action="store_true", help="merge though shards are missing")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_merge)
