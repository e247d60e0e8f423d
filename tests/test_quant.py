"""LoRA on a quantized base: the formats and their refusals, the weights' checks, what the lean
training step keeps alive, merging into the quantized weight and back, and PEFT's QLoRA models
through from_peft. (Every QLoRA impl passes the conformance kit in test_equivalence.py.)"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util

import pytest
import torch
from peft_models import needs_peft, same, snapshot

from lora_kernels import IMPLS, LoRAWeights, from_peft, reference_forward, rel_error
from lora_kernels.quant import QLoRAWeights, QuantizedBase
from lora_kernels.quant.layer import QLoRALinear
from lora_kernels.quant.merge import merge_error

needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="bitsandbytes is not installed: pip install 'lora-bench[quant]'",
)
CPU_FORMATS = [pytest.param("nf4", marks=needs_bnb), pytest.param("fp4", marks=needs_bnb), "int8"]


def lora(in_f: int = 64, out_f: int = 48, rank: int = 4, seed: int = 0) -> LoRAWeights:
    return LoRAWeights.random(in_f, out_f, rank, seed=seed)


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_quantize_keeps_w_and_errs_by_the_format_only(fmt: str) -> None:
    w = lora()
    before = w.W.clone()
    base = QuantizedBase.quantize(w.W, fmt)
    assert torch.equal(w.W, before), "W is read, never written"
    W = base.dequantize()
    assert W.shape == w.W.shape and W.dtype == w.W.dtype
    error = rel_error(W, w.W)
    assert 0 < error < {"nf4": 0.15, "fp4": 0.2, "int8": 0.01}[fmt]
    assert base.nbytes() < w.W.numel() * 4 / (2 if fmt == "int8" else 6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fmt": "int4"}, "format must be one of"),
        ({"fmt": "fp8"}, "fp8 runs on CUDA only"),
        pytest.param({"fmt": "nf4", "blocksize": 48}, "blocksize must be one of", marks=needs_bnb),
        ({"fmt": "int8", "dtype": torch.int8}, "dtype must be one of"),
        ({"fmt": "nf4", "blocksize": 64.0}, "blocksize must be an int"),  # bnb's own error, once
        ({"fmt": "int8", "blocksize": 0}, "blocksize must be one of"),  # ignored, once: silently
        ({"fmt": "int8", "blocksize": -1}, "blocksize must be one of"),
        ({"fmt": "int8", "blocksize": True}, "blocksize must be an int"),
    ],
)
def test_quantize_refuses_saying_what_is_allowed(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        QuantizedBase.quantize(lora().W, **kwargs)


@needs_bnb
def test_quantize_refuses_odd_four_bit_shapes_and_non_finite_w() -> None:
    with pytest.raises(ValueError, match="in_features must be a multiple of the block size 64"):
        QuantizedBase.quantize(torch.randn(3, 96), "nf4")
    W = torch.randn(4, 8)
    W[1, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        QuantizedBase.quantize(W, "nf4")


def test_weights_refuse_an_adapter_outside_the_compute_dtype() -> None:
    w = lora()
    base = QuantizedBase.quantize(w.W, "int8")
    with pytest.raises(TypeError, match="compute dtype"):
        QLoRAWeights(base, w.b, w.A.half(), w.B, w.scale)
    with pytest.raises(ValueError, match=r"B must have shape \(out, r\)"):
        QLoRAWeights(base, w.b, w.A, w.B[:, :2], w.scale)


def test_impls_refuse_the_other_variant_and_formats_they_do_not_take() -> None:
    w = lora()
    q = QLoRAWeights.quantize(w, "int8")
    with pytest.raises(ValueError, match="pick one of"):
        IMPLS["addmm"].build(q)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pick one of"):
        IMPLS["qlora_lean"].build(w)
    narrow = dataclasses.replace(IMPLS["qlora_lean"], name="nf4_only",
                                 formats=frozenset({"nf4"}))  # fmt: skip
    with pytest.raises(ValueError, match=r"takes bases in \['nf4'\], not 'int8'"):
        narrow.build(q)


def _saved_shapes(name: str, q: QLoRAWeights, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd keeps for backward of one training call."""
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        IMPLS[name].build(q, "train")(x)
    return shapes


