"""The tables of a `lora-bench model` run: what the adapter costs on the user's model, the
verdict per use (which variant to run, what it buys, the figures behind it), each variant's
figures, the adapter's load and merge, and what ran. A difference is stated only where the 95%
CI of the two paired ratios together leaves out 1 (bench.report.verdicts); otherwise the
verdict says the two cannot be told apart at this budget, and about how long would tell."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

from bench.report.base import Table, fmt_bytes, fmt_ci, render
from bench.report.verdicts import Comparison, versus
from bench.schema.entries import UserModelEntry, UserModelInfo
from bench.schema.run import Run
from bench.stats.setups import t975

PEFT, PEFT_MIXED, FROZEN = "peft", "peft_mixed", "frozen"
TOLD_APART_CAP = 100  # past this many times the budget, a difference is not worth resolving


def by_phase(run: Run, mixed: bool = False) -> dict[str, dict[str, UserModelEntry]]:
    """{phase: {variant label: entry}} of one adapter for the batch (or, `mixed`, of a batch
    whose sequences take several), in the order the run timed them; the compiled frozen
    model's link to the eager one left out (`link`)."""
    out: dict[str, dict[str, UserModelEntry]] = {}
    for e in run.user_model():
        if (e.adapters > 1) == mixed and e.variant != FROZEN:
            out.setdefault(e.phase, {})[e.label] = e
    return out


def _cost(e: UserModelEntry | None) -> str:
    """ "+12.3% [+10.1, +14.2]" over the frozen model, or "-"."""
    if e is None:
        return "-"
    lo, hi = e.rounds.ratio_ci
    return f"{100 * (e.ratio_to_base - 1):+.1f}% [{100 * (lo - 1):+.1f}, {100 * (hi - 1):+.1f}]"


def _best(entries: dict[str, UserModelEntry], merged: bool | None, ours: bool = True,
          compiled: bool = False) -> UserModelEntry | None:  # fmt: skip
    kept = [e for e in entries.values() if (not ours or e.origin == "ours")
            and (merged is None or e.merged == merged) and e.compiled == compiled]  # fmt: skip
    return min(kept, key=lambda e: e.ratio_to_base) if kept else None


def cost_table(run: Run) -> Table:
    """Per phase: the adapter's cost over the frozen model with PEFT as it is, the best of
    ours unmerged, merged (PEFT's merge or ours, whichever is faster), and compiled whole
    (the fastest variant, over the compiled frozen model) where the run compiled."""
    phases = by_phase(run)
    headers = ["per", "PEFT as it is", "best of ours, unmerged", "merged", "compiled",
               "frozen model"]  # fmt: skip
    rows: list[list[object]] = []
    names = {"prefill": "prompt (time to first token)", "decode": "output token",
             "denoise": "denoising step", "train": "training step"}  # fmt: skip
    for phase, label in names.items():
        entries = phases.get(phase)
        if not entries:
            continue
        ours, merged = _best(entries, False), _best(entries, True, ours=False)
        compiled = _best(entries, None, ours=False, compiled=True)
        eager = [e for e in entries.values() if not e.compiled]
        frozen = statistics.median(e.rounds.base_median_s / e.steps for e in eager)
        rows.append([label, _cost(entries.get(PEFT)), _named(ours), _named(merged),
                     _named(compiled), _ms(frozen)])  # fmt: skip
    mixed = by_phase(run, mixed=True).get("decode")
    if mixed:
        n = next(iter(mixed.values())).adapters
        frozen = statistics.median(e.rounds.base_median_s / e.steps for e in mixed.values())
        rows.append([f"output token, {n} adapters in one batch", _cost(mixed.get(PEFT_MIXED)),
                     _named(_best(mixed, False)), "-", "-", _ms(frozen)])  # fmt: skip
    note = ("The adapter's cost: each variant's time over the frozen model's (the same model "
            "with no adapter) in paired rounds, with its 95% CI. Merged variants fold the "
            "adapter into the weights: one adapter, no switching, nothing to train. Compiled: "
            "the fastest variant compiled whole, over the frozen model compiled alike; frozen "
            "model: its eager time.")  # fmt: skip
    return Table("Your model: what the adapter costs", headers, rows, note)


