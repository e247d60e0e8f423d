"""One self-contained HTML page of a run (or of two runs compared): the run's header, every
table, and its paired ratios drawn inline as SVG with their 95% CIs as error bars. No script,
no stylesheet or font from elsewhere: the page needs no network to be read. Torch-free."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any

from bench.report.base import Table
from bench.report.figures import time_index
from bench.schema.entries import Paired, UserModelEntry
from bench.schema.run import Run

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222 }
h1 { font-size: 1.6em } h2 { font-size: 1.2em; margin-top: 2em }
table { border-collapse: collapse; margin: .5em 0; font-size: 12px }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top }
td { max-width: 40em } section { overflow-x: auto }
th { background: #f3f3f3 } .note { color: #555; font-size: 12px; max-width: 70em }
code { background: #f3f3f3; padding: 0 3px } figure { margin: 1em 0 }
figcaption { color: #555; font-size: 12px } svg text { font: 11px system-ui, sans-serif }
"""
ROW_PX, LEFT_PX, PLOT_PX, PAD_PX = 18, 360, 420, 30
COLOURS = ("#1f77b4", "#d62728")  # run A, run B


@dataclass(frozen=True)
class Point:
    """One ratio with its 95% CI, drawn as a dot with an error bar."""

    label: str
    ratio: float
    low: float
    high: float


@dataclass(frozen=True)
class Figure:
    """A dot plot of ratios against 1: rows of one or two series (two runs compared)."""

    title: str
    axis: str  # what the ratio is over
    rows: list[tuple[str, list[Point | None]]]  # row label, a point per series (None: absent)
    series: tuple[str, ...] = ("",)


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in t.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in t.rows
    )
    note = f'<p class="note">{_inline(t.note)}</p>' if t.note else ""
    return (f"<section><h2>{html.escape(t.title)}</h2><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}</section>")  # fmt: skip


def point(label: str, rounds: Paired) -> Point:
    lo, hi = rounds.ratio_ci
    return Point(label, rounds.ratio, lo, hi)


