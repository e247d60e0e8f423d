"""Small results files, built from the typed schema exactly as `pytest bench` builds them,
for the report, compare, check and plot tests."""

from __future__ import annotations

from bench.schema.entries import (
    MemoryEntry,
    Paired,
    ParamsEntry,
    TimeEntry,
    UserModelEntry,
    UserModelInfo,
)
from bench.schema.run import ImplInfo, Run, RunMeta, dump_run

CASES = ("toy T=512 r=4 fp32", "gpt2.c_attn T=512 r=16 fp32", "llama3-8b.q_proj T=1 r=16 fp32")
IMPLS = ("base", "two_step", "addmm")
SHAPES = ["toy", "gpt2.c_attn", "llama3-8b.q_proj"]


def case_fields(key: str, device: str) -> dict[str, object]:
    shape, tokens, rank, dtype = key.split()
    return {
        "case": f"{key} {device}",
        "key": key,
        "shape": shape,
        "tokens": int(tokens.removeprefix("T=")),
        "rank": int(rank.removeprefix("r=")),
        "dtype": dtype,
        "device": device,
    }


def time_entry(
    key: str,
    impl: str,
    device: str,
    base_s: float,
    ratio: float,
    iqr: float = 0.0,
    mode: str = "infer",
    control: bool = False,
) -> TimeEntry:
    """Eleven paired rounds around base_s whose pair ratios have median `ratio` and IQR `iqr`;
    `control`: an A/A control entry (impl base)."""
    steps = [k / 5 for k in range(-5, 6)]  # -1 .. 1: quartiles at -0.5 and 0.5
    base = [base_s * (1 + 0.03 * k) for k in steps]
    pair_ratios = [ratio + iqr * k for k in steps]
    fields = case_fields(key, device)
    return TimeEntry(
        fullname=f"bench/test_forward.py::test_forward[{key} {device}-{impl}]",
        **fields,
        impl=impl,
        mode=mode,
        in_features=64,
        out_features=10,
        bias=True,
        flops=10**6,
        min_bytes=10**5,
        floor_s=base_s / 2,
        rel_error=1e-7,
        build_s=0.001,
        threads=2,
        tf32=False,
        copied_output=False,
        copies=1,
        rounds=Paired(1, [b * r for b, r in zip(base, pair_ratios, strict=True)], base),
        control=control,
    )


def make_run(
    device: str = "cpu",
    profile: str = "quick",
    seconds: float = 1e-3,
    ratios: dict[tuple[str, str], float] | None = None,
    copy_gbs: float = 20.0,
    threads: int = 2,
    iqr: float = 0.0,
    cache: str = "cold",
    control: bool = False,
) -> Run:
    """A run over CASES x IMPLS; `ratios[(key, impl)]` overrides the default ratio (base 1.0,
    the others 1.05); every impl's pair ratios have the IQR `iqr`; with `control`, base's
    entries are the run's A/A control."""
    ratios = ratios or {}
    entries: list = []
    for key in CASES:
        for impl in IMPLS:
            ratio = ratios.get((key, impl), 1.0 if impl == "base" else 1.05)
            entries.append(time_entry(key, impl, device, seconds, ratio, iqr,
                                      control=control and impl == "base"))  # fmt: skip
    fields = case_fields(CASES[0], device)
    entries.append(
        MemoryEntry(
            fullname="bench/test_memory.py::test_memory[toy]",
            **fields,
            impl="two_step",
            mode="infer",
            method="test",
            peak_bytes=3 * 2**20,
        )
    )
    entries.append(
        ParamsEntry("bench/test_params.py::test_params[toy r=4]", "toy r=4", "toy", 64, 10, 4,
                    True, 296, 946)
    )  # fmt: skip
    peaks = {f"{device}/fp32": {"gemm_gflops": 120.0, "copy_gbs": copy_gbs}}
    meta = RunMeta(
        device=device,
        device_name=f"test {device}",
        profile=profile,
        threads=threads,
        interop_threads=1,
        tf32=False,
        torch="2.13.0",
        created="2026-01-01T00:00:00+00:00",
        dtypes=["fp32"],
        only=[],
        impl_specs=[],
        cache=cache,
        cache_bytes=32 * 2**20,
        impls=[ImplInfo(name, "ours", "lora-bench", f"{name} (test)") for name in IMPLS],
        shapes=SHAPES,
        peaks_start=peaks,
        peaks_end={k: dict(v) for k, v in peaks.items()},
    )
    return Run(meta, {"node": "test"}, {}, entries)


