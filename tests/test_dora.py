"""DoRA: the weights and their bad input, the factored norm, the float64 oracle against
torch.autograd, the variant checks of the registry, PEFT's DoRA on the same weights, and the
kit catching broken DoRA impls. (Every DoRA impl also passes the conformance kit in
test_equivalence.py.)"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from lora_kernels import IMPLS, Impl, LoRAWeights, reference_forward, reference_grads, rel_error
from lora_kernels.conformance import SHAPES, run_checks
from lora_kernels.dora import DoRAWeights, dora_reference_forward
from lora_kernels.dora.norm import factors, row_sq_norms, weight_sq_norms
from lora_kernels.reference import forward_error

DORA_IMPLS = [n for n, i in IMPLS.items() if i.variant == "dora"]
needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None,
    reason="peft is not installed: pip install 'lora-bench[peers]'",
)


def dora(**kwargs: object) -> DoRAWeights:
    return DoRAWeights.random(24, 12, 4, seed=5, **kwargs)  # type: ignore[arg-type]


def test_registry_lists_the_dora_impls_with_honest_modes() -> None:
    assert DORA_IMPLS == [
        "dora_dense", "dora_factored", "dora_cached", "dora_merged", "dora_autograd", "peft_dora"
    ]  # fmt: skip
    infer_only = {n for n in DORA_IMPLS if IMPLS[n].modes == frozenset({"infer"})}
    assert infer_only == {"dora_cached", "dora_merged"}
    assert [n for n in DORA_IMPLS if not IMPLS[n].exact_norm] == ["peft_dora"]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"m": torch.ones(11)}, ValueError, r"m must have shape \(out,\) = \(12,\), got \(11,\)"),
        ({"m": torch.ones(12, 1)}, ValueError, r"m must have shape \(out,\)"),
        ({"m": torch.full((12,), float("nan"))}, ValueError, "m holds non-finite values"),
        ({"m": torch.full((12,), float("inf"))}, ValueError, "m holds non-finite values"),
        ({"m": torch.ones(12, dtype=torch.float64)}, TypeError, "m has dtype torch.float64"),
        ({"m": torch.ones(12, dtype=torch.float16)}, TypeError, "must share one dtype"),
        ({"m": [1.0] * 12}, TypeError, "m must be a torch.Tensor"),
        ({"detach_norm": 1}, TypeError, "detach_norm must be a bool"),
        ({"A": torch.ones(4, 23)}, ValueError, r"A must have shape \(r, in\)"),
    ],
)
def test_bad_dora_weights(change: dict, error: type, match: str) -> None:
    w = dora()
    fields = {"W": w.W, "b": w.b, "A": w.A, "B": w.B, "scale": w.scale, "m": w.m, **change}
    with pytest.raises(error, match=match):
        DoRAWeights(**fields)


def test_from_lora_starts_as_the_lora_layer(gen: torch.Generator) -> None:
    """m defaults to ‖W + s·B A‖ per row, so c = 1 and DoRA computes LoRA's output; with B
    zero that is ‖W‖, the paper's initialisation, and the base layer's output."""
    lora = LoRAWeights.random(40, 30, 6, seed=2)
    w = DoRAWeights.from_lora(lora)
    x = torch.randn(5, 40, generator=gen)
    assert rel_error(reference_forward(w, x), reference_forward(lora, x)) < 1e-6  # m is fp32
    torch.testing.assert_close(w.m, (lora.W + lora.scale * lora.B @ lora.A).norm(dim=1))
    fresh = DoRAWeights.from_lora(LoRAWeights(lora.W, lora.b, lora.A, 0 * lora.B, lora.scale))
    torch.testing.assert_close(fresh.m, lora.W.norm(dim=1))
    with pytest.raises(TypeError, match="lora must be LoRAWeights"):
        DoRAWeights.from_lora(w)  # type: ignore[arg-type]


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_factored_norm_is_the_dense_norm(dtype: torch.dtype, tol: float) -> None:
    """‖W_i‖² + 2s·B_i·(A W_iᵀ) + s²·B_i (A Aᵀ) B_iᵀ = ‖W_i + s·B_i A‖², no out×in matrix."""
    w = DoRAWeights.random(96, 80, 16, seed=9, dtype=torch.float32)
    W, A, B = (t.to(dtype) for t in (w.W, w.A, w.B))
    sq = row_sq_norms(weight_sq_norms(W), *factors(W, A), B, w.scale)
    dense = (W.double() + w.scale * B.double() @ A.double()).norm(dim=1).square()
    assert sq.dtype == torch.float32
    assert rel_error(sq, dense) < tol


@pytest.mark.parametrize("detach_norm", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_oracle_matches_autograd_in_float64(seed: int, detach_norm: bool) -> None:
    """The closed-form oracle against torch.autograd of the definition, on random shapes."""
    gen = torch.Generator().manual_seed(seed)
    in_f, out_f = (int(v) for v in torch.randint(2, 40, (2,), generator=gen))
    rank = int(torch.randint(1, min(in_f, out_f) + 1, (1,), generator=gen))
    w = DoRAWeights.random(in_f, out_f, rank, seed=seed, detach_norm=detach_norm,
                           dtype=torch.float32)  # fmt: skip
    x = torch.randn(3, 2, in_f, generator=gen)
    g = torch.randn(3, 2, out_f, generator=gen)
    W, b = w.W.double(), w.b.double()
    A, B, m, x64 = (t.double().requires_grad_() for t in (w.A, w.B, w.m, x))
    V = W + w.scale * B @ A
    n = V.norm(dim=1)
    y = (x64 @ V.T) * (m / (n.detach() if detach_norm else n)) + b
    y.backward(g.double())
    ref = reference_grads(w, x, g)
    assert rel_error(reference_forward(w, x), y) < 1e-12
    for name, t in (("x", x64), ("A", A), ("B", B), ("m", m)):
        assert rel_error(getattr(ref, name), t.grad) < 1e-12, name
    if not detach_norm:  # the norm's term matters: detaching gives another gradient
        other = reference_grads(DoRAWeights(*dora_fields(w), detach_norm=True), x, g)
        assert rel_error(other.A, ref.A) > 1e-3


def dora_fields(w: DoRAWeights) -> tuple:
    return w.W, w.b, w.A, w.B, w.scale, w.m


def test_a_zero_row_gives_the_bias_alone(gen: torch.Generator) -> None:
    """Where W + s·B A has a zero row, m / ‖·‖ is taken as 0: that output is b, and no
    gradient reaches m or the norm from it. Every DoRA impl of ours agrees (the kit checks
    them on such rows too)."""
    w0 = dora()
    W, B = w0.W.clone(), w0.B.clone()
    W[3], B[3] = 0, 0
    w = DoRAWeights(W, w0.b, w0.A, B, w0.scale, w0.m)
    x = torch.randn(6, 24, generator=gen)
    y = dora_reference_forward(w, x)
    assert torch.equal(y[:, 3], w.b[3].double().expand(6))
    grads = reference_grads(w, x, torch.randn(6, 12, generator=gen))
    assert grads.m[3] == 0 and torch.isfinite(grads.A).all()
    for name in DORA_IMPLS:
        if IMPLS[name].origin == "ours":
            assert forward_error(IMPLS[name].build(w), w, x) < 1e-5, name


@needs_peft
def test_peft_dora_gives_nan_on_a_zero_row(gen: torch.Generator) -> None:
    """PEFT divides by the zero norm; ours define the row (above). The kit leaves PEFT's
    zero-row shapes out for this reason, and this test notices if PEFT changes."""
    w0 = dora()
    W, B = w0.W.clone(), w0.B.clone()
    W[3], B[3] = 0, 0
    w = DoRAWeights(W, w0.b, w0.A, B, w0.scale, w0.m)
    y = IMPLS["peft_dora"].build(w)(torch.randn(6, 24, generator=gen))
    assert torch.isnan(y[:, 3]).all() and torch.isfinite(y[:, :3]).all()


@needs_peft
@pytest.mark.parametrize("mode", ["infer", "train"])
def test_ours_match_peft_dora_on_the_same_weights(mode: str, gen: torch.Generator) -> None:
    """Each DoRA impl of ours against PEFT's layer itself (not only the oracle)."""
    x = torch.randn(2, 7, 24, generator=gen)
    g = torch.randn(2, 7, 12, generator=gen)

    def run(name: str) -> list[torch.Tensor]:
        w = dora().requires_grad_(mode == "train")
        xi = x.clone().requires_grad_(mode == "train")
        y = IMPLS[name].build(w, mode)(xi)
        if mode == "infer":
            return [y.detach()]
        y.backward(g)
        return [y.detach(), xi.grad, *(t.grad for t in w.trainable().values())]

    peft = run("peft_dora")
    for name in DORA_IMPLS:
        if mode in IMPLS[name].modes and name != "peft_dora":
            for got, want in zip(run(name), peft, strict=True):
                assert rel_error(got, want) < 1e-5, name


