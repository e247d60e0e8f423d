"""Kit 3 of adapters and quantized bases, the quantized half: a QLoRALinear of a random
format, shape, rank, compute dtype and impl goes through a random sequence of .to(), .half(),
.bfloat16(), .float(), .double(), .type(), moves, mode changes, merges and unmerges. After
each call the layer either computes the float64 oracle's answer on its dequantized base in
the dtype it now says it has (forward, and the gradients of x, A and B; merged: the
requantized base's), or the call raised TypeError and the layer is as it was: the same
tensors, bytes and answer."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from lora_kernels import IMPLS as ALL_IMPLS
from lora_kernels import LoRAWeights, reference_forward, rel_error
from lora_kernels.quant import QLoRAWeights
from lora_kernels.quant.layer import QLoRALinear
from lora_kernels.reference import reference_grads
from lora_kernels.weights import SUPPORTED_DTYPES

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
FORMATS = ["int8", "nf4", "fp4"] if HAS_BNB else ["int8"]  # without bitsandbytes: int8 only
IMPLS = [n for n, i in ALL_IMPLS.items() if i.variant == "qlora" and i.lora_equivalent
         and not i.unavailable_reason("cpu", torch.float32, "train")]  # fmt: skip
FP32_BOUND = 1e-5
HALF_BOUND = 0.05  # tiny layers: one cancelling dot product moves fp16's error past 5e-3
CHECKS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    suppress_health_check=[HealthCheck.too_slow],
)
CALLS: dict[str, Callable[[nn.Module], object]] = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "float": lambda m: m.float(),
    "double": lambda m: m.double(),
    "to(fp16)": lambda m: m.to(torch.float16),
    "to(bf16)": lambda m: m.to(torch.bfloat16),
    "to(fp32)": lambda m: m.to(torch.float32),
    "to(fp64)": lambda m: m.to(torch.float64),
    "to(cpu, fp16)": lambda m: m.to("cpu", torch.float16),
    "to(tensor bf16)": lambda m: m.to(torch.empty(0, dtype=torch.bfloat16)),
    "to(meta)": lambda m: m.to("meta"),
    "to_empty(meta)": lambda m: m.to_empty(device="meta"),
    "type(int8)": lambda m: m.type(torch.int8),
    "type(fp16)": lambda m: m.type(torch.float16),
    "cpu": lambda m: m.cpu(),
    "train": lambda m: m.train(),
    "eval": lambda m: m.eval(),
    "requires_grad_(False)": lambda m: m.requires_grad_(False),
    "requires_grad_(True)": lambda m: m.requires_grad_(True),
    "share_memory": lambda m: m.share_memory(),
    "merge or unmerge": lambda m: m.unmerge() if m.merged else m.merge(),
}


@st.composite
def qlora_layers(draw: st.DrawFn) -> QLoRALinear:
    """A layer of a random format, shape (4-bit: whole 64-blocks), rank, dtype, bias and impl,
    with B drawn at random (never zero)."""
    fmt = draw(st.sampled_from(FORMATS))
    in_f = 64 * draw(st.integers(1, 2)) if fmt != "int8" else draw(st.integers(8, 80))
    out_f = draw(st.integers(8, 40))  # a norm over a few outputs: no lone cancelling dot
    rank = draw(st.integers(1, min(in_f, out_f, 8)))
    dtype = draw(st.sampled_from(SUPPORTED_DTYPES))
    w = LoRAWeights.random(in_f, out_f, rank, bias=draw(st.booleans()), dtype=dtype,
                           seed=draw(st.integers(0, 2**16)))  # fmt: skip
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    B = (torch.randn(out_f, rank, generator=gen) * 0.3).to(dtype)
    q = QLoRAWeights.quantize(w, fmt)
    impl = draw(st.sampled_from(IMPLS))
    layer = QLoRALinear(q.base, q.A.clone(), B, q.scale, q.b, impl=impl)
    event(f"{fmt} {dtype} {layer.impl}")
    return layer


def state(layer: QLoRALinear) -> tuple:
    """What a refused call must leave: every tensor's identity, dtype, device and bytes, the
    base's compute dtype and the flags."""
    tensors = [(n, id(t), t.dtype, t.device, t.detach().clone(), t.requires_grad)
               for n, t in layer.named_parameters()]  # fmt: skip
    codes = {k: v.clone() for k, v in layer.quant.tensors().items()}
    return tensors, codes, layer.quant.dtype, layer.training, layer.impl


def unchanged(before: tuple, after: tuple) -> bool:
    (ta, ca, *rest_a), (tb, cb, *rest_b) = before, after
    same_tensors = [t[:4] + t[5:] for t in ta] == [t[:4] + t[5:] for t in tb] and all(
        torch.equal(x[4], y[4]) for x, y in zip(ta, tb, strict=True)
    )
    same_codes = ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
    return same_tensors and same_codes and rest_a == rest_b


def bound(dtype: torch.dtype) -> float:
    return FP32_BOUND if dtype == torch.float32 else HALF_BOUND


def assert_computes_the_oracle(layer: QLoRALinear, seed: int) -> None:
    """Forward, and with A and B trainable the gradients, in the layer's own dtype."""
    A = layer.lora_A
    assert layer.quant.dtype == A.dtype == layer.lora_B.dtype, "the base follows the adapter"
    assert layer.bias is None or layer.bias.dtype == A.dtype
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, layer.in_features, generator=gen).to(A.dtype)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == A.dtype
    weights = layer.weights()
    if layer.merged:  # the requantized sum is the base: LoRA's part is in it
        weights = dataclasses.replace(weights, B=torch.zeros_like(weights.B))
    assert rel_error(y, reference_forward(weights, x)) <= bound(A.dtype)
    if layer.merged or not (A.requires_grad and layer.lora_B.requires_grad):
        return
    x.requires_grad_(True)
    g = torch.randn(3, layer.out_features, generator=gen).to(A.dtype)
    A.grad = layer.lora_B.grad = None
    layer(x).backward(g)
    ref = reference_grads(weights, x.detach(), g)
    got = {"x": x.grad, "A": A.grad, "B": layer.lora_B.grad}
    for name, grad in got.items():
        assert grad is not None, f"no gradient of {name}"
        assert rel_error(grad, getattr(ref, name)) <= bound(A.dtype), name
    A.grad = layer.lora_B.grad = None


@CHECKS
@given(layer=qlora_layers(), calls=st.lists(st.sampled_from(sorted(CALLS)), min_size=1,
                                             max_size=4), seed=st.integers(0, 2**16))  # fmt: skip
def test_a_qlora_layer_follows_a_cast_or_refuses_it_unchanged(
    layer: QLoRALinear, calls: list[str], seed: int
) -> None:
    assert_computes_the_oracle(layer, seed)
    for call in calls:
        before = state(layer)
        with torch.no_grad():
            answer = layer(torch.ones(2, layer.in_features, dtype=layer.lora_A.dtype))
        refusal = None
        try:
            returned = CALLS[call](layer)
        except TypeError as err:
            refusal = str(err)
        if refusal is not None:
            event(f"{call}: refused")
            assert "QLoRALinear cannot be cast or moved" in refusal, refusal
            assert unchanged(before, state(layer)), f"{call} refused, but changed the layer"
            with torch.no_grad():
                again = layer(torch.ones(2, layer.in_features, dtype=layer.lora_A.dtype))
            assert torch.equal(again, answer), f"{call} refused, but the answer moved"
            continue
        event(f"{call}: followed")
        assert call == "merge or unmerge" or returned is layer
        assert layer.lora_A.device.type == "cpu"
        assert_computes_the_oracle(layer, seed)
