"""The "generation" tables of a run: each variant's time to first token and time per output
token as paired ratios to the frozen model, and the answer to the users' question: decode
tokens/s with an adapter against the frozen model's, and which variant closes the gap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.report.base import Table, fmt_bytes, fmt_ci
from bench.report.verdicts import Comparison, versus
from bench.schema.entries import GenerationEntry
from bench.schema.run import Run


@dataclass(frozen=True)
class Variant:
    """A variant's two phases on one case."""

    prefill: GenerationEntry | None
    decode: GenerationEntry | None

    @property
    def any(self) -> GenerationEntry:
        entry = self.decode or self.prefill
        assert entry is not None
        return entry


def variants(run: Run) -> dict[str, dict[str, Variant]]:
    """{case key: {variant: its phases}}, in the order the run measured them."""
    phases: dict[tuple[str, str], dict[str, GenerationEntry]] = {}
    for e in run.generation():
        phases.setdefault((e.case, e.variant), {})[e.phase] = e
    out: dict[str, dict[str, Variant]] = {}
    for (case, variant), by in phases.items():
        out.setdefault(case, {})[variant] = Variant(by.get("prefill"), by.get("decode"))
    return out


def _ms(e: GenerationEntry | None) -> str:
    return f"{1e3 * e.per_step_s:.2f}" if e else "-"


def _ratio(e: GenerationEntry | None) -> str:
    return f"{e.ratio_to_base:.3f}" if e else "-"


def _ci(e: GenerationEntry | None) -> str:
    return fmt_ci(e.rounds.ratio_ci) if e else "-"


def detail_table(run: Run) -> Table:
    headers = ["case", "variant", "TTFT ms", "x frozen", "95% CI", "TPOT ms", "x frozen",
               "95% CI", "decode tokens/s", "memory", "tokens = ref", "err vs ref"]  # fmt: skip
    rows: list[list[object]] = []
    for case, by in variants(run).items():
        for name, v in by.items():
            e = v.any
            rows.append([case, name, _ms(v.prefill), _ratio(v.prefill), _ci(v.prefill),
                         _ms(v.decode), _ratio(v.decode), _ci(v.decode),
                         f"{v.decode.tokens_per_s:,.0f}" if v.decode else "-",
                         fmt_bytes(e.peak_bytes), f"{e.tokens_equal:.0%} of {e.reference}",
                         f"{e.rel_error:.1e}"])  # fmt: skip
    methods = "; ".join(sorted({e.memory_method for e in run.generation()}))
    note = (
        "Greedy decoding with the KV cache. TTFT: the prompt's forward to the first token; "
        "TPOT: one forward of the decode that follows, from a copy of the prompt's cache. "
        "x frozen: median of per-pair ratios to the frozen model (no adapter) running the same "
        "phase, in the same interleaved rounds of whole generations. tokens = ref: the share "
        "of generated token ids equal to PEFT's greedy choice after the same prefix (one "
        "teacher-forced forward of PEFT's model; the frozen model's loop is checked equal to "
        "transformers' generate); err: the variant's teacher-forced logits against PEFT's. "
        f"Memory: {methods}"
    )
    return Table("Generation", headers, rows, note)


def _best(by: dict[str, Variant], keep: Callable[[GenerationEntry], bool]) -> str | None:
    """The kept variant with the smallest decode ratio, or None."""
    kept = {n: v.decode for n, v in by.items() if v.decode and keep(v.decode)}
    return min(kept, key=lambda n: kept[n].ratio_to_base) if kept else None


