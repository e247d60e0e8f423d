"""The segmented (SGMV) Triton kernel of triton_sgmv on small cases: compiled on a CUDA
machine; elsewhere on the CPU under TRITON_INTERPRET=1, which must be set before triton is
imported, so a child pytest runs this file with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from interpreted import DEVICE, INTERPRETED, NO_KERNEL, run_interpreted

from lora_kernels import MultiLoRAWeights, random_index, rel_error, tolerance
from lora_kernels.multi.reference import multi_forward_error, multi_reference_forward

pytest.importorskip("triton", reason="the triton extra is not installed")
pytestmark = pytest.mark.cuda

needs_kernel = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason=NO_KERNEL)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (tokens, in, out, ranks): one token, r_max = min(in, out) with mixed ranks, sizes off the
# block grid, several row blocks per adapter, more adapters than tokens.
CASES = [
    (1, 16, 12, (4, 2)),
    (37, 33, 20, (20, 4, 1)),
    (70, 96, 130, (16, 4, 8, 16, 2)),
    (40, 64, 200, (8,) * 6),
    (3, 24, 40, (3, 1, 8, 2, 5, 8, 7)),
]


def test_kernel_under_the_interpreter() -> None:
    if INTERPRETED or DEVICE == "cuda":
        pytest.skip("the kernel tests run in this process")
    run_interpreted(__file__)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("distribution", ["uniform", "zipf", "per_sequence", "identical"])
@pytest.mark.parametrize("case", CASES, ids=[f"T{c[0]}-{c[1]}x{c[2]}-n{len(c[3])}" for c in CASES])
def test_sgmv_add_matches_oracle(case: tuple, distribution: str, dtype: torch.dtype) -> None:
    from lora_kernels.multi.triton_sgmv import sgmv_add_

    tokens, in_f, out_f, ranks = case
    w = MultiLoRAWeights.random(in_f, out_f, ranks, seed=tokens, dtype=dtype, device=DEVICE)
    gen = torch.Generator().manual_seed(len(ranks))
    x = torch.randn(tokens, in_f, generator=gen).to(DEVICE, dtype)
    index = random_index(distribution, tokens, len(ranks), base_share=0.2, seed=3, device=DEVICE)
    y = F.linear(x, w.W, w.b)
    assert sgmv_add_(y, x, index, w) is y
    ref = multi_reference_forward(w, x, index)
    assert rel_error(y, ref) <= tolerance(dtype, DEVICE)


@needs_kernel
def test_impl_on_poisoned_memory_and_strided_input() -> None:
    from lora_kernels import MULTI_IMPLS

    impl = MULTI_IMPLS["triton_sgmv"]
    w = MultiLoRAWeights.random(48, 40, (8, 3, 5), device=DEVICE)
    # The registry says CUDA (build refuses the CPU); the interpreter runs the same kernel.
    op = impl.build(w) if DEVICE == "cuda" else impl.builder(w)
    x = torch.randn(2, 30, 96, device=DEVICE)[..., ::2]  # (2, 30, 48), strided rows
    index = random_index("uniform", 60, 3, base_share=0.1, device=DEVICE).view(2, 30)
    assert multi_forward_error(op, w, x, index) <= tolerance(torch.float32, DEVICE)
