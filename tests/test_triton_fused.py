"""The fused Triton kernel on small shapes: compiled on a CUDA machine; elsewhere on the CPU
under TRITON_INTERPRET=1, which must be set before triton is imported, so a child pytest
runs this file with it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from interpreted import DEVICE, INTERPRETED, NO_KERNEL, run_interpreted

from lora_kernels import IMPLS, LoRAWeights, reference_forward, rel_error, tolerance
from lora_kernels.reference import forward_error

pytest.importorskip("triton", reason="the triton extra is not installed")
pytestmark = pytest.mark.cuda

needs_kernel = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason=NO_KERNEL)

# (T, in, out, r): one token, r = 1, r = min(in, out), sizes off the block grid, several
# row blocks, several column splits.
SHAPES = [(1, 64, 48, 4), (5, 33, 40, 1), (7, 24, 40, 24), (70, 96, 130, 17), (16, 64, 600, 64)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def test_kernel_under_the_interpreter() -> None:
    if INTERPRETED or DEVICE == "cuda":
        pytest.skip("the kernel tests run in this process")
    run_interpreted(__file__)


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{t}-{i}x{o}-r{r}" for t, i, o, r in SHAPES])
def test_lora_add_matches_oracle(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    from lora_kernels.impls.triton_fused import lora_add_

    T, in_f, out_f, r = shape
    w = LoRAWeights.random(in_f, out_f, r, seed=T + r, dtype=dtype, device=DEVICE)
    x = torch.randn(T, in_f, generator=torch.Generator().manual_seed(r)).to(DEVICE, dtype)
    y = F.linear(x, w.W, w.b)
    base = y.clone()
    assert lora_add_(y, x, w.A, w.B, w.scale) is y
    assert not torch.equal(y, base), "the adapter term was not added"
    assert rel_error(y, reference_forward(w, x)) <= tolerance(dtype, DEVICE)


@needs_kernel
def test_impl_builder_on_3d_input() -> None:
    w = LoRAWeights.random(40, 72, 8, seed=1, device=DEVICE)
    x = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    op = IMPLS["triton_fused"].builder(w)  # the registry entry itself is CUDA-only
    assert forward_error(op, w, x) <= tolerance(torch.float32, DEVICE)


@needs_kernel
def test_strided_rows_are_read_by_stride() -> None:
    from lora_kernels.impls.triton_fused import lora_add_

    w = LoRAWeights.random(32, 48, 4, seed=5, device=DEVICE)
    x = torch.randn(6, 64).to(DEVICE)[:, :32]  # row stride 64
    y = F.linear(x, w.W, w.b)
    lora_add_(y, x, w.A, w.B, w.scale)
    assert rel_error(y, reference_forward(w, x)) <= tolerance(torch.float32, DEVICE)


def test_shape_mismatch_is_an_error() -> None:
    from lora_kernels.impls.triton_fused import lora_add_

    w = LoRAWeights.random(32, 48, 4)
    with pytest.raises(ValueError, match=r"lora_add_ needs y \(T, out\)"):
        lora_add_(torch.zeros(3, 47), torch.zeros(3, 32), w.A, w.B, 1.0)


def test_registry_entry_is_cuda_only() -> None:
    impl = IMPLS["triton_fused"]
    assert "not 'cpu'" in impl.unavailable_reason("cpu", torch.float32, "infer")
    assert "not 'train'" in impl.unavailable_reason("cuda", torch.float32, "train")
