"""Every registered impl (ours, peers, plugins) passes the conformance kit on the CPU: forward
and gradients against the float64 oracle on edge and random shapes, poisoned outputs, inputs
unchanged, in every dtype it claims. The kit itself must catch broken impls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_kernels import IMPLS, Impl, LoRAWeights, reference_forward, reference_grads, rel_error
from lora_kernels.conformance import CONV_SHAPES, EDGE_SHAPES, SHAPES, run_checks, verify
from lora_kernels.reference import gradient_errors, poisoned_memory
from lora_kernels.registry import MODES
from lora_kernels.weights import DTYPE_NAMES

DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(IMPLS))
def test_conformance(name: str, dtype: str, mode: str) -> None:
    impl = IMPLS[name]
    reason = impl.unavailable_reason("cpu", DTYPES[dtype], mode)
    if reason:
        pytest.skip(reason)  # CUDA-only impls run this on a CUDA machine
    shapes = EDGE_SHAPES[:2] if impl.compiles else SHAPES  # each new shape costs a compile
    if impl.variant in ("conv", "conv_dora"):  # PEFT's A has no dilation: see test_conv_peft
        shapes = tuple(s for s in CONV_SHAPES if impl.origin != "peer" or s.dilation == 1)
    if dtype != "fp32":
        shapes = shapes[:6]  # tiny shapes: this CPU has no native half-precision matmul
    # PEFT's DoRA divides by a zero norm (NaN); test_peft_dora_zero_row pins that down
    zero_rows = name not in ("peft_dora", "peft_conv_dora")
    checks = run_checks(impl, "cpu", DTYPES[dtype], mode, shapes, zero_rows=zero_rows)
    failed = [r for r in checks if not r.passed]
    assert not failed, [f"{r.check}: {r.failure}" for r in failed]


def _broken(name: str, fn, **kwargs: object) -> Impl:
    def build(w: LoRAWeights):
        return lambda x: fn(w, x)

    return Impl(name, f"deliberately broken: {name}", build, **kwargs)


def _lora(w: LoRAWeights, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w.W, w.b) + w.scale * F.linear(F.linear(x, w.A), w.B)


def _no_scale(w, x):
    return F.linear(x, w.W, w.b) + F.linear(F.linear(x, w.A), w.B)


def _writes_x(w, x):
    y = _lora(w, x)
    x.detach().mul_(0.5)
    return y


def _half_written(w, x):
    y = torch.empty(*x.shape[:-1], w.out_features, dtype=x.dtype)
    y[..., : w.out_features // 2] = _lora(w, x)[..., : w.out_features // 2]
    return y


def _fp32_only(w, x):
    if x.dtype != torch.float32:
        raise TypeError(f"no kernel for {x.dtype}")
    return _lora(w, x)


def _contiguous_only(w, x):
    if not x.is_contiguous():
        raise RuntimeError("x must be contiguous")
    return _lora(w, x)


def _detached_adapter(w, x):
    return F.linear(x, w.W, w.b) + w.scale * F.linear(F.linear(x, w.A.detach()), w.B.detach())


@pytest.mark.parametrize(
    ("fn", "dtype", "mode", "failure"),
    [
        (_no_scale, torch.float32, "infer", "rel errors {'y'"),
        (_writes_x, torch.float32, "infer", "the op wrote into one of x, W, b, A, B"),
        (_half_written, torch.float32, "infer", "rel errors {'y': 'inf'}"),
        (_fp32_only, torch.bfloat16, "infer", "raised TypeError: no kernel for torch.bfloat16"),
        (_contiguous_only, torch.float32, "infer", "non-contiguous x: raised RuntimeError"),
        (_detached_adapter, torch.float32, "train", "'dA': 'inf', 'dB': 'inf'"),
    ],
)
def test_the_kit_catches_broken_impls(fn, dtype: torch.dtype, mode: str, failure: str) -> None:
    impl = _broken(fn.__name__.strip("_"), fn)
    results = run_checks(impl, "cpu", dtype, mode, SHAPES[:8])
    failures = " | ".join(r.failure for r in results if not r.passed)
    assert failure in failures, failures


def test_verify_reports_and_counts() -> None:
    good = verify(_broken("fine", _lora, dtypes=frozenset({torch.float32})), shapes=SHAPES[:3])
    assert good.passed
    assert [(r.dtype, r.mode) for r in good.results] == [("fp32", "infer")] * 2 + [
        ("fp32", "train")
    ] * 2
    text = good.render()
    assert "| cpu      | fp32    | infer  | forward " in text
    assert "fine: all 4 checks passed" in text
    bad = verify(_broken("bad", _fp32_only), shapes=SHAPES[:3])
    assert not bad.passed
    assert "4 of 12 checks failed" in bad.render()
    # a check whose op raised on every shape shows no error figure, not 0.00e+00
    half = [r for r in bad.results if r.dtype == "fp16" and r.check.startswith("forward")]
    assert half and all(r.computed == 0 for r in half)
    assert "none ran" in bad.render() and "| 0.00e+00" not in bad.render()
    cuda_only = verify(_broken("gpu", _lora, devices=frozenset({"cuda"})))
    if not torch.cuda.is_available():
        assert not cuda_only.passed
        assert "nothing could be verified on this machine" in cuda_only.render()


def test_poisoning_is_visible() -> None:
    with poisoned_memory():
        assert torch.isnan(torch.empty(8)).all()
    assert rel_error(torch.full((2,), float("nan")), torch.ones(2)) == float("inf")


def test_rel_error_of_empty_and_zero() -> None:
    assert rel_error(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.float64)) == 0.0
    assert rel_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert rel_error(torch.ones(2), torch.zeros(2)) == float("inf")


def test_base_is_not_lora() -> None:
    """base drops the adapter: its error against the LoRA oracle is far above tolerance."""
    w, x = SHAPES[8].make(torch.float32, "cpu", seed=7)
    assert rel_error(IMPLS["base"].build(w)(x), reference_forward(w, x)) > 0.1


def test_oracle_gradients_match_float64_autograd() -> None:
    """The closed-form oracle agrees with autograd run in float64."""
    w, x = SHAPES[9].make(torch.float32, "cpu", seed=9)
    x64, A, B = (t.double().requires_grad_() for t in (x, w.A, w.B))
    W, b = w.W.double(), w.b
    y = x64 @ W.T + w.scale * (x64 @ A.T) @ B.T
    y = y if b is None else y + b.double()
    g = torch.randn_like(y)
    y.backward(g)
    ref = reference_grads(w, x, g)
    for got, want in ((x64.grad, ref.x), (A.grad, ref.A), (B.grad, ref.B)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_missing_gradient_counts_as_inf() -> None:
    w, x = SHAPES[10].make(torch.float32, "cpu", seed=12)
    w.requires_grad_()
    x.requires_grad_()
    base = IMPLS["base"].build(w, mode="train")
    errors = gradient_errors(base, w, x, torch.randn(*x.shape[:-1], w.out_features))
    assert errors["A"] == errors["B"] == float("inf")