def _named(e: UserModelEntry | None) -> str:
    return "-" if e is None else f"{_cost(e)} ({e.variant})"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def link(run: Run, phase: str) -> UserModelEntry | None:
    """The compiled frozen model timed in pairs with the eager one, at `phase`."""
    return next((e for e in run.user_model() if e.variant == FROZEN and e.phase == phase), None)


def _against(a: UserModelEntry, b: UserModelEntry, run: Run) -> Comparison:
    """a's time per step over b's, each a paired ratio to its own frozen model. Where one is
    compiled and the other not, the compiled frozen model's paired ratio to the eager one
    joins the chain (a / frozen_c x frozen_c / frozen_e over b / frozen_e), its CI with
    theirs: every figure in it was timed in pairs."""
    if a.compiled == b.compiled:
        return versus(f"{a.label} vs {b.label}", a.rounds, b.rounds)
    bridge = link(run, a.phase)
    if bridge is None:
        raise ValueError(f"{a.label} and {b.label}: no compiled frozen model to link them")
    up, down = ([a, bridge], [b]) if a.compiled else ([a], [b, bridge])
    sums = [e.rounds.summary for e in up + down]
    d = sum(math.log(e.rounds.ratio) for e in up) - sum(math.log(e.rounds.ratio) for e in down)
    half = t975(min(s.df for s in sums)) * math.sqrt(sum(s.log_se**2 for s in sums))
    return Comparison(f"{a.label} vs {b.label}", math.exp(d), math.exp(d - half),
                      math.exp(d + half))  # fmt: skip


def seconds_to_tell(c: Comparison, spent_s: float) -> float:
    """About how many seconds of paired rounds a side would resolve `c` at its measured
    difference (the CI narrows as one over the root of the rounds), never under twice what
    was spent (a CI of few pairs is wide for its t quantile too); inf for no difference."""
    effect = abs(math.log(c.quotient))
    half = (math.log(c.high) - math.log(c.low)) / 2
    return math.inf if effect < 1e-6 else max(2 * spent_s, spent_s * (half / effect) ** 2)


def _choice(run: Run, label: str, entries: dict[str, UserModelEntry], phase: str,
            seconds: float, reference: str = PEFT) -> list[object]:  # fmt: skip
    """One verdict row: the fastest variant of the phase against PEFT's (`reference`)."""
    peft = entries.get(reference)
    best = min(entries.values(), key=lambda e: e.ratio_to_base)
    what = {"decode": "per output token", "denoise": "per denoising step"}.get(
        phase, "per training step"
    )
    if peft is None:
        return [label, best.variant, "PEFT was not timed", _cost(best)]
    if best.variant == reference:
        others = [e for e in entries.values() if e.variant != reference]
        if not others:
            return [label, reference, "only PEFT runs this model here", _cost(peft)]
        best = min(others, key=lambda e: e.ratio_to_base)
    c = _against(best, peft, run)
    figures = f"{best.label} {_cost(best)}; {reference} {_cost(peft)}; x frozen"
    if c.resolved and c.quotient < 1:
        how = " and ".join(["merge it"] * best.merged + ["compile it whole"] * best.compiled) \
            or "run it"  # fmt: skip
        return [label, best.label, f"{how}: {c.speed_cell()} {what} over PEFT", figures]
    if c.resolved:
        return [label, reference, f"PEFT as it is: every variant of ours timed is slower {what} "
                f"(the fastest, {best.label}, {c.speed_cell()})", figures]  # fmt: skip
    need = seconds_to_tell(c, seconds)
    tell = f"about {need:.{0 if need >= 10 else 1}f} s of rounds a side would tell"
    if need > TOLD_APART_CAP * seconds:
        tell = f"no difference worth resolving (more than {TOLD_APART_CAP}x this budget)"
    return [label, f"{best.label} or {reference}",
            f"cannot be told apart at this budget ({c.speed_cell()}); {tell}", figures]  # fmt: skip


