"""Tables of one run, built from its JSON: throughput, ratio to base, memory, parameters."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from tabulate import tabulate

from bench.cases import SHAPES
from lora_kernels import IMPLS


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[object]]
    note: str = ""


def fmt_seconds(s: float) -> str:
    """Seconds with a unit a person reads at a glance: 812 µs, 3.41 ms, 1.20 s."""
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bytes(n: float) -> str:
    """Bytes in KiB, MiB or GiB, whichever reads best."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def impl_order(impl: str) -> tuple[int, str]:
    names = list(IMPLS)
    return (names.index(impl) if impl in names else len(names), impl)


def entries(run: dict, kind: str, mode: str | None = None) -> list[dict]:
    out = []
    for bench in run["benchmarks"]:
        info = bench["extra_info"]
        if info["kind"] == kind and (mode is None or info.get("mode") == mode):
            out.append({**info, "stats": bench.get("stats") or {}, "fullname": bench["fullname"]})
    return out


def time_index(run: dict) -> dict[tuple[str, str, str], dict]:
    """Timed entries by (case key without device, impl, mode): how runs are matched."""
    return {(e["key"], e["impl"], e["mode"]): e for e in entries(run, "time")}


def _pivot(run: dict, mode: str) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(cases in run order, impls in registry order, entry by (case, impl)) of timed entries."""
    items = entries(run, "time", mode)
    impls = sorted({e["impl"] for e in items}, key=impl_order)
    return _cases_in_order(items), impls, {(e["case"], e["impl"]): e for e in items}


def _cases_in_order(items: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for e in items:
        seen.setdefault(e["case"], None)
    return list(seen)


def throughput_table(run: dict, mode: str) -> Table:
    items = entries(run, "time", mode)
    cases = _cases_in_order(items)
    rows = []
    for e in sorted(items, key=lambda e: (cases.index(e["case"]), impl_order(e["impl"]))):
        st = e["stats"]
        rows.append(
            [
                e["case"],
                e["impl"],
                fmt_seconds(st["median"]),
                f"{100 * st['iqr'] / st['median']:.1f}%",
                f"{e['tokens_per_s']:,.0f}",
                f"{e['gflops']:.1f}",
                f"{e['gbs']:.1f}",
                f"{e['pct_peak_gemm']:.1f}",
                f"{e['time_over_floor']:.2f}",
            ]
        )
    headers = ["case", "impl", "median", "IQR", "tokens/s", "GFLOP/s", "GB/s", "% peak GEMM"]
    return Table(
        f"Throughput ({mode})",
        [*headers, "x floor"],
        rows,
        "median and IQR per op; x floor = time / roofline floor from the calibrated peaks",
    )


def ratio_table(run: dict, mode: str) -> Table:
    cases, impls, cells = _pivot(run, mode)
    rows = []
    for case in cases:
        row: list[object] = [case]
        for impl in impls:
            e = cells.get((case, impl))
            row.append("" if e is None else f"{e['ratio_to_base']:.3f} ±{e['ratio_iqr']:.3f}")
        rows.append(row)
    base = "base forward" if mode == "infer" else "base step (forward, then dx)"
    return Table(
        f"Ratio to base ({mode})",
        ["case", *impls],
        rows,
        f"median of paired rounds impl / {base}, ± IQR; below 1 is faster than the base",
    )


def roofline_table(run: dict, mode: str) -> Table:
    """Per case: the floor from the calibrated peaks, and each impl's time over that floor."""
    cases, impls, cells = _pivot(run, mode)
    rows = []
    for case in cases:
        lora = [cells[(case, i)] for i in impls if (case, i) in cells and i != "base"]
        floor = lora[0]["floor_s"] if lora else cells[(case, "base")]["floor_s"]
        row: list[object] = [case, fmt_seconds(floor)]
        for impl in impls:
            e = cells.get((case, impl))
            row.append("" if e is None else f"{e['median_s'] / floor:.2f}")
        rows.append(row)
    return Table(
        f"Roofline ({mode})",
        ["case", "floor", *impls],
        rows,
        "floor = max(useful FLOPs / peak GEMM, fewest bytes / peak copy) of the LoRA layer; "
        "cells = median time / floor (below 1: the machine ran faster than at calibration)",
    )