def test_the_lean_step_keeps_no_dequantized_weight() -> None:
    q = QLoRAWeights.quantize(lora(), "int8").requires_grad_()
    x = torch.randn(5, 64, requires_grad=True)
    W = {(48, 64), (64, 48)}  # Ŵ or its transpose
    assert W & set(_saved_shapes("qlora_dequant", q, x)), "autograd keeps Ŵ for dx"
    assert not W & set(_saved_shapes("qlora_lean", q, x))


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_merge_requantizes_and_unmerge_restores_the_exact_bytes(fmt: str) -> None:
    w = lora(seed=3)
    q = QLoRAWeights.quantize(w, fmt)
    layer = QLoRALinear(q.base, q.A.clone(), q.B.clone(), q.scale, q.b)
    original = layer.quant
    x = torch.randn(6, 64)
    with torch.no_grad():
        unmerged = layer(x)
    error = layer.merge()
    assert layer.merged and layer.merge_error == error and error > 0
    assert not layer.quant.same_bytes(original) and original.same_bytes(q.base)
    with torch.no_grad():
        merged = layer(x)
    assert 0 < rel_error(merged, unmerged) < 0.5
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="merged"):
        layer(x.requires_grad_()).sum().backward()
    layer.unmerge()
    assert layer.quant is original and layer.quant.same_bytes(q.base)
    with torch.no_grad():
        assert torch.equal(layer(x.detach()), unmerged)


