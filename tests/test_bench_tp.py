"""The tensor-parallel bench's pieces: its jobs per profile, its entries' round trip through
a results file and its table; and, in the tiny profile's run, every split checked, timed and
its bytes equal to the formulas."""

from __future__ import annotations

import json

from runs import make_run

from bench.families.tp import TPCase, tp_jobs
from bench.report.tp import tp_tables
from bench.schema.entries import Paired, TPEntry
from bench.schema.run import Run, dump_run, parse_run
from lora_kernels.tp import expected_traffic


def test_full_times_every_split_at_decode_and_prefill_and_quick_none_on_a_cpu() -> None:
    full = [str(j) for j in tp_jobs("full", ["cpu"])]
    assert len(full) == 2 * 3 * 2 * 3  # layers, adapters, tokens, modes (train, infer, multi)
    assert "infer llama-cpu.up_proj column/fully_sharded tp=2 T=512 r=16 n=4 fp32 cpu" in full
    assert "train llama-cpu.up_proj column/fully_sharded tp=2 T=512 r=16 fp32 cpu" in full
    assert "infer llama-cpu.down_proj row/sharded tp=2 T=16 r=16 fp32 cpu" in full
    assert (
        tp_jobs("quick", ["cpu"]) == []
    )  # results/reference/epyc-32m/full-tp.md holds the full run
    cuda = [str(j) for j in tp_jobs("quick", ["cuda"])]
    assert "train llama3-8b.down_proj row/replicated tp=2 T=2048 r=16 bf16 cuda" in cuda


def tp_entry(adapter: str, ratio: float) -> TPEntry:
    case = TPCase("llama-cpu.up_proj", adapter, 2, 512, 16, "fp32", "cpu")
    want = expected_traffic(case.split, 512, 1024, 3584, 16, 4)
    base = expected_traffic(case.split, 512, 1024, 3584, 16, 4, adapter=False)
    rounds = Paired(1, [ratio * 0.01] * 5, [0.01] * 5, "sure", 0.02)
    return TPEntry(fullname="bench/test_tp.py::test_tp", **case.fields(), parallel="column",
                   mode="train", backend="gloo", threads=1, rel_error=2e-7,
                   comm_bytes=sum(want.values()), base_comm_bytes=sum(base.values()),
                   peak_bytes=30 << 20, base_peak_bytes=20 << 20, rounds=rounds)  # fmt: skip


def test_entries_round_trip_and_the_table() -> None:
    run = Run(make_run().meta, {}, {}, [tp_entry("sharded", 1.04), tp_entry("fully_sharded", 1.1)])
    back = parse_run(json.loads(dump_run(run)), "test")
    assert back.tp() == run.tp()
    (table,) = tp_tables(back)
    assert table.title == "Tensor-parallel LoRA"
    first = table.rows[0]
    assert first[2:5] == ["column/sharded", 2, "1.040 [1.040, 1.040]"]
    assert first[6:8] == ["64 KiB", "2.0 MiB"]  # dA's all-reduce beside the base's dx
    assert table.rows[1][6] == "48 KiB"  # the shrink's all-gather (16) and dxa's (32)
    assert "gloo on cpu, 1 thread(s) a rank" in table.note and "not a link's" in table.note
    assert tp_tables(Run(make_run().meta, {}, {}, [])) == []


def test_the_ranks_need_no_numpy() -> None:
    """torch's object collectives (all_gather_object, broadcast_object_list) go through
    numpy, which the core install lacks: every tensor-parallel benchmark failed there. The
    ranks agree through tensor collectives; .ci/wheel runs them from the core install."""
    import inspect
    import re

    from bench.families import tp_runner
    from lora_kernels.tp import comm, launch, layer, multi

    for module in (tp_runner, comm, launch, layer, multi):
        calls = re.findall(r"dist\.\w*object\w*\(", inspect.getsource(module))
        assert not calls, f"{module.__name__}: {calls}"