def memory_table(run: dict) -> Table:
    items = entries(run, "memory")
    impls = sorted({e["impl"] for e in items}, key=impl_order)
    cells = {(e["case"], e["mode"], e["impl"]): e["peak_bytes"] for e in items}
    keys = list(dict.fromkeys((e["case"], e["mode"]) for e in items))
    rows = [
        [case, mode]
        + ["" if (case, mode, i) not in cells else fmt_bytes(cells[(case, mode, i)]) for i in impls]
        for case, mode in keys
    ]
    method = items[0]["method"] if items else ""
    note = (
        f"{method}: the build (merged's weight copy, compile) and run of one op, forward "
        "(infer) or forward and backward (train), above the inputs and weights"
    )
    return Table("Peak memory", ["case", "mode", *impls], rows, note)


def params_table(run: dict) -> Table:
    shapes = list(SHAPES)
    items = sorted(
        entries(run, "params"),
        key=lambda e: (shapes.index(e["shape"]) if e["shape"] in shapes else 99, e["rank"]),
    )
    rows = [
        [
            e["shape"],
            e["in"],
            e["out"],
            e["rank"],
            f"{e['trainable']:,}",
            f"{e['total']:,}",
            f"{100 * e['fraction']:.3f}%",
        ]
        for e in items
    ]
    headers = ["shape", "in", "out", "r", "trainable", "total", "trainable %"]
    return Table("Trainable parameters", headers, rows, "trainable = r·(in + out)")


def run_tables(run: dict) -> list[Table]:
    """Every non-empty table of a run, in reading order."""
    tables = [
        throughput_table(run, "infer"),
        ratio_table(run, "infer"),
        roofline_table(run, "infer"),
        throughput_table(run, "train"),
        ratio_table(run, "train"),
        roofline_table(run, "train"),
        memory_table(run),
        params_table(run),
    ]
    return [t for t in tables if t.rows]


def render(tables: list[Table], fmt: str = "github") -> str:
    """Markdown (github), plain text or CSV."""
    parts = []
    for t in tables:
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["table", *t.headers])
            writer.writerows([t.title, *row] for row in t.rows)
            parts.append(buf.getvalue())
            continue
        head = f"### {t.title}\n\n" if fmt == "github" else f"{t.title}\n\n"
        note = f"\n\n{t.note}" if t.note else ""
        parts.append(head + tabulate(t.rows, t.headers, tablefmt=fmt, disable_numparse=True) + note)
    return ("\n\n" if fmt != "csv" else "").join(parts) + "\n"


def run_header(run: dict) -> str:
    """What a reader needs before the tables: device, profile, threads, peaks, versions."""
    meta, machine = run["lora_bench"], run.get("machine_info", {})
    lb = machine.get("lora_bench", {})
    lines = [
        f"# lora-bench results: {meta['device']}, profile {meta['profile']}",
        "",
        f"- date: {run.get('datetime', '?')}",
        f"- device: {lb.get('device_name', '?')}",
        f"- torch {lb.get('torch', '?')}, threads {meta.get('threads', '?')}, "
        f"TF32 {'on' if meta.get('tf32') else 'off'}",
    ]
    for key, start in meta.get("peaks_start", {}).items():
        end = meta.get("peaks_end", {}).get(key)
        after = f" -> {end['gemm_gflops']:.0f} / {end['copy_gbs']:.1f}" if end else ""
        lines.append(
            f"- peaks {key}: GEMM GFLOP/s / copy GB/s at start "
            f"{start['gemm_gflops']:.0f} / {start['copy_gbs']:.1f}{after} at end"
        )
    return "\n".join(lines) + "\n"


def run_markdown(run: dict) -> str:
    return run_header(run) + "\n" + render(run_tables(run), "github")