def test_quantize_linears_refuses_a_bad_blocksize_changing_nothing() -> None:
    from lora_kernels.quant.model import quantize_linears

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    before = copy.deepcopy(model.state_dict())
    for bad in (0, -1):
        with pytest.raises(ValueError, match="blocksize must be one of"):
            quantize_linears(model, "int8", blocksize=bad)
    with pytest.raises(ValueError, match="blocksize must be one of"):
        quantize_linears(model, "int8", targets=[], blocksize=0)  # nothing selected: still
    assert all(isinstance(m, torch.nn.Linear) for m in (model[0], model[2]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("cast", ["double", "to_meta", "type_int8"])
def test_a_qlora_layer_refuses_a_cast_it_cannot_follow_and_still_runs(cast: str) -> None:
    """.double() and the others cast A, B and the bias but not the quantized base, after
    which the layer ran in no dtype at all; now refused, the layer unchanged."""
    w = lora(seed=5)
    q = QLoRAWeights.quantize(w, "int8")
    layer = QLoRALinear(q.base, q.A.clone(), q.B.clone(), q.scale, q.b)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = layer(x)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    calls = {"double": layer.double, "to_meta": lambda: layer.to("meta"),
             "type_int8": lambda: layer.type(torch.int8)}  # fmt: skip
    with pytest.raises(TypeError, match="cannot be cast or moved"):
        calls[cast]()
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())
    with torch.no_grad():
        assert torch.equal(layer(x), want)
    assert layer.float() is layer, "a cast that changes nothing goes on"


@pytest.mark.parametrize("fmt", CPU_FORMATS)
@pytest.mark.parametrize("cast", ["half", "bfloat16"])
def test_a_qlora_layer_follows_a_cast_to_another_compute_dtype(fmt: str, cast: str) -> None:
    """.half() and .bfloat16() cast A, B and the bias, and the base then dequantizes to the
    new dtype from the same codes: what quantizing W with that compute dtype gives."""
    w = lora(seed=5)
    q = QLoRAWeights.quantize(w, fmt)
    layer = QLoRALinear(q.base, q.A.clone(), torch.randn(48, 4), q.scale, q.b)
    codes = {k: v.clone() for k, v in q.base.tensors().items()}
    assert getattr(layer, cast)() is layer
    dtype = layer.lora_A.dtype
    assert dtype == {"half": torch.float16, "bfloat16": torch.bfloat16}[cast]
    assert layer.quant.dtype == dtype and layer.quant.same_bytes(q.base)
    fresh = QuantizedBase.quantize(w.W, fmt, dtype=dtype)
    assert torch.equal(layer.quant.dequantize(), fresh.dequantize())
    assert q.base.dtype == torch.float32, "the base it was built on is not changed"
    assert q.base.state is None or q.base.state.dtype == torch.float32
    assert all(torch.equal(codes[k], v) for k, v in q.base.tensors().items())
    x = torch.randn(3, 64).to(dtype)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype
    assert rel_error(y, reference_forward(layer.weights(), x)) < 0.05


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_merge_error_is_measured_against_both_layers(fmt: str) -> None:
    w = lora(seed=5)
    q = QLoRAWeights.quantize(w, fmt)
    x = torch.randn(32, 64)
    e = merge_error(q, w.W, x)
    assert e.vs_unmerged > 0 and e.quantized > 0 and e.weight_error > 0
    y_float = reference_forward(w, x)
    assert e.quantized == pytest.approx(rel_error(reference_forward(q, x), y_float), rel=1e-6)


def llama64() -> tuple[torch.nn.Module, str]:
    """A two-block Llama whose linear layers take whole 4-bit blocks (in: 64 or 128)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval(), "all-linear"


@needs_peft
@needs_bnb
@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_from_peft_takes_a_qlora_model_with_its_function(fmt: str) -> None:
    from peft import LoraConfig, get_peft_model

    from lora_kernels.quant.model import quantize_linears

    model, targets = llama64()
    quantize_linears(model, fmt, targets)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft = get_peft_model(model, config).train()  # bitsandbytes' fp32 path (see bnb_layer)
    ours = copy.deepcopy(peft)
    new = from_peft(ours)
    assert {type(m).__name__ for m in new.values()} == {"QLoRALinear"}
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    for m in (peft, ours):
        m(input_ids=ids).logits.pow(2).mean().backward()
    with torch.no_grad():
        assert rel_error(ours(input_ids=ids).logits, peft(input_ids=ids).logits) < 1e-6
    grads = [p.grad for p in peft.parameters() if p.requires_grad]  # A, B of each layer
    mine = [p.grad for p in ours.parameters() if p.requires_grad]
    assert len(grads) == len(mine) == 28
    assert all(rel_error(a, b) < 1e-5 for a, b in zip(mine, grads, strict=True))


@needs_peft
@needs_bnb
@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_from_peft_refuses_fp32_adapters_on_a_bf16_qlora_model_changing_nothing(fmt: str) -> None:
    """PEFT keeps its adapters in float32 on a bfloat16 model (autocast_adapter_dtype) and
    casts x up for them. Converted, every layer then refused its first bf16 input; now the
    conversion is refused before any layer changes, and PEFT's model still runs."""
    from peft import LoraConfig, get_peft_model

    from lora_kernels.quant.model import quantize_linears

    model, targets = llama64()
    model = model.to(torch.bfloat16)
    quantize_linears(model, fmt, targets)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft = get_peft_model(model, config)
    before = snapshot(peft)
    with pytest.raises(ValueError, match=r"the adapter is torch.float32 but the model computes "
                                         r"in torch.bfloat16"):  # fmt: skip
        from_peft(peft)
    assert same(snapshot(peft), before)
    assert not any(type(m).__name__ == "QLoRALinear" for m in peft.modules())
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    assert peft(input_ids=ids).logits.dtype == torch.bfloat16


@needs_peft
@needs_bnb
def test_a_qlora_model_merges_switches_impl_and_unmerges_to_its_bytes() -> None:
    from peft import LoraConfig, get_peft_model

    from lora_kernels import merge, set_impl, unmerge
    from lora_kernels.quant.model import quantize_linears

    model, targets = llama64()
    quantize_linears(model, "nf4", targets)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft = get_peft_model(model, config).eval()
    layers = from_peft(peft)
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = peft(input_ids=ids).logits
    bases = {n: m.quant for n, m in layers.items()}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="computes lora, but 14 of 14 LoRA layers are qlora"):
        set_impl(peft, "addmm")
    set_impl(peft, "qlora_dequant")
    merge(peft)
    assert all(m.merged and m.merge_error for m in layers.values())  # type: ignore[union-attr]
    with torch.no_grad():
        assert 0 < rel_error(peft(input_ids=ids).logits, before) < 0.5
    unmerge(peft)
    assert all(m.quant is bases[n] for n, m in layers.items())  # type: ignore[union-attr]
    with torch.no_grad():
        assert torch.equal(peft(input_ids=ids).logits, before)


@needs_peft
@needs_bnb
def test_from_peft_refuses_qlora_with_dropout_changing_nothing() -> None:
    from peft import LoraConfig, get_peft_model

    from lora_kernels.quant.model import quantize_linears

    model, targets = llama64()
    quantize_linears(model, "nf4", targets)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets, lora_dropout=0.1))
    before = snapshot(peft)
    with pytest.raises(ValueError, match=r"lora_dropout=0\.1"):
        from_peft(peft)
    assert same(before, snapshot(peft))
