"""LoRAWeights validation and the registry's lookups: bad input raises a clear error."""

from __future__ import annotations

import math

import pytest
import torch

from lora_kernels import IMPLS, LoRAWeights, get_impl
from lora_kernels.weights import check_rank, scaling

IN, OUT, RANK = 12, 6, 3


def weights(**overrides: object) -> LoRAWeights:
    w = LoRAWeights.random(IN, OUT, RANK, seed=0)
    fields = {"W": w.W, "b": w.b, "A": w.A, "B": w.B, "scale": w.scale, **overrides}
    return LoRAWeights(**fields)


def test_random_weights_are_seeded_and_nonzero() -> None:
    a, b = LoRAWeights.random(IN, OUT, RANK, seed=5), LoRAWeights.random(IN, OUT, RANK, seed=5)
    assert torch.equal(a.W, b.W)
    assert torch.equal(a.B, b.B)
    assert a.B.abs().min() > 0, "B must not be zero, or tests never exercise the adapter"
    assert (a.in_features, a.out_features, a.rank) == (IN, OUT, RANK)
    assert a.scale == pytest.approx(16.0 / RANK)
    assert LoRAWeights.random(IN, OUT, RANK, bias=False).b is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_random_weights_dtype(dtype: torch.dtype) -> None:
    w = LoRAWeights.random(IN, OUT, RANK, dtype=dtype)
    assert {t.dtype for t in (w.W, w.b, w.A, w.B)} == {dtype}


