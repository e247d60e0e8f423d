"""Every multi-adapter impl computes the multi-adapter function: against the per-token float64
oracle on every index distribution, mixed ranks with random padding, base-only (-1) tokens
and odd shapes, on poisoned memory, leaving its inputs unchanged. Bad input gets a clear
error and changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lora_kernels import (
    DISTRIBUTIONS,
    MULTI_IMPLS,
    MultiLoRAWeights,
    get_multi_impl,
    multi_reference_forward,
    random_index,
    rel_error,
    tolerance,
)
from lora_kernels.multi.reference import multi_forward_error
from lora_kernels.weights import DTYPE_NAMES

DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}
# (tokens, in, out, ranks): one token, more adapters than tokens, rank 1 and r = min(in, out),
# sizes off any block grid, mixed ranks, more tokens than a chunk or a block.
SHAPES = [
    (1, 16, 12, (4,)),
    (5, 24, 40, (3, 1, 8, 2, 5, 8, 7)),
    (37, 33, 20, (20, 4, 1)),
    (70, 96, 130, (16, 4, 8, 16, 2)),
    (130, 64, 48, (8,) * 16),
]
IDS = [f"T{t}-{i}x{o}-n{len(r)}" for t, i, o, r in SHAPES]


def _available(name: str, dtype: torch.dtype) -> None:
    reason = MULTI_IMPLS[name].unavailable_reason("cpu", dtype, "infer")
    if reason:
        pytest.skip(reason)  # CUDA-only impls: see test_triton_sgmv.py


def _case(shape, distribution: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    tokens, in_f, out_f, ranks = shape
    w = MultiLoRAWeights.random(in_f, out_f, ranks, seed=seed, dtype=dtype)
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    index = random_index(distribution, tokens, len(ranks), base_share=0.2, seed=seed + 2)
    return w, x, index


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("name", list(MULTI_IMPLS))
def test_matches_oracle(name: str, shape: tuple, distribution: str) -> None:
    _available(name, torch.float32)
    w, x, index = _case(shape, distribution, seed=len(shape[3]))
    x0, index0 = x.clone(), index.clone()
    err = multi_forward_error(MULTI_IMPLS[name].build(w), w, x, index)
    assert err <= tolerance(torch.float32, "cpu"), err
    assert torch.equal(x, x0) and torch.equal(index, index0), "the op changed its inputs"


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("name", list(MULTI_IMPLS))
def test_half_precision(name: str, dtype: str) -> None:
    _available(name, DTYPES[dtype])
    w, x, index = _case(SHAPES[3], "uniform", DTYPES[dtype])
    err = multi_forward_error(MULTI_IMPLS[name].build(w), w, x, index)
    assert err <= tolerance(DTYPES[dtype], "cpu"), err


@pytest.mark.parametrize("name", list(MULTI_IMPLS))
def test_leading_dims_and_no_tokens(name: str) -> None:
    _available(name, torch.float32)
    w, x, index = _case(SHAPES[2], "zipf")
    op = MULTI_IMPLS[name].build(w)
    x3, index3 = x[:36].reshape(3, 12, -1), index[:36].reshape(3, 12)
    assert multi_forward_error(op, w, x3, index3) <= 1e-5
    empty = op(x[:0], index[:0])
    assert empty.shape == (0, w.out_features)


def test_cases_are_not_trivial() -> None:
    """Each adapter's term is far above the tolerance, the padding changes the function, and
    the index matters: a test cannot pass on the base layer, on the padded ranks, or with the
    wrong adapter per token."""
    w, x, index = _case(SHAPES[3], "uniform")
    ref = multi_reference_forward(w, x, index)
    assert rel_error(F.linear(x, w.W, w.b), ref) > 1e-2
    full = MultiLoRAWeights(w.W, w.b, w.A, w.B, (w.r_max,) * w.adapters, w.scales)
    assert rel_error(multi_reference_forward(full, x, index), ref) > 1e-2
    shifted = torch.where(index >= 0, (index + 1) % w.adapters, index)
    assert rel_error(multi_reference_forward(w, x, shifted), ref) > 1e-2


def test_oracle_agrees_with_single_adapter_layers() -> None:
    """Every token of adapter i computes LoRAWeights i's function; -1 tokens the base's."""
    from lora_kernels import reference_forward

    w, x, index = _case(SHAPES[3], "uniform")
    ref = multi_reference_forward(w, x, index)
    for i in range(w.adapters):
        rows = index == i
        assert torch.allclose(ref[rows], reference_forward(w.adapter(i), x[rows]), atol=1e-12)
    base = (x.double() @ w.W.double().T + w.b.double())[index < 0]
    assert torch.allclose(ref[index < 0], base, atol=1e-12)


# --- index distributions ---------------------------------------------------------------------


def test_distributions() -> None:
    n, T = 8, 4000
    same = random_index("identical", T, n)
    assert same.dtype == torch.int64 and same.shape == (T,) and bool((same == 0).all())
    uniform = torch.bincount(random_index("uniform", T, n), minlength=n)
    assert uniform.min() > 0.7 * T / n and uniform.max() < 1.3 * T / n
    zipf = torch.bincount(random_index("zipf", T, n), minlength=n).double()
    share = zipf / T
    expected = (1 / torch.arange(1, n + 1)) / (1 / torch.arange(1, n + 1)).sum()
    assert torch.allclose(share, expected.double(), atol=0.03)
    seqs = random_index("per_sequence", 10, 3, seqs=4)
    assert seqs.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 0, 0]
    assert random_index("per_sequence", 64, 4).unique_consecutive().tolist() == [0, 1, 2, 3]
    assert torch.equal(random_index("zipf", 50, 5, seed=3), random_index("zipf", 50, 5, seed=3))
    with_base = random_index("uniform", T, n, base_share=0.25)
    assert 0.2 < float((with_base == -1).double().mean()) < 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "normal"}, "unknown distribution 'normal'; known: identical"),
        ({"tokens": 0}, "tokens must be an int >= 1"),
        ({"adapters": 0}, "adapters must be an int >= 1"),
        ({"base_share": 1.5}, r"base_share must be in \[0, 1\]"),
        ({"distribution": "per_sequence", "seqs": 9}, r"seqs must be an int in \[1, tokens = 8\]"),
    ],
)
def test_distribution_errors(kwargs: dict, message: str) -> None:
    args = {"distribution": "uniform", "tokens": 8, "adapters": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        random_index(args.pop("distribution"), args.pop("tokens"), args.pop("adapters"), **args)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "error", "message"),
    [
        (torch.tensor([0, 1, 4, 0]), ValueError, r"index holds 4: adapter ids must be in \[-1, 3"),
        (torch.tensor([0, -2, 1, 0]), ValueError, r"index holds -2"),
        (torch.tensor([0.0, 1, 2, 0]), TypeError, "index must be an integer tensor"),
        (torch.tensor([True, False, True, False]), TypeError, "integer tensor"),
        ([0, 1, 2, 0], TypeError, "index must be a torch.Tensor, got list"),
        (torch.tensor([0, 1, 2]), ValueError, r"one adapter id per token, shape \(4,\)$"),
    ],
)
def test_bad_index(index: object, error: type, message: str) -> None:
    w = MultiLoRAWeights.random(8, 6, [2, 4, 4, 1])
    x = torch.randn(4, 8)
    before = index.clone() if isinstance(index, torch.Tensor) else list(index)
    with pytest.raises(error, match=message):
        w.check_index(index, x)
    assert (index == before) if isinstance(index, list) else torch.equal(index, before)


def test_int32_index_is_accepted() -> None:
    w, x, index = _case(SHAPES[1], "uniform")
    flat = w.check_index(index.to(torch.int32), x)
    assert flat.dtype == torch.int64 and torch.equal(flat, index)


def _stack(**changes: object) -> dict:
    w = MultiLoRAWeights.random(8, 6, [2, 4])
    fields = {"W": w.W, "b": w.b, "A": w.A, "B": w.B, "ranks": w.ranks, "scales": w.scales}
    return {**fields, **changes}


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"ranks": (2, 5)}, ValueError, r"ranks\[1\] = 5: an adapter's rank must be in"),
        ({"ranks": (0, 4)}, ValueError, r"ranks\[0\] = 0"),
        ({"ranks": (2,)}, ValueError, r"one rank per adapter \(2\)"),
        ({"A": torch.zeros(0, 4, 8), "B": torch.zeros(0, 6, 4), "ranks": (), "scales": ()},
         ValueError, "the adapter stack is empty"),
        ({"A": torch.zeros(2, 4, 8, dtype=torch.float64)}, TypeError, "A has dtype torch.float64"),
        ({"A": torch.zeros(2, 4, 8, dtype=torch.bfloat16)}, TypeError, "must share one dtype"),
        ({"A": torch.zeros(2, 4, 8, device="meta")}, ValueError, "must be on one device"),
        ({"A": torch.zeros(2, 4, 7)}, ValueError, r"A must be a stack \(n, r_max, in\) with in"),
        ({"B": torch.zeros(2, 5, 4)}, ValueError, r"B must have shape \(n, out, r_max\) = \(2, 6"),
        ({"scales": (1.0, float("nan"))}, ValueError, r"scales\[1\] must be a finite number"),
    ],
)  # fmt: skip
def test_bad_stack(changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        MultiLoRAWeights(**_stack(**changes))


def test_input_must_match_the_stack() -> None:
    w = MultiLoRAWeights.random(8, 6, [2, 4])
    index = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match=r"x has dtype torch\.bfloat16; the weights have"):
        w.check_index(index, torch.randn(3, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="x is on meta; the weights are on cpu"):
        w.check_index(index, torch.randn(3, 8, device="meta"))
    with pytest.raises(ValueError, match=r"x must have shape \(..., in\) with in = 8"):
        w.check_index(index, torch.randn(3, 7))
    with pytest.raises(ValueError, match="index is on meta; x is on cpu"):
        w.check_index(index.to("meta"), torch.randn(3, 8))


def test_stack_refuses_adapters_of_another_base() -> None:
    W = torch.randn(6, 8)
    good = (torch.randn(2, 8), torch.randn(6, 2), 1.0)
    with pytest.raises(ValueError, match=r"adapter 1 has A \(2, 9\) and B \(6, 2\); every adapter"):
        MultiLoRAWeights.stack(W, None, [good, (torch.randn(2, 9), torch.randn(6, 2), 1.0)])
    with pytest.raises(ValueError, match=r"adapter 1 has A \(2, 8\) and B \(5, 2\)"):
        MultiLoRAWeights.stack(W, None, [good, (torch.randn(2, 8), torch.randn(5, 2), 1.0)])
    with pytest.raises(TypeError, match=r"adapter 1 is torch\.float16/torch\.float16 on cpu/cpu"):
        MultiLoRAWeights.stack(W, None, [good, (good[0].half(), good[1].half(), 1.0)])
    with pytest.raises(ValueError, match="no adapters to stack"):
        MultiLoRAWeights.stack(W, None, [])


def test_stack_pads_and_keeps_each_adapter() -> None:
    W, b = torch.randn(6, 8), torch.randn(6)
    adapters = [(torch.randn(r, 8), torch.randn(6, r), 0.5 * r) for r in (1, 4, 2)]
    w = MultiLoRAWeights.stack(W, b, adapters)
    assert w.ranks == (1, 4, 2) and w.scales == (0.5, 2.0, 1.0) and w.r_max == 4
    for i, (A, B, s) in enumerate(adapters):
        one = w.adapter(i)
        assert torch.equal(one.A, A) and torch.equal(one.B, B) and one.scale == s
    assert not w.A[0, 1:].any() and not w.B[2, :, 2:].any()


def test_non_finite_weights_are_named() -> None:
    w = MultiLoRAWeights.random(8, 6, [2, 4])
    w.B[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="B holds non-finite values"):
        w.check_finite()


def test_unknown_impl() -> None:
    with pytest.raises(ValueError, match="unknown multi-adapter impl 'sgmv'; known: loop, "):
        get_multi_impl("sgmv")


def test_cuda_only_impl_says_so() -> None:
    reason = MULTI_IMPLS["triton_sgmv"].unavailable_reason("cpu", torch.float32, "infer")
    assert "supports devices ['cuda'], not 'cpu'" in reason
    with pytest.raises(ValueError, match="supports devices"):
        MULTI_IMPLS["triton_sgmv"].build(MultiLoRAWeights.random(8, 6, [2]))