def svg(fig: Figure) -> str:
    """The figure as inline SVG: a log-scaled ratio axis, a line at 1, each row's points with
    their CIs; rows whose CI reaches past the axis are clipped at its ends, and said so."""
    values = [v for _, pts in fig.rows for p in pts if p for v in (p.low, p.high, p.ratio)]
    lo = min([1.0, *values]) / 1.02
    hi = max([1.0, *values]) * 1.02
    span = math.log(hi) - math.log(lo)

    def x(v: float) -> float:
        v = min(max(v, lo), hi)
        return LEFT_PX + PLOT_PX * (math.log(v) - math.log(lo)) / span

    height = PAD_PX * 2 + ROW_PX * len(fig.rows)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{LEFT_PX + PLOT_PX + 20}" '
             f'height="{height}" role="img" aria-label="{html.escape(fig.title)}">']  # fmt: skip
    one = x(1.0)
    parts.append(f'<line x1="{one:.1f}" y1="{PAD_PX - 8}" x2="{one:.1f}" y2="{height - PAD_PX}" '
                 'stroke="#999" stroke-dasharray="4 3"/>')  # fmt: skip
    ends = [t for t in (lo * 1.02, hi / 1.02) if abs(x(t) - one) > 40]  # none atop 1's label
    for tick in (1.0, *ends):
        parts.append(f'<text x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle">'
                     f"{tick:.3f}</text>")  # fmt: skip
    for i, (label, pts) in enumerate(fig.rows):
        y = PAD_PX + ROW_PX * i + ROW_PX / 2
        parts.append(f'<text x="{LEFT_PX - 8}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{html.escape(label)}</text>")  # fmt: skip
        for k, p in enumerate(pts):
            if p is None:
                continue
            dy = (k - (len(pts) - 1) / 2) * 5
            colour = COLOURS[k % len(COLOURS)]
            parts.append(
                f'<line x1="{x(p.low):.1f}" y1="{y + dy:.1f}" x2="{x(p.high):.1f}" '
                f'y2="{y + dy:.1f}" stroke="{colour}" stroke-width="1.5"/>'
                f'<circle cx="{x(p.ratio):.1f}" cy="{y + dy:.1f}" r="3" fill="{colour}">'
                f"<title>{html.escape(p.label)}: {p.ratio:.3f} [{p.low:.3f}, {p.high:.3f}]"
                "</title></circle>"
            )
    parts.append("</svg>")
    legend = " · ".join(
        f'<span style="color:{COLOURS[k % 2]}">● {html.escape(s)}</span>'
        for k, s in enumerate(fig.series) if s
    )  # fmt: skip
    caption = (f"{html.escape(fig.axis)}: each dot the ratio, its bar the 95% CI (log scale; "
               f"the dashed line is 1). {legend}")  # fmt: skip
    return (f"<figure><h3>{html.escape(fig.title)}</h3>{''.join(parts)}"
            f"<figcaption>{caption}</figcaption></figure>")  # fmt: skip


def _label(e: Any) -> str:
    """A figure row's label: the case and what ran (a `lora-bench model` entry: the variant,
    and the compiled frozen model's link said as what it is)."""
    if isinstance(e, UserModelEntry):
        if e.variant == "frozen":
            return "frozen compiled (over frozen eager)"
        return e.label + (f" n={e.adapters}" if e.adapters > 1 else "")
    return f"{e.key} · {getattr(e, 'impl', None) or e.variant}"


def run_figures(run: Run) -> list[Figure]:
    """The run's paired ratios by family and mode: layer impls over base, whole-model and
    generation variants over the frozen model, multi-adapter impls over base."""
    families: list[tuple[str, list, str]] = [
        ("Ratio to the base GEMM", run.times(), "mode"),
        ("Your model, over the frozen model", run.user_model(), "phase"),
        ("Generation, over the frozen model", run.generation(), "phase"),
        ("Whole model, over the frozen model", run.models(), "mode"),
        ("Multi-adapter batch, over the base GEMM", run.multi(), ""),
    ]
    groups: dict[tuple[str, str], list[tuple[str, Paired]]] = {}
    for title, entries, mode in families:
        for e in entries:
            key = (title, getattr(e, mode) if mode else "infer")
            groups.setdefault(key, []).append((_label(e), e.rounds))
    return [
        Figure(f"{title} ({mode})", title.split(", ")[-1],
               [(label, [point(label, r)]) for label, r in items])
        for (title, mode), items in groups.items()
    ]  # fmt: skip


def compare_figures(a: Run, b: Run, labels: tuple[str, str]) -> list[Figure]:
    """Per mode, each (case, impl) both runs timed: A's ratio to its own base and B's, side by
    side, each with its 95% CI."""
    old, new = time_index(a), time_index(b)
    modes: dict[str, list[tuple[str, list[Point | None]]]] = {}
    for key, impl, mode in sorted(old.keys() & new.keys()):
        label = f"{key} · {impl}"
        pts: list[Point | None] = [point(label, old[(key, impl, mode)].rounds),
                                   point(label, new[(key, impl, mode)].rounds)]  # fmt: skip
        modes.setdefault(mode, []).append((label, pts))
    return [Figure(f"Ratio to each run's own base ({mode})", "each run's own base", rows, labels)
            for mode, rows in modes.items()]  # fmt: skip


def page(title: str, header: str, tables: list[Table], figures: list[Figure]) -> str:
    """The whole HTML page: `header` (markdown lines "- ..." and "# ...") as a list, the
    figures, then the tables."""
    items = [line[2:] for line in header.splitlines() if line.startswith("- ")]
    head = "".join(f"<li>{_inline(i)}</li>" for i in items)
    body = "".join(svg(f) for f in figures) + "".join(_table(t) for t in tables if t.rows)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{head}</ul>{body}</body></html>\n"
    )