def test_scaling_and_rslora() -> None:
    assert scaling(16, 4) == 4.0
    assert scaling(16, 4, use_rslora=True) == 8.0
    assert scaling(1.0, 9, use_rslora=True) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"A": torch.randn(RANK, IN + 1)}, ValueError, r"A must have shape \(r, in\)"),
        ({"B": torch.randn(OUT, RANK + 1)}, ValueError, r"B must have shape \(out, r\)"),
        ({"B": torch.randn(OUT + 1, RANK)}, ValueError, r"B must have shape \(out, r\)"),
        ({"b": torch.randn(OUT + 1)}, ValueError, r"b must have shape \(out,\)"),
        ({"W": torch.randn(OUT, IN, 1)}, ValueError, "W must be 2-D"),
        ({"A": torch.randn(IN + 1, IN)}, ValueError, r"rank must be in \[1, min"),
        ({"A": torch.randn(0, IN), "B": torch.randn(OUT, 0)}, ValueError, "rank must be in"),
        ({"A": torch.randn(RANK, IN, dtype=torch.float64)}, TypeError, "allowed: torch.float32"),
        ({"A": torch.randn(RANK, IN).half()}, TypeError, "must share one dtype"),
        ({"b": torch.randn(OUT).bfloat16()}, TypeError, "must share one dtype"),
        ({"A": torch.randn(RANK, IN, device="meta")}, ValueError, "must be on one device"),
        ({"W": [[1.0]]}, TypeError, "W must be a torch.Tensor"),
        ({"scale": "2"}, TypeError, "scale must be a number"),
        ({"scale": math.nan}, ValueError, "scale must be finite"),
    ],
)
def test_bad_weights(overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        weights(**overrides)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(4, IN + 1), ValueError, r"x must have shape \(\.\.\., in\) with in = 12"),
        (torch.randn(()), ValueError, "x must have shape"),
        (torch.randn(4, IN).half(), TypeError, "x has dtype torch.float16"),
        (torch.randn(4, IN, device="meta"), ValueError, "x is on meta"),
        ([1.0] * IN, TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_input(x: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        weights().check_input(x)


@pytest.mark.parametrize(
    ("rank", "error", "match"),
    [
        (0, ValueError, r"\[1, 6\], got 0"),
        (-2, ValueError, r"\[1, 6\], got -2"),
        (7, ValueError, r"\[1, 6\], got 7"),
        (2.0, TypeError, "rank must be an int, got float"),
        (True, TypeError, "rank must be an int, got bool"),
    ],
)
def test_bad_rank(rank: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        check_rank(rank, IN, OUT)


@pytest.mark.parametrize("alpha", [0, -1.0, math.inf, math.nan])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        scaling(alpha, 4)


def test_check_finite_names_the_tensor() -> None:
    A = torch.randn(RANK, IN)
    A[0, 0] = math.inf
    with pytest.raises(ValueError, match="A holds non-finite values"):
        weights(A=A).check_finite()
    weights().check_finite()


def test_unknown_impl_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown impl 'fast'; known: .*two_step"):
        get_impl("fast")
    with pytest.raises(TypeError, match="impl name must be a str"):
        get_impl(3)  # type: ignore[arg-type]


def test_unsupported_mode_device_and_dtype() -> None:
    with pytest.raises(ValueError, match=r"impl 'merged' supports modes \['infer'\], not 'train'"):
        IMPLS["merged"].build(weights(), mode="train")
    with pytest.raises(ValueError, match="mode must be one of"):
        IMPLS["two_step"].build(weights(), mode="serve")
    meta = LoRAWeights.random(IN, OUT, RANK, device="meta")
    with pytest.raises(ValueError, match=r"supports devices \['cpu', 'cuda'\], not 'meta'"):
        IMPLS["two_step"].build(meta)


def test_registry_entries_are_complete() -> None:
    assert next(iter(IMPLS)) == "base"
    origins = [impl.origin for impl in IMPLS.values()]
    assert origins == sorted(origins, key=["ours", "peer", "plugin"].index), "ours, peers, plugins"
    assert {n for n, i in IMPLS.items() if i.origin == "peer"} == {
        "peft",
        "peft_merged",
        "peft_dora",
        "loralib",
        "bnb_base",
        "peft_qlora",
        "peft_conv",
        "peft_conv_dora",
    }
    for name, impl in IMPLS.items():
        assert impl.name == name
        assert impl.description and "\n" not in impl.description
        assert impl.modes and impl.devices and impl.dtypes


def test_unsupported_dtype() -> None:
    from lora_kernels.registry import Impl

    fp32_only = Impl(
        "fp32_only", "test impl", IMPLS["two_step"].builder, dtypes=frozenset({torch.float32})
    )
    half = LoRAWeights.random(IN, OUT, RANK, dtype=torch.bfloat16)
    with pytest.raises(
        ValueError, match=r"supports dtypes \['torch.float32'\], not torch.bfloat16"
    ):
        fp32_only.build(half)


def test_merge_stays_finite_is_a_bound_no_overflow_passes() -> None:
    """merge() writes W + s·B A in place where this bound holds, so it must never hold where
    the sum overflows; NaN and inf fail it (the exact check then refuses)."""
    from lora_kernels.weights import merge_stays_finite

    w = LoRAWeights.random(16, 8, 4, seed=1)
    assert merge_stays_finite(w.W, w.A, w.B, w.scale)
    for bad in (float("nan"), float("inf")):
        W = w.W.clone()
        W[0, 0] = bad
        assert not merge_stays_finite(W, w.A, w.B, w.scale)
    half = LoRAWeights.random(16, 8, 4, seed=1, dtype=torch.float16)
    W = half.W.clone()
    W[0, 0] = 6e4  # fp16's largest is 65504
    assert not merge_stays_finite(W, half.A, half.B, 1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):  # wherever the bound holds, the exact sum is finite
        scale = float(10 ** torch.empty(1).uniform_(0, 4, generator=gen))
        W = (torch.randn(8, 8, generator=gen) * 3e4).half()
        A, B = torch.randn(2, 8, generator=gen).half(), torch.randn(8, 2, generator=gen).half()
        if merge_stays_finite(W, A, B, scale):
            assert torch.isfinite(torch.addmm(W.float(), B.float(), A.float(), alpha=scale)
                                  .half()).all()  # fmt: skip


def test_an_in_place_merge_writes_the_merged_weight_s_values() -> None:
    from lora_kernels import LoRAConv2d, LoRALinear

    torch.manual_seed(0)
    layer = LoRALinear(12, 10, 4)
    torch.nn.init.normal_(layer.lora_B)
    want = layer.merged_weight()
    layer.merge()
    assert torch.equal(layer.base.weight, want)
    conv = LoRAConv2d(torch.nn.Conv2d(3, 5, 3), 2)
    torch.nn.init.normal_(conv.lora_B)
    want = conv.weights().merged_weight()
    conv.merge()
    assert torch.equal(conv.base.weight, want)