def test_variants_do_not_mix() -> None:
    w = dora()
    with pytest.raises(ValueError, match=r"computes LoRA and would ignore DoRA's magnitude.*dora_"):
        IMPLS["addmm"].build(w)
    with pytest.raises(ValueError, match=r"needs DoRAWeights.*got LoRAWeights"):
        IMPLS["dora_factored"].build(w.lora)
    with pytest.raises(TypeError, match="builds on weights, got dict"):
        IMPLS["dora_factored"].build({})  # type: ignore[arg-type]
    for name in ("dora_cached", "dora_merged"):
        with pytest.raises(ValueError, match=rf"{name}' supports modes \['infer'\], not 'train'"):
            IMPLS[name].build(w, "train")


@needs_peft
def test_peft_dora_refuses_the_exact_gradient() -> None:
    exact = DoRAWeights(*dora_fields(dora()), detach_norm=False)
    with pytest.raises(ValueError, match=r"treats the norm as a constant.*detach_norm=True"):
        IMPLS["peft_dora"].build(exact, "train")
    IMPLS["peft_dora"].build(exact, "infer")  # the forward does not depend on it


def test_factored_sees_in_place_updates(gen: torch.Generator) -> None:
    """dora_factored and dora_autograd keep W Aᵀ while A is unchanged: an optimizer step
    (in place, under no_grad) must refresh it."""
    x = torch.randn(5, 24, generator=gen)
    for name in ("dora_factored", "dora_autograd"):
        w = dora()
        op = IMPLS[name].build(w)
        op(x)
        with torch.no_grad():
            w.A.add_(0.3 * torch.randn(w.A.shape, generator=gen))
            w.B.mul_(1.5)
            w.m.add_(0.1)
        assert forward_error(op, w, x) < 1e-5, name


