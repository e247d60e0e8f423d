"""The 4-bit QLoRA Triton kernel on small shapes: compiled on a CUDA machine; elsewhere on the
CPU under TRITON_INTERPRET=1, in a child pytest that runs this file with it."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from interpreted import DEVICE, INTERPRETED, NO_KERNEL, run_interpreted

from lora_kernels import IMPLS, LoRAWeights, tolerance
from lora_kernels.quant import QLoRAWeights
from lora_kernels.reference import forward_error, gradient_errors

pytest.importorskip("triton", reason="the triton extra is not installed")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        importlib.util.find_spec("bitsandbytes") is None,
        reason="bitsandbytes is not installed: pip install 'lora-bench[quant]'",
    ),
]
needs_kernel = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason=NO_KERNEL)

# (T, in, out, r, blocksize): one token, sizes off the tile grid, several blocks a row,
# several row and column tiles, r = min(in, out)
SHAPES = [(1, 64, 48, 4, 64), (5, 128, 30, 1, 64), (17, 256, 130, 8, 128), (70, 64, 64, 64, 64)]


def test_kernel_under_the_interpreter() -> None:
    if INTERPRETED or DEVICE == "cuda":
        pytest.skip("the kernel tests run in this process")
    run_interpreted(__file__)


@needs_kernel
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize(
    "shape", SHAPES, ids=[f"T{t}-{i}x{o}-r{r}-b{b}" for t, i, o, r, b in SHAPES]
)
def test_forward_and_gradients_match_the_oracle(shape: tuple[int, ...], fmt: str) -> None:
    T, in_f, out_f, r, block = shape
    w = LoRAWeights.random(in_f, out_f, r, bias=T % 2 == 1, seed=T, device=DEVICE)
    q = QLoRAWeights.quantize(w, fmt, blocksize=block)
    x = torch.randn(T, in_f, generator=torch.Generator().manual_seed(r)).to(DEVICE)
    op = IMPLS["qlora_triton"].builder(q)  # the registry entry itself is CUDA-only
    tol = tolerance(torch.float32, DEVICE)
    assert forward_error(op, q, x) <= tol
    q.requires_grad_()
    grad = torch.randn(T, out_f, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    errors = gradient_errors(op, q, x.requires_grad_(), grad)
    assert max(errors.values()) <= tol, errors


def test_the_kernel_refuses_what_it_cannot_take() -> None:
    from lora_kernels.quant.triton_nf4 import qlora_forward

    q = QLoRAWeights.quantize(LoRAWeights.random(32, 16, 4), "int8")
    x = torch.zeros(2, 32)
    with pytest.raises(ValueError, match=r"takes \('nf4', 'fp4'\) bases, not 'int8'"):
        qlora_forward(x, q.base, None, x[:, :4], q.B, 1.0)
    with pytest.raises(ValueError, match="takes bases in"):
        IMPLS["qlora_triton"].check_variant(q, "infer")


def test_registry_entry_is_cuda_only() -> None:
    reason = IMPLS["qlora_triton"].unavailable_reason("cpu", torch.float32, "infer")
    assert "not 'cpu'" in reason