def verdict_table(run: Run) -> Table:
    """Per use: which variant to run and what it buys over PEFT, with the figures behind it."""
    phases, info = by_phase(run), run.user_model_info()
    seconds = info.seconds if info else 1.0
    rows: list[list[object]] = []
    if "decode" in phases:
        rows.append(_choice(run, "one adapter served", phases["decode"], "decode", seconds))
    if "denoise" in phases:
        rows.append(_choice(run, "one adapter served (denoising)", phases["denoise"], "denoise",
                            seconds))  # fmt: skip
    mixed = by_phase(run, mixed=True).get("decode")
    if mixed:
        n = next(iter(mixed.values())).adapters
        rows.append(_choice(run, f"{n} adapters served in one batch", mixed, "decode", seconds,
                            PEFT_MIXED))  # fmt: skip
    elif info is None or info.model_kind != "unet":  # a UNet is measured one adapter a call
        rows.append(["many adapters served", "-", "not measured: add --adapters N", "-"])
    if "train" in phases:
        row = _choice(run, "training", phases["train"], "train", seconds)
        peft, pick = phases["train"].get(PEFT), phases["train"].get(str(row[1]))
        if peft and pick and pick is not peft:
            row[3] = f"{row[3]}; peak {fmt_bytes(pick.peak_bytes)} against PEFT's " \
                f"{fmt_bytes(peft.peak_bytes)}"  # fmt: skip
        rows.append(row)
    note = ("A variant is named faster only where the 95% CI of its ratio over PEFT's leaves "
            "out 1; x1.07 = 7% faster. The seconds that would tell assume the difference "
            "measured here.")  # fmt: skip
    return Table("Your model: verdict", ["use", "choose", "what it buys", "figures"], rows, note)


def _vs_peft(run: Run, e: UserModelEntry, peft: UserModelEntry | None) -> str:
    if peft is None or e is peft:
        return "-"
    return _against(e, peft, run).speed_cell()


def generation_table(run: Run, mixed: bool = False) -> Table:
    phases = by_phase(run, mixed)
    pre, dec = phases.get("prefill", {}), phases.get("decode", {})
    ref = PEFT_MIXED if mixed else PEFT
    headers = ["variant", "TTFT ms", "x frozen", "TPOT ms", "x frozen", "95% CI",
               "decode tokens/s", f"against {ref}", "memory", f"tokens = {ref}",
               f"err vs {ref}"]  # fmt: skip
    rows = []
    for name, d in dec.items():
        p = pre.get(name)
        rows.append(
            [
                name,
                f"{1e3 * p.per_step_s:.2f}" if p else "-",
                f"{p.ratio_to_base:.3f}" if p else "-",
                f"{1e3 * d.per_step_s:.2f}",
                f"{d.ratio_to_base:.3f}",
                fmt_ci(d.rounds.ratio_ci),
                f"{d.batch / d.per_step_s:,.1f}",
                _vs_peft(run, d, dec.get(ref)),
                fmt_bytes(d.peak_bytes),
                f"{d.tokens_equal:.0%}",
                f"{d.rel_error:.1e}",
            ]
        )
    note = ("Greedy decoding with the KV cache, whole generations timed in pairs with the "
            "frozen model's. TTFT: the prompt to the first token; TPOT: each later token. "
            f"against {ref}: decode tokens/s over PEFT's (x1.10 = 10% more). tokens = {ref}: "
            "the share of greedy tokens equal to PEFT's choice after the same prefix; err: "
            "teacher-forced logits against PEFT's.")  # fmt: skip
    if not mixed:
        return Table("Your model: generation", headers, rows, note)
    n = next(iter(dec.values())).adapters if dec else 0
    note += (f" Each sequence takes one of {n} adapters (Zipf-drawn, some the base model "
             "alone): PEFT's adapter_names, ours multi_from_peft and adapter_batch.")  # fmt: skip
    return Table(f"Your model: {n} adapters in one batch", headers, rows, note)