def _frozen_tokens_per_s(by: dict[str, Variant]) -> float | None:
    """The frozen model's decode tokens/s: the median over the case's paired decodes."""
    rates = sorted(e.tokens / e.rounds.base_median_s for v in by.values() if (e := v.decode))
    return rates[len(rates) // 2] if rates else None


def _picks(by: dict[str, Variant]) -> list[tuple[str, str | None]]:
    """(question, variant) rows of one case: PEFT's forms, then our best of each kind."""

    def peer(name: str) -> str | None:
        return name if name in by else None

    def ours(reference: str, merged: bool | None) -> str | None:
        return _best(by, lambda e: e.origin == "ours" and e.reference == reference
                     and (merged is None or e.merged == merged))  # fmt: skip

    if next(iter(by.values())).any.adapters > 1:
        return [("PEFT mixed batch", peer("peft_mixed")), ("ours, best", ours("peft_mixed", None))]
    return [
        ("PEFT unmerged", peer("peft")),
        ("PEFT merged", peer("peft_merged")),
        ("ours, best unmerged", ours("peft", False)),
        ("ours, best merged", ours("peft", True)),
        ("PEFT DoRA", peer("peft_dora")),
        ("ours DoRA, best unmerged", ours("peft_dora", False)),
        ("ours DoRA, best merged", ours("peft_dora", True)),
    ]


# (question, against): each of our variants' decode against PEFT's of the same kind, and our
# DoRA against our LoRA
AGAINST = {
    "ours, best unmerged": "PEFT unmerged",
    "ours, best merged": "PEFT merged",
    "ours DoRA, best unmerged": "PEFT DoRA",
    "ours DoRA, best merged": "PEFT DoRA",
    "ours, best": "PEFT mixed batch",
}
DORA_VS_LORA = ("ours DoRA, best unmerged", "ours, best unmerged")


def _verdicts(case: str, by: dict[str, Variant]) -> dict[str, Comparison]:
    """Per question of the case, its decode time against what it answers to (AGAINST), and
    our DoRA against our LoRA under "DoRA vs LoRA"."""
    named = {q: by[n].decode for q, n in _picks(by) if n is not None and by[n].decode}
    wanted = {q: (q, other) for q, other in AGAINST.items()}
    wanted["DoRA vs LoRA"] = DORA_VS_LORA
    out = {}
    for key, (a, b) in wanted.items():
        ea, eb = named.get(a), named.get(b)
        if ea is not None and eb is not None:
            out[key] = versus(f"generation {case}: {a} vs {b}", ea.rounds, eb.rounds)
    return out


def generation_comparisons(run: Run) -> list[Comparison]:
    return [c for case, by in variants(run).items() for c in _verdicts(case, by).values()]


def gap_table(run: Run) -> Table:
    """Per case, the users' question: decode tokens/s as a share of the frozen model's, and
    each of ours against PEFT's."""
    headers = ["case", "question", "variant", "decode tokens/s", "x frozen tokens/s",
               "TTFT x frozen", "decode tokens/s against"]  # fmt: skip
    rows: list[list[object]] = []
    for case, by in variants(run).items():
        frozen = _frozen_tokens_per_s(by)
        if frozen:
            rows.append([case, "frozen model", "-", f"{frozen:,.0f}", "1.000", "1.000", ""])
        verdicts = _verdicts(case, by)
        for question, name in [(q, n) for q, n in _picks(by) if n is not None]:
            v = by[name]
            d = v.decode
            speed = f"{1 / d.ratio_to_base:.3f}" if d else "-"
            versus_cell = ""
            if question in verdicts:
                versus_cell = f"{AGAINST[question]}: {verdicts[question].speed_cell()}"
            rows.append([case, question, name, f"{d.tokens_per_s:,.0f}" if d else "-", speed,
                         _ratio(v.prefill), versus_cell])  # fmt: skip
        if "DoRA vs LoRA" in verdicts:
            cell = f"{DORA_VS_LORA[1]}: {verdicts['DoRA vs LoRA'].speed_cell()}"
            rows.append([case, "our DoRA against our LoRA", "", "", "", "", cell])
    note = (
        "x frozen tokens/s = 1 / (the decode's paired ratio): 0.90 means 10% fewer tokens a "
        "second than the frozen model. Best: the variant of ours with the lowest decode ratio "
        "in this run; merged variants fold the adapter into W (one adapter only). Against: "
        "decode tokens/s over those of the variant named, x1.10 = 10% more, with the 95% CI "
        "of the two paired ratios together; unresolved where the CI holds 1: the run cannot "
        "tell the two apart at its budget."
    )
    return Table("Generation: decode speed against the frozen model", headers, rows, note)


def generation_tables(run: Run) -> list[Table]:
    if not run.generation():
        return []
    return [gap_table(run), detail_table(run)]
