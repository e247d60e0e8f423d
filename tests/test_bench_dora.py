"""The DoRA side of the bench: which impls run on which cases, and the DoRA tables, which
compare DoRA's impls with LoRA's on the same case and keep them out of LoRA's tables."""

from __future__ import annotations

import dataclasses

import torch
from runs import case_fields, make_run, time_entry

from bench.harness.cases import PROFILES, Case
from bench.harness.session import Settings
from bench.report.dora import dora_memory_table, dora_ratio_table
from bench.report.layer import ratio_table
from bench.schema.entries import MemoryEntry, TimeEntry
from bench.schema.run import ImplInfo, Run
from lora_kernels import IMPLS

KEY = "toy T=512 r=4 fp32"  # a case of tests/runs.py's run


def settings(profile: str) -> Settings:
    return Settings(PROFILES[profile], ["cpu"], {"cpu": ["fp32"]}, 2, None, [], [], "cold")  # type: ignore[arg-type]


def test_dora_impls_run_on_the_dora_cases_only() -> None:
    pairs = settings("quick").case_impls()
    dora_cases = {c for c, i in pairs if IMPLS[i].variant == "dora"}
    assert {str(c) for c in dora_cases} == {
        "gpt2-medium.c_proj T=2048 r=8 fp32 cpu", "llama3-8b.q_proj T=1 r=16 fp32 cpu"
    }  # fmt: skip
    lora_cases = {c for c, i in pairs if IMPLS[i].variant == "lora"}
    assert dora_cases <= lora_cases, "LoRA's figures sit beside DoRA's on the same case"
    for case in dora_cases:
        names = [i for c, i in pairs if c == case]
        want = [
            n for n, i in IMPLS.items() if i.variant in ("lora", "dora")
        ]  # the others have their families
        later = ("delta_weight", "dora_dense", "peft_dora")  # timed in full only
        assert names == [n for n in want if n not in later], "every other impl, registry order"
        full = [i for c, i in settings("full").case_impls() if str(c) == str(case)]
        assert full == want, "full times every LoRA and DoRA impl"
        memory = [i for c, i in settings("quick").case_impls(memory=True) if c == case]
        assert not memory or memory == want, "their memory is measured in quick too"
    memory = settings("quick").case_impls(memory=True)  # the prefill: at decode W is all
    assert {str(c) for c, i in memory if i == "dora_autograd"} == {
        "gpt2-medium.c_proj T=2048 r=8 fp32 cpu"
    }
    assert {str(c) for c, i in settings("full").case_impls(memory=True)
            if i == "dora_autograd"} == {str(c) for c in settings("full").dora_cases()}  # fmt: skip


def test_full_profile_has_the_issue_s_prefill_case() -> None:
    full = {str(c) for c in settings("full").dora_cases()}
    assert "llama3-8b.q_proj T=512 r=16 fp32 cpu" in full


def test_dora_case_weights_share_lora_s_tensors() -> None:
    case = Case("toy", 16, 4)
    lora, dora = case.weights(), case.weights(variant="dora")
    for name in ("W", "b", "A", "B"):
        assert torch.equal(getattr(lora, name), getattr(dora, name)), name
    assert dora.m.shape == (10,)


def dora_run() -> Run:
    run = make_run(ratios={(KEY, "two_step"): 1.5, (KEY, "addmm"): 1.2})
    extra = [
        time_entry(KEY, "dora_factored", "cpu", 1e-3, 1.5),
        time_entry(KEY, "peft", "cpu", 1e-3, 1.3),
        time_entry(KEY, "peft_dora", "cpu", 1e-3, 6.5),
    ]
    memory = [
        MemoryEntry("m", **case_fields(KEY, "cpu"), impl=i, mode="infer", method="test",
                    peak_bytes=b)
        for i, b in (("addmm", 2**20), ("dora_factored", 2 * 2**20), ("peft_dora", 9 * 2**20))
    ]  # fmt: skip
    impls = [
        *run.meta.impls,
        ImplInfo("dora_factored", "ours", "lora-bench", "d", "dora"),
        ImplInfo("peft", "peer", "peft", "p"),
        ImplInfo("peft_dora", "peer", "peft", "p", "dora"),
    ]
    meta = dataclasses.replace(run.meta, impls=impls)
    return dataclasses.replace(run, meta=meta, entries=[*run.entries, *extra, *memory])


def test_ratio_table_reads_the_price_of_dora() -> None:
    table = dora_ratio_table(dora_run())
    assert table.headers[:4] == ["case", "mode", "LoRA: our best", "LoRA: peft"]
    assert table.headers[4:6] == ["dora_factored", "peft_dora"]
    (row,) = table.rows
    assert row[:6] == [f"{KEY} cpu", "infer", "addmm 1.200", "1.300", "1.500", "6.500"]
    # 1.5 / 1.2, 6.5 / 1.3, 6.5 / 1.5, rounds without spread: their CIs are points
    assert row[6:] == ["1.250 [1.250, 1.250]", "5.000 [5.000, 5.000]", "4.333 [4.333, 4.333]"]


def test_a_price_of_dora_the_rounds_cannot_tell_is_unresolved() -> None:
    run = dora_run()
    noisy = time_entry(KEY, "dora_factored", "cpu", 1e-3, 1.21, iqr=0.3)
    entries = [noisy if isinstance(e, TimeEntry) and e.impl == "dora_factored" else e
               for e in run.entries]  # fmt: skip
    (row,) = dora_ratio_table(dataclasses.replace(run, entries=entries)).rows
    assert row[6].startswith("1.008 [") and row[6].endswith("] unresolved")
    assert not row[7].endswith("unresolved")


def test_memory_table_and_lora_tables_stay_apart() -> None:
    run = dora_run()
    (row,) = dora_memory_table(run).rows
    assert row[:4] == [f"{KEY} cpu", "infer", "2 KiB", "addmm 1.0 MiB"]
    assert row[5:] == ["2.0 MiB", "9.0 MiB"]
    lora = ratio_table(run, "infer")
    assert "dora_factored" not in lora.headers and "peft_dora" not in lora.headers
    assert "peft" in lora.headers
