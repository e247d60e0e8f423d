"""Every registered LoRA-equivalent impl matches the float64 oracle, forward and gradients."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from lora_kernels import (
    IMPLS,
    LoRAWeights,
    reference_forward,
    reference_grads,
    rel_error,
    tolerance,
)
from lora_kernels.reference import forward_error, gradient_errors, poisoned_memory

LORA_IMPLS = [name for name, impl in IMPLS.items() if impl.lora_equivalent]
TRAIN_IMPLS = [name for name in LORA_IMPLS if "train" in IMPLS[name].modes]
HALF = [torch.float16, torch.bfloat16]


@dataclass(frozen=True)
class Shape:
    lead: tuple[int, ...]
    in_f: int
    out_f: int
    rank: int
    bias: bool

    def __str__(self) -> str:
        return f"{self.lead}x{self.in_f}->{self.out_f} r={self.rank} bias={self.bias}"


def _sweep(n: int, seed: int) -> list[Shape]:
    """Edge cases (r=1, r=min(in,out), one token, 3-D input) then seeded random shapes."""
    rnd = random.Random(seed)
    shapes = [
        Shape((1,), 16, 8, 1, True),
        Shape((5,), 24, 40, 24, False),  # r = min(in, out)
        Shape((2, 3), 33, 17, 17, True),  # r = min(in, out), odd sizes
        Shape((4, 1, 3), 8, 64, 2, False),
    ]
    while len(shapes) < n:
        in_f, out_f = rnd.randint(1, 96), rnd.randint(1, 96)
        lead = tuple(rnd.randint(1, 9) for _ in range(rnd.randint(1, 3)))
        rank = rnd.randint(1, min(in_f, out_f))
        shapes.append(Shape(lead, in_f, out_f, rank, rnd.random() < 0.5))
    return shapes


SHAPES = _sweep(16, seed=0)
FEW_SHAPES = SHAPES[:2]  # for impls whose build compiles: each new shape costs seconds


def shapes_for(name: str) -> list[Shape]:
    return FEW_SHAPES if IMPLS[name].compiles else SHAPES


def skip_unless_cpu_supports(name: str, dtype: torch.dtype, mode: str) -> None:
    """CUDA-only impls are tested on a CUDA machine; their kernels have CPU tests of their own."""
    reason = IMPLS[name].unavailable_reason("cpu", dtype, mode)
    if reason:
        pytest.skip(reason)


def make_case(shape: Shape, dtype: torch.dtype, seed: int) -> tuple[LoRAWeights, torch.Tensor]:
    w = LoRAWeights.random(
        shape.in_f, shape.out_f, shape.rank, bias=shape.bias, seed=seed, dtype=dtype
    )
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*shape.lead, shape.in_f, generator=gen).to(dtype)
    return w, x


def test_poisoning_is_visible() -> None:
    with poisoned_memory():
        assert torch.isnan(torch.empty(8)).all()
    assert rel_error(torch.full((2,), float("nan")), torch.ones(2)) == float("inf")


@pytest.mark.parametrize("name", LORA_IMPLS)
def test_forward_matches_oracle_fp32(name: str) -> None:
    skip_unless_cpu_supports(name, torch.float32, "infer")
    for i, shape in enumerate(shapes_for(name)):
        w, x = make_case(shape, torch.float32, seed=100 + i)
        assert float(reference_forward(w, x).abs().max()) > 0, "never compare on zeros"
        err = forward_error(IMPLS[name].build(w), w, x)
        assert err <= tolerance(torch.float32, "cpu"), f"{name} {shape}: rel error {err:.3g}"


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", LORA_IMPLS)
def test_forward_matches_oracle_half(name: str, dtype: torch.dtype) -> None:
    """Tiny shapes only: this CPU has no native half-precision matmul."""
    skip_unless_cpu_supports(name, dtype, "infer")
    for i, shape in enumerate(shapes_for(name)[:4]):
        w, x = make_case(shape, dtype, seed=200 + i)
        err = forward_error(IMPLS[name].build(w), w, x)
        assert err <= tolerance(dtype, "cpu"), f"{name} {shape} {dtype}: rel error {err:.3g}"


@pytest.mark.parametrize("name", TRAIN_IMPLS)
def test_gradients_match_oracle(name: str) -> None:
    skip_unless_cpu_supports(name, torch.float32, "train")
    for i, shape in enumerate(shapes_for(name)[:1] if IMPLS[name].compiles else SHAPES):
        w, x = make_case(shape, torch.float32, seed=300 + i)
        w.requires_grad_()
        x.requires_grad_()
        gen = torch.Generator().manual_seed(i)
        grad_out = torch.randn(*shape.lead, shape.out_f, generator=gen)
        errors = gradient_errors(IMPLS[name].build(w, mode="train"), w, x, grad_out)
        tol = tolerance(torch.float32, "cpu")
        assert max(errors.values()) <= tol, f"{name} {shape}: gradient rel errors {errors}"


def test_base_is_not_lora() -> None:
    """base drops the adapter: its error against the oracle is far above tolerance."""
    w, x = make_case(SHAPES[4], torch.float32, seed=7)
    assert rel_error(IMPLS["base"].build(w)(x), reference_forward(w, x)) > 0.1


def test_oracle_gradients_match_float64_autograd() -> None:
    """The closed-form oracle agrees with autograd run in float64."""
    w, x = make_case(SHAPES[5], torch.float32, seed=9)
    x64, A, B = (t.double().requires_grad_() for t in (x, w.A, w.B))
    W, b = w.W.double(), w.b
    y = x64 @ W.T + w.scale * (x64 @ A.T) @ B.T
    y = y if b is None else y + b.double()
    g = torch.randn_like(y)
    y.backward(g)
    ref = reference_grads(w, x, g)
    for got, want in ((x64.grad, ref.x), (A.grad, ref.A), (B.grad, ref.B)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_forward_error_rejects_wrong_shape_and_unwritten_output() -> None:
    w, x = make_case(SHAPES[6], torch.float32, seed=11)

    def half_written(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty(*x.shape[:-1], w.out_features)
        y[..., : w.out_features // 2] = reference_forward(w, x)[..., : w.out_features // 2].float()
        return y

    assert forward_error(half_written, w, x) == float("inf")
    with pytest.raises(ValueError, match="op returned"):
        forward_error(lambda x: x, w, x)


def test_missing_gradient_counts_as_inf() -> None:
    w, x = make_case(SHAPES[6], torch.float32, seed=12)
    w.requires_grad_()
    x.requires_grad_()
    base = IMPLS["base"].build(w, mode="train")
    errors = gradient_errors(base, w, x, torch.randn(*x.shape[:-1], w.out_features))
    assert errors["A"] == errors["B"] == float("inf")