def run_json(run: Run) -> str:
    return dump_run(run)


def user_entry(variant: str, phase: str, ratio: float, *, spread: float = 0.01,
               compiled: bool = False, adapters: int = 1, base_s: float = 1e-3,
               origin: str = "ours", merged: bool = False) -> UserModelEntry:  # fmt: skip
    """A `lora-bench model` entry: eleven paired rounds of whole calls whose pair ratios have
    median `ratio` and spread `spread` either side."""
    steps = [k / 5 for k in range(-5, 6)]
    base = [base_s * (1 + 0.03 * k) for k in steps]
    pair_ratios = [ratio * (1 + spread * k) for k in steps]
    key = f"tiny blocks=2 adapter B=2{' n=2' if adapters > 1 else ''} prompt=8 new=4 fp32"
    if phase == "train":
        key = "tiny blocks=2 adapter B=2 T=8 fp32"
    steps_of = {"prefill": 1, "decode": 3, "train": 1}[phase]
    return UserModelEntry(
        fullname=f"lora-bench model {key} cpu {variant} {phase}", case=f"{key} cpu", key=key,
        model="tiny", adapter="adapter", variant=variant, origin=origin, merged=merged,
        compiled=compiled, phase=phase, batch=2, adapters=adapters, steps=steps_of, tokens=8,
        dtype="fp32", device="cpu", tokens_equal=1.0, rel_error=1e-7, build_s=0.01,
        compile_s=2.0 if compiled else 0.0, threads=2, peak_bytes=2**20, memory_method="test",
        trainable=512, rounds=Paired(1, [b * r for b, r in zip(base, pair_ratios, strict=True)],
                                     base),
    )  # fmt: skip


def user_model_run(entries: list[UserModelEntry] | None = None) -> Run:
    """A `lora-bench model` run: PEFT, ours, merged and fused at both phases of generation, a
    mixed batch, a training step, and the run's facts."""
    if entries is None:
        entries = [
            user_entry(v, phase, r, origin=o, merged=m)
            for phase in ("prefill", "decode")
            for v, r, o, m in (("peft", 1.20, "peer", False), ("addmm", 1.10, "ours", False),
                               ("peft_merged", 1.00, "peer", True))
        ] + [
            user_entry("peft_mixed", "decode", 1.7, adapters=2, origin="peer"),
            user_entry("segments", "decode", 1.5, adapters=2),
            user_entry("peft", "train", 1.40, origin="peer"),
            user_entry("autograd", "train", 1.41),
        ]  # fmt: skip
    info = UserModelInfo(
        model="tiny", model_source="tiny (llama from folder, 2 blocks)", adapter="adapter",
        adapter_source="adapter (r=4)", blocks=2, total_blocks=4, random_weights=False,
        adapted_layers=4, seconds=1.0, estimate_bytes=2**20, free_bytes=2**30,
        screened=["generation two_step: screened out"], notes=["a note"],
        load_s={"peft": [0.01, 0.011, 0.012], "ours": [0.001, 0.001, 0.002]},
        merge_s={"peft": [0.003, 0.003, 0.004], "ours": [0.001, 0.001, 0.001]},
    )  # fmt: skip
    meta = make_run().meta
    meta = RunMeta(**{**meta.__dict__, "profile": "model", "cache": "warm", "peaks_start": {},
                      "peaks_end": {}})  # fmt: skip
    return Run(meta, {}, {}, [*entries, info])
