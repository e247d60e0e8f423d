"""The generation and lifecycle benches' pieces: their cases and variants per profile, the
greedy loop against transformers' generate, the phase clocks, the entries' round trip through
a results file, the tables, and what the reader refuses."""

from __future__ import annotations

import json

import pytest
import torch
from peft_models import needs_peft
from runs import make_run

from bench.families.generation import (
    GenCase,
    decoder,
    gen_jobs,
    gen_variants,
    hf_tokens,
    kind_of,
    peft_lora,
    peft_mixed,
)
from bench.families.lifecycle import life_jobs
from bench.report.generation import generation_comparisons, generation_tables
from bench.report.lifecycle import lifecycle_tables
from bench.schema.entries import GenerationEntry, LifecycleEntry, Paired
from bench.schema.run import Run, dump_run, parse_run

TINY = GenCase("llama-tiny", 3, 8, 5, 1, 16, 0, "fp32", "cpu")


def test_quick_cases_are_the_issues_and_full_runs_every_variant() -> None:
    quick = gen_jobs("quick", ["cpu"])
    assert {str(j.case) for j in quick} == {
        "llama-cpu B=1 prompt=128 new=32 n=1 r=16 fp32 cpu",
        "llama-cpu B=8 prompt=128 new=32 n=4 r=mixed fp32 cpu",
    }
    assert [j.variant for j in quick] == ["peft", "peft_merged", "addmm", "dora_cached",
                                          "peft_mixed", "segments"]  # fmt: skip
    full = gen_jobs("full", ["cpu"])
    single = [j.variant for j in full if j.case.adapters == 1 and j.case.prompt == 512]
    assert {"peft", "peft_merged", "peft_dora", "two_step", "merged", "dora_merged"} <= set(single)
    assert "cuda_graph" not in single  # CUDA only
    padded = {j.variant for j in full if j.case.r_max == 128}
    assert padded and "peft_mixed" not in padded  # PEFT keeps each adapter at its own rank
    cuda = {str(j.case) for j in gen_jobs("quick", ["cuda"])}
    assert "llama3-8b-2blocks B=1 prompt=512 new=64 n=1 r=16 bf16 cuda" in cuda
    assert [kind_of(v) for v in ("peft_merged", "dora_merged", "peft_dora", "segments")] == [
        "lora", "dora", "dora", "multi"]  # fmt: skip
    assert "peft_mixed" not in gen_variants(GenCase("llama-cpu", 8, 8, 2, 4, 16, 64, "fp32", "cpu"),
                                            None)  # fmt: skip


def test_mixed_batch_names_are_zipf_with_a_base_sequence() -> None:
    names = GenCase("llama-cpu", 8, 128, 32, 4, 16, 0, "fp32", "cpu").names()
    assert len(names) == 8 and None in names
    counts = {n: names.count(n) for n in set(names) if n}
    assert max(counts.values()) >= 2 and set(counts) <= {"a0", "a1", "a2", "a3"}


def test_lifecycle_jobs_grow_with_loaded_adapters() -> None:
    jobs = life_jobs("full", ["cpu"])
    assert sorted({j.case.loaded for j in jobs}) == [1, 4, 16, 64]
    assert {j.op for j in jobs if j.case.loaded == 64} == {"load", "switch", "delete"}
    assert {j.variant for j in jobs} == {"peft", "ours"}
    assert any(j.op == "hotswap" for j in jobs)


@needs_peft
def test_loop_is_generate_and_clocks_both_phases() -> None:
    from bench.families.models import hf_model

    base = hf_model(TINY.model_case)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (TINY.batch, TINY.prompt), generator=gen)
    d = decoder(base, "frozen", TINY, ids)
    with torch.no_grad():
        assert torch.equal(d.generate(), hf_tokens(base, TINY, ids))
    prefill_s, decode_s = d.phases[-1]
    assert prefill_s > 0 and decode_s > 0
    assert d.last_cache is not None
    lora = peft_lora(base, TINY)
    ours = decoder(lora, "peft", TINY, ids)
    assert not torch.equal(ours.generate(), d.generate())  # the adapter changes the tokens
    mixed = GenCase("llama-tiny", 4, 8, 3, 3, 16, 0, "fp32", "cpu")
    model = peft_mixed(base, mixed)
    assert set(model.peft_config) == {"a0", "a1", "a2"}
    ids4 = torch.randint(0, 256, (4, 8), generator=torch.Generator().manual_seed(2))
    assert decoder(model, "peft_mixed", mixed, ids4).generate().shape == (4, 3)


def gen_entry(variant: str, phase: str, ratio: float, **fields: object) -> GenerationEntry:
    case = GenCase("llama-cpu", 1, 128, 32, 1, 16, 0, "fp32", "cpu")
    steps = 1 if phase == "prefill" else 31
    values: dict = dict(
        fullname=f"bench/test_generate.py::test_generate[{variant} {case}]", **case.fields(),
        variant=variant, origin="peer" if variant.startswith("peft") else "ours",
        merged=variant in ("peft_merged", "merged"), reference="peft", phase=phase,
        steps=steps, tokens=128 if phase == "prefill" else 31, tokens_equal=1.0,
        rel_error=1e-7, build_s=0.1, threads=2, peak_bytes=2**20, memory_method="tensors",
        rounds=Paired(1, [ratio * 0.31, ratio * 0.3, ratio * 0.32], [0.31, 0.3, 0.32]),
    )  # fmt: skip
    values.update(fields)
    return GenerationEntry(**values)


