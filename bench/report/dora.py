"""The DoRA tables of a run: on each case the DoRA impls ran, their paired ratios to the base
layer beside LoRA's on the same case (our best LoRA impl, and PEFT's), so that the price of
DoRA over LoRA reads directly; and their peak memory beside LoRA's and the weight's size."""

from __future__ import annotations

from bench.report.base import MODES_ORDER, Table, fmt_bytes
from bench.report.verdicts import Comparison, versus
from bench.schema.entries import MemoryEntry, TimeEntry
from bench.schema.run import Run

PEFT_LORA, PEFT_DORA = "peft", "peft_dora"


def _cases(entries: list) -> list[tuple[str, str]]:
    """(case, mode) pairs with a DoRA entry, in the order of the run."""
    return list(dict.fromkeys((e.case, e.mode) for e in entries))


def _ours_lora(run: Run, cells: dict, case: str, mode: str) -> tuple[str, float] | None:
    """(impl, value) of our LoRA impl with the lowest value on (case, mode), base left out."""
    mine = [
        (impl, v) for (c, m, impl), v in cells.items()
        if (c, m) == (case, mode) and impl != "base" and run.variant(impl) == "lora"
        and run.impl_info(impl).origin == "ours"
    ]  # fmt: skip
    return min(mine, key=lambda iv: iv[1]) if mine else None


def _ratio(cell: float | None) -> str:
    return "" if cell is None else f"{cell:.3f}"


def _best(run: Run, entries: dict, case: str, mode: str, variant: str) -> TimeEntry | None:
    """Our entry of `variant` with the lowest ratio on (case, mode), base left out."""
    mine = [e for (c, m, impl), e in entries.items()
            if (c, m) == (case, mode) and impl != "base" and run.variant(impl) == variant
            and run.impl_info(impl).origin == "ours"]  # fmt: skip
    return min(mine, key=lambda e: e.ratio_to_base, default=None)


def _quotients(run: Run, case: str, mode: str) -> list[Comparison | None]:
    """Our DoRA over our LoRA, PEFT's DoRA over PEFT's LoRA, PEFT's DoRA over our DoRA."""
    entries = {(e.case, e.mode, e.impl): e for e in run.times()}
    ours = (_best(run, entries, case, mode, "dora"), _best(run, entries, case, mode, "lora"))
    peft = (entries.get((case, mode, PEFT_DORA)), entries.get((case, mode, PEFT_LORA)))
    pairs = [("our best DoRA vs our best LoRA", *ours), ("peft_dora vs peft", *peft),
             ("peft_dora vs our best DoRA", peft[0], ours[0])]  # fmt: skip
    return [None if a is None or b is None else versus(f"dora {case} {mode}: {label}",
                                                       a.rounds, b.rounds)
            for label, a, b in pairs]  # fmt: skip


def dora_comparisons(run: Run) -> list[Comparison]:
    dora = [e for e in run.times() if run.variant(e.impl) == "dora"]
    return [q for case, mode in _cases(dora) for q in _quotients(run, case, mode) if q]


def dora_ratio_table(run: Run) -> Table:
    times: list[TimeEntry] = sorted(run.times(), key=lambda e: MODES_ORDER.index(e.mode))
    dora = [e for e in times if run.variant(e.impl) == "dora"]
    cells = {(e.case, e.mode, e.impl): e.ratio_to_base for e in times}
    impls = sorted({e.impl for e in dora}, key=run.impl_rank)
    rows = []
    for case, mode in _cases(dora):
        lora = _ours_lora(run, cells, case, mode)
        rows.append(
            [case, mode, "" if lora is None else f"{lora[0]} {lora[1]:.3f}",
             _ratio(cells.get((case, mode, PEFT_LORA)))]
            + [_ratio(cells.get((case, mode, i))) for i in impls]
            + ["" if q is None else q.cell() for q in _quotients(run, case, mode)]
        )  # fmt: skip
    headers = ["case", "mode", "LoRA: our best", "LoRA: peft", *impls,
               "our DoRA / our LoRA", "peft_dora / peft", "peft_dora / our DoRA"]  # fmt: skip
    return Table(
        "DoRA: ratio to base",
        headers,
        rows,
        "paired rounds impl / the frozen base layer (infer: its forward; train: its forward "
        "and dx), LoRA's impls on the same case beside DoRA's. our DoRA / our LoRA = the price "
        "of DoRA: our best DoRA impl over our best LoRA impl. Each quotient has the 95% CI of "
        "its two ratios together; unresolved where the CI holds 1: the run cannot tell the two "
        "apart",
    )


def dora_memory_table(run: Run) -> Table:
    items: list[MemoryEntry] = sorted(run.memory(), key=lambda e: MODES_ORDER.index(e.mode))
    dora = [e for e in items if run.variant(e.impl) == "dora"]
    cells = {(e.case, e.mode, e.impl): e.peak_bytes for e in items}
    impls = sorted({e.impl for e in dora}, key=run.impl_rank)
    weight = {e.case: e for e in run.times()}
    rows = []
    for case, mode in _cases(dora):
        lora = _ours_lora(run, cells, case, mode)
        w = weight.get(case)
        size = "" if w is None else fmt_bytes(w.in_features * w.out_features * _itemsize(w.dtype))
        peft = cells.get((case, mode, PEFT_LORA))
        rows.append(
            [case, mode, size, "" if lora is None else f"{lora[0]} {fmt_bytes(lora[1])}",
             "" if peft is None else fmt_bytes(peft)]
            + ["" if (case, mode, i) not in cells else fmt_bytes(cells[(case, mode, i)])
               for i in impls]
        )  # fmt: skip
    method = dora[0].method if dora else ""
    return Table(
        "DoRA: peak memory",
        ["case", "mode", "W (out×in)", "LoRA: our least", "LoRA: peft", *impls],
        rows,
        f"{method}, above the inputs and weights. A peak of W's size or more is an out×in "
        "temporary (W + s·B A, PEFT's; or a merged copy, by design)",
    )


def _itemsize(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def dora_tables(run: Run) -> list[Table]:
    return [dora_ratio_table(run), dora_memory_table(run)]
