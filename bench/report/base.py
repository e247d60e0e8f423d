"""What every table module builds on: the Table, its formatters, and rendering to markdown,
plain text or CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from tabulate import tabulate

MODES_ORDER = ("infer", "train")
MODE_TITLES = {"infer": "forward", "train": "training step"}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: Sequence[Sequence[object]]
    note: str = ""


def fmt_ci(ci: tuple[float, float]) -> str:
    """A ratio's 95% confidence interval: "[1.047, 1.058]"."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def overlap(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Whether two confidence intervals overlap, as a table shows it."""
    return "yes" if max(a[0], b[0]) <= min(a[1], b[1]) else "no"


def fmt_seconds(s: float) -> str:
    """Seconds with a unit a person reads at a glance: 812 µs, 3.41 ms, 1.20 s."""
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bytes(n: float) -> str:
    """Bytes in B, KiB, MiB, GiB or TiB, whichever reads best."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB" if abs(n) >= 2**10 else f"{n:.0f} B"


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