def step_table(run: Run, phase: str) -> Table:
    """Each variant's call of `phase` ("train", or a UNet's "denoise") against the frozen
    model's and PEFT's."""
    steps = by_phase(run).get(phase, {})
    headers = ["variant", "step ms", "x frozen", "95% CI", "against peft", "peak",
               "trainable", "err vs peft"]  # fmt: skip
    rows = [[name, f"{1e3 * e.per_step_s:.2f}", f"{e.ratio_to_base:.3f}",
             fmt_ci(e.rounds.ratio_ci), _vs_peft(run, e, steps.get(PEFT)), fmt_bytes(e.peak_bytes),
             f"{e.trainable:,}", f"{e.rel_error:.1e}"] for name, e in steps.items()]  # fmt: skip
    methods = "; ".join(sorted({e.memory_method for e in steps.values()}))
    if phase == "denoise":
        note = ("A denoising call of the UNet (latents, a timestep, text states) without "
                "autograd, timed in pairs with the frozen UNet's. fused: diffusers' fuse_lora; "
                "merged: ours, merge(); linear/conv: our impls of the unmerged layers. err: the "
                f"noise prediction against PEFT's. Peak: {methods}.")  # fmt: skip
        return Table("Your model: denoising step", headers, rows, note)
    note = ("A step: forward, the loss (cross-entropy; a UNet's noise-prediction MSE), "
            "backward and AdamW on the adapter, timed in pairs with the frozen model's forward "
            "and backward. err: the output and the LoRA gradients against PEFT's. Peak: "
            f"{methods}.")  # fmt: skip
    return Table("Your model: training step", headers, rows, note)


def lifecycle_table(info: UserModelInfo) -> Table:
    rows = []
    for op, times in (("load", info.load_s), ("merge", info.merge_s)):
        for who, seconds in times.items():
            rows.append([op, who, _ms(statistics.median(seconds)), len(seconds)])
    note = (
        "load: the adapter folder read onto a model that holds LoRA layers (PEFT's "
        "load_adapter; ours lora_kernels.load_adapter). merge: into a copy of the weights "
        "(PEFT's merge_and_unload, or on a UNet diffusers' fuse_lora; ours "
        "lora_kernels.merge). Median of the repeats."
    )
    return Table("Your model: adapter load and merge", ["op", "by", "median", "repeats"], rows,
                 note)  # fmt: skip


def facts_table(info: UserModelInfo) -> Table:
    rows: list[list[object]] = [
        ["model", info.model_source],
        ["adapter", f"{info.adapter_source}; {info.adapted_layers} adapted layers"],
        ["memory plan", f"{fmt_bytes(info.estimate_bytes)} estimated, "
                        f"{fmt_bytes(info.free_bytes)} free"],
        ["budget", f"{info.seconds:g} s of paired rounds a variant"],
    ]  # fmt: skip
    if info.blocks < info.total_blocks:
        rows.append(["blocks", f"the first {info.blocks} of {info.total_blocks}: every figure "
                     "is of this part of the model"])  # fmt: skip
    rows += [["not timed", line] for line in info.screened]
    rows += [["note", line] for line in info.notes]
    return Table("Your model: what ran", ["", ""], rows)


VERDICT_TABLES = ("Your model: what the adapter costs", "Your model: verdict")


def verdict_excerpt(run: Run) -> str:
    """The cost and verdict tables as plain text without their notes: what the README quotes
    of the committed run (tests/test_readme.py keeps the two equal)."""
    tables = [replace(t, note="") for t in user_model_tables(run) if t.title in VERDICT_TABLES]
    return render(tables, "plain").strip()


def user_model_tables(run: Run) -> list[Table]:
    """Every non-empty table of a `lora-bench model` run, the cost and the verdict first."""
    if not run.user_model():
        return []
    info = run.user_model_info()
    tables = [cost_table(run), verdict_table(run), generation_table(run),
              generation_table(run, mixed=True), step_table(run, "denoise"),
              step_table(run, "train")]  # fmt: skip
    if info is not None:
        tables += [lifecycle_table(info), facts_table(info)]
    return [t for t in tables if t.rows]
