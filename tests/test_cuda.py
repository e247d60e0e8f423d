"""What only a CUDA device can check: every impl and multi-adapter impl against the float64
oracle on CUDA, the CUDA memory measure, the L2 rotation and synchronized timing. Marked
`cuda`: skipped here without a GPU, and run first by `.ci/gpu` on one."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bench.harness.cache import MAX_COPIES, MAX_ROTATION_BYTES, cache_bytes, copies_needed
from bench.harness.cases import Case
from bench.harness.memory import measure_cuda
from bench.harness.timing import cuda_events_s, make_round, time_call
from lora_kernels import IMPLS, MULTI_IMPLS, MultiLoRAWeights, random_index, tolerance
from lora_kernels.conformance import EDGE_SHAPES, SHAPES, run_checks
from lora_kernels.multi.reference import multi_forward_error
from lora_kernels.registry import MODES
from lora_kernels.weights import DTYPE_NAMES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: .ci/gpu runs these"),
]
DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
CASE = Case("gpt2-medium.c_proj", 512, 8, "bf16", "cuda")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(IMPLS, key=lambda n: IMPLS[n].compiles))  # cheap first
def test_conformance_on_cuda(name: str, dtype: str, mode: str) -> None:
    impl = IMPLS[name]
    reason = impl.unavailable_reason("cuda", DTYPES[dtype], mode)
    if reason:
        pytest.skip(reason)
    if impl.compiles and dtype != "bf16":
        pytest.skip("compiling impls in bf16 only here: every dtype costs compiles, and the "
                    "bench checks each case it times against the oracle")  # fmt: skip
    shapes = EDGE_SHAPES[:2] if impl.compiles else SHAPES  # each new shape costs a compile
    checks = run_checks(impl, "cuda", DTYPES[dtype], mode, shapes, zero_rows=name != "peft_dora")
    failed = [r for r in checks if not r.passed]
    assert not failed, [f"{r.check}: {r.failure}" for r in failed]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(MULTI_IMPLS))
def test_multi_on_cuda(name: str, dtype: str) -> None:
    impl = MULTI_IMPLS[name]
    reason = impl.unavailable_reason("cuda", DTYPES[dtype], "infer")
    if reason:
        pytest.skip(reason)
    for tokens, ranks in ((1, (4,)), (37, (20, 4, 1)), (300, (16, 8, 16, 2) * 4)):
        w = MultiLoRAWeights.random(96, 130, ranks, seed=tokens, dtype=DTYPES[dtype],
                                    device="cuda")  # fmt: skip
        x = torch.randn(tokens, 96, device="cuda").to(DTYPES[dtype])
        index = random_index("zipf", tokens, len(ranks), base_share=0.2, seed=1, device="cuda")
        err = multi_forward_error(impl.build(w), w, x, index)
        assert err <= tolerance(DTYPES[dtype], "cuda"), (tokens, ranks, err)


def test_memory_measure_counts_what_an_impl_adds() -> None:
    """base holds y; two_step also holds x Aᵀ and the expand, out-of-place."""
    base, two_step = (measure_cuda(i, CASE, "infer") for i in ("base", "two_step"))
    y_bytes = CASE.tokens * CASE.out_features * 2
    assert y_bytes <= base < two_step, (base, two_step)


def test_cold_mode_rotates_past_the_l2() -> None:
    l2 = cache_bytes("cuda")
    assert l2 == torch.cuda.get_device_properties(0).L2_cache_size > 0
    size = CASE.min_bytes("infer")
    copies = copies_needed(size, l2, "cold")
    capped = min(MAX_COPIES, MAX_ROTATION_BYTES // size)
    assert copies >= 2 and (copies * size >= 2 * l2 or copies == capped), (copies, size, l2)


def test_rounds_wait_for_the_kernels_they_queue() -> None:
    """A round synchronizes: its wall time covers a kernel that spins on the GPU, as CUDA
    events around the same kernel see it."""

    def spin() -> None:
        torch.cuda._sleep(20_000_000)  # about 10 ms of GPU clock cycles

    spin()
    events = cuda_events_s(spin, 1, 3)
    wall = min(time_call(make_round(spin, 1, "cuda")) for _ in range(3))
    assert events > 1e-3 and wall >= 0.9 * events, (wall, events)


@pytest.mark.parametrize("impl", ["cuda_graph", "triton_fused", "triton_sgmv"])
def test_generation_on_cuda_gives_peft_s_tokens(impl: str) -> None:
    """Greedy generation in fp32 on CUDA through our CUDA-only impls (a whole model; one
    adapter, or four adapters one per sequence) gives PEFT's tokens on the same weights."""
    from bench.families import generation as gen

    if importlib.util.find_spec("peft") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("needs peft and transformers: pip install 'lora-bench[peers,models]'")
    multi = impl in MULTI_IMPLS
    case = gen.GenCase("llama-tiny", 4, 16, 6, 3 if multi else 1, 8, 0, "fp32", "cuda")
    base = gen.models.hf_model(case.model_case)
    ids = gen.prompt_ids(case)
    peft = gen.peft_mixed(base, case) if multi else gen.peft_lora(base, case)
    want = gen.decoder(peft, "peft_mixed" if multi else "peft", case, ids).generate()
    ours = gen.build(impl, peft, case)
    assert torch.equal(gen.decoder(ours, impl, case, ids).generate(), want)