def _broken(name: str, fn) -> Impl:
    return Impl(name, f"deliberately broken: {name}", lambda w: lambda x: fn(w, x), variant="dora")


def _dora_with(norm_of):
    def fn(w: DoRAWeights, x: torch.Tensor) -> torch.Tensor:
        V = w.W + w.scale * w.B @ w.A
        return F.linear(x, V) * (w.m / norm_of(V, w)) + (0 if w.b is None else w.b)

    return fn


@pytest.mark.parametrize(
    ("impl", "mode", "failure"),
    [
        (
            _broken("no_magnitude", lambda w, x: F.linear(x, w.W + w.scale * w.B @ w.A, w.b)),
            "infer",
            "'y'",
        ),
        (_broken("norm_of_W", _dora_with(lambda V, w: w.W.norm(dim=1))), "infer", "'y'"),
        (_broken("column_norms", _dora_with(lambda V, w: V.norm(dim=0).mean())), "infer", "'y'"),
        (
            _broken("norm_always_detached", _dora_with(lambda V, w: V.norm(dim=1).detach())),
            "train",
            "'dA'",
        ),
        (_broken("norm_never_detached", _dora_with(lambda V, w: V.norm(dim=1))), "train", "'dA'"),
    ],
    ids=lambda v: v.name if isinstance(v, Impl) else None,
)
def test_the_kit_catches_broken_dora_impls(impl: Impl, mode: str, failure: str) -> None:
    """A dropped m, the norm of W or of columns, and the wrong norm gradient all fail."""
    checks = run_checks(impl, "cpu", torch.float32, mode, SHAPES[:4], zero_rows=False)
    failures = " ".join(r.failure for r in checks)
    assert failure in failures, failures