def test_generation_entries_round_trip_and_answer_the_question() -> None:
    entries = [gen_entry(v, p, r) for v, r in (("peft", 1.2), ("peft_merged", 1.0),
                                                ("addmm", 1.05), ("merged", 1.01))
               for p in ("prefill", "decode")]  # fmt: skip
    run = Run(make_run().meta, {}, {}, entries)
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.generation() == run.generation()
    gap, detail = generation_tables(back)
    rows = {row[1]: row for row in gap.rows}
    assert rows["PEFT unmerged"][2:5] == ["peft", "83", f"{1 / 1.2:.3f}"]
    assert rows["ours, best unmerged"][2] == "addmm"  # merged is not unmerged
    assert rows["ours, best merged"][2] == "merged"
    assert rows["frozen model"][3] == "100"  # 31 tokens over 0.31 s
    assert detail.rows[0][1:4] == ["peft", "372.00", "1.200"]  # TTFT: the prefill's median
    assert detail.rows[0][5] == "12.00"  # TPOT: 1.2 x 0.31 s over 31 steps
    # pairs without spread: the quotient's CI is a point, so each verdict stands
    assert rows["ours, best unmerged"][6] == "PEFT unmerged: x1.14 [1.14, 1.14]"
    assert rows["ours, best merged"][6] == "PEFT merged: x0.99 [0.99, 0.99]"


def test_a_generation_verdict_the_rounds_cannot_tell_is_unresolved() -> None:
    """Three rounds a variant, each pair 0.9 to 1.3 of the frozen model's time: the quotient's
    CI spans 1, so neither order is stated."""

    def noisy(variant: str, centre: float) -> GenerationEntry:
        base = [0.31, 0.3, 0.32]
        rounds = Paired(1, [b * r for b, r in zip(base, [centre - 0.2, centre, centre + 0.2],
                                                   strict=True)], base)  # fmt: skip
        return gen_entry(variant, "decode", centre, rounds=rounds)

    run = Run(make_run().meta, {}, {}, [noisy("peft", 1.2), noisy("addmm", 1.1)])
    gap, _ = generation_tables(run)
    rows = {row[1]: row for row in gap.rows}
    assert rows["ours, best unmerged"][6].endswith("unresolved")
    (verdict,) = generation_comparisons(run)
    assert verdict.label.endswith(": ours, best unmerged vs PEFT unmerged")
    assert not verdict.resolved


def test_generation_reader_refuses_what_cannot_be() -> None:
    with pytest.raises(ValueError, match="phase must be prefill or decode"):
        gen_entry("peft", "warmup", 1.0)
    with pytest.raises(ValueError, match=r"tokens_equal must be in \[0, 1\]"):
        gen_entry("peft", "decode", 1.0, tokens_equal=1.5)
    with pytest.raises(ValueError, match="steps and tokens must be > 0"):
        gen_entry("peft", "decode", 1.0, steps=0)


def life_entry(variant: str, op: str, loaded: int, **fields: object) -> LifecycleEntry:
    key = f"llama-cpu all-linear r=16 loaded={loaded} fp32"
    values: dict = dict(
        fullname=f"bench/test_lifecycle.py::test_lifecycle[{op} {variant} {key} cpu]",
        case=f"{key} cpu", key=key, model="llama-cpu", targets="all-linear", rank=16,
        loaded=loaded, dtype="fp32", device="cpu", variant=variant, op=op,
        seconds=[0.001, 0.002, 0.003], rel_error=0.0, threads=2,
    )  # fmt: skip
    values.update(fields)
    return LifecycleEntry(**values)


def test_lifecycle_entries_round_trip_and_tables() -> None:
    entries = [life_entry(v, "load", n) for n in (1, 16) for v in ("peft", "ours")]
    entries.append(life_entry("ours", "hotswap", 1, backend="inductor", compile_s=30.0,
                              call_s=0.01, first_call_s=0.012, recompiles=0))  # fmt: skip
    run = Run(make_run().meta, {}, {}, entries)
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.lifecycle() == run.lifecycle()
    ops, swap = lifecycle_tables(back)
    assert ops.headers[3:5] == ["1 loaded", "16 loaded"]
    assert [r[1:3] for r in ops.rows] == [["load", "peft"], ["load", "ours"]]
    assert ops.rows[0][3].startswith("2.00 ms")
    assert swap.rows[0][1:3] == ["ours", "inductor"] and swap.rows[0][6] == 0
    with pytest.raises(ValueError, match="recompiles must be >= 0"):
        life_entry("ours", "hotswap", 1, recompiles=-1)
    with pytest.raises(ValueError, match="seconds must be seconds > 0"):
        life_entry("ours", "load", 1, seconds=[0.0])
