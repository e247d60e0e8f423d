"""Model presets and the planner: counts equal those of modules built on the meta device, the
presets equal transformers' models, and bad input gets a clear error."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

from bench.cli.main import main
from lora_kernels import PRESETS, LoRALinear, Preset, count_parameters, get_preset, plan

RANK = 8
TARGETS = ["attn", "mlp", "all-linear", "q,v", "o"]
needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed: pip install 'lora-bench[models]'",
)


def meta_block(preset: Preset, targets: list[str], rank: int) -> nn.ModuleDict:
    """One block of the preset on the meta device: LoRALinear where targeted, else nn.Linear."""
    layers = {}
    for name, s in preset.linears.items():
        if name in targets:
            layer = LoRALinear(s.in_features, s.out_features, rank, bias=s.bias, device="meta")
        else:
            layer = nn.Linear(s.in_features, s.out_features, bias=s.bias, device="meta")
            layer.requires_grad_(False)  # frozen, as inject leaves it
        layers[name.replace(".", "/")] = layer
    return nn.ModuleDict(layers)


def targets_of(preset: Preset) -> list[str]:
    return [t for t in TARGETS if all(p in preset.roles for p in t.split(",") if len(p) == 1)]


@pytest.mark.parametrize("name", list(PRESETS))
def test_plan_counts_equal_module_counts(name: str) -> None:
    preset = PRESETS[name]
    for targets in targets_of(preset):
        p = plan(preset, targets, RANK)
        block = count_parameters(meta_block(preset, p.targets, RANK))
        other = preset.block_other_params * preset.blocks
        other += preset.model_other_params + preset.head_params
        assert p.trainable == block.trainable * preset.blocks
        assert p.total == block.total * preset.blocks + other
        assert p.adapted_layers == len(p.targets) * preset.blocks


@needs_transformers
@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.hf])
def test_preset_equals_transformers_model(name: str) -> None:
    """Total parameters, and every linear layer of block 0 with its shape and bias."""
    import transformers
    from transformers.pytorch_utils import Conv1D

    preset = PRESETS[name]
    fields = dict(preset.hf)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    auto = (
        transformers.AutoModel if config.model_type == "bert" else transformers.AutoModelForCausalLM
    )
    with torch.device("meta"):
        model = auto.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == preset.total_params
    block = next(m for n, m in model.named_modules() if n.endswith(("layers.0", "h.0", "layer.0")))
    found = {}
    for n, m in block.named_modules():
        if isinstance(m, nn.Linear):
            found[n] = (m.in_features, m.out_features, m.bias is not None)
        elif isinstance(m, Conv1D):
            found[n] = (*m.weight.shape, m.bias is not None)
    assert found == {n: (s.in_features, s.out_features, s.bias) for n, s in preset.linears.items()}


def test_gpt3_as_the_lora_paper_counts() -> None:
    """Hu et al. 2021, Table 5: 18M trainable parameters for r=8 on W_q, or r=4 on W_q, W_v."""
    gpt3 = get_preset("gpt3-175b")
    assert plan(gpt3, "q", 8).trainable == plan(gpt3, "q,v", 4).trainable == 18_874_368
    assert 174e9 < gpt3.total_params < 175e9


def test_llama3_8b_plan() -> None:
    p = plan(get_preset("llama3-8b"), "q,k,v,o", 16, dtype="bf16", optimizer="adamw", tokens=1)
    # per block: q, o 16·(4096+4096), k, v 16·(4096+1024); 32 blocks
    assert p.trainable == 32 * 16 * (2 * 8192 + 2 * 5120) == 13_631_488
    assert p.adapter_bytes == 2 * p.trainable
    assert p.lora.optimizer == 2 * p.lora.trained
    assert p.full.frozen == 0 and p.full.trained == 2 * 8_030_261_248
    # q, k, v share their input (saved once), o reads its own; x Aᵀ (r) for each of the 4
    assert p.lora.activations == 2 * 32 * (4096 + 4096 + 4 * 16)
    assert p.extra_flops_per_token == 2 * p.trainable
    assert plan(get_preset("llama3-8b"), "q", 16, optimizer="sgd").lora.optimizer == 0


def test_qlora_plan_holds_the_linear_weights_quantized() -> None:
    preset = get_preset("llama3-8b")
    dense = plan(preset, "all-linear", 16, dtype="bf16")
    linear = 32 * sum(s.in_features * s.out_features for s in preset.linears.values())
    nf4 = plan(preset, "all-linear", 16, dtype="bf16", base_dtype="nf4")
    # half a byte a weight and an fp32 absmax per 64 weights, in place of two bytes a weight
    assert nf4.lora.frozen == dense.lora.frozen - 2 * linear + linear // 2 + 4 * linear // 64
    assert nf4.lora.dequantized == 2 * 14336 * 4096  # the largest layer, in bf16
    rows = 32 * sum(s.out_features for s in preset.linears.values())
    int8 = plan(preset, "all-linear", 16, dtype="bf16", base_dtype="int8")
    assert int8.lora.frozen == dense.lora.frozen - linear + 4 * rows  # a byte + a row scale
    assert nf4.full == dense.full and nf4.trainable == dense.trainable
    assert dense.lora.dequantized == 0 and nf4.base_dtype == "nf4" and dense.base_dtype == "bf16"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plan(get_preset("gpt2"), "attn", 4, base_dtype="int4"), "nf4, int8, fp8"),
        (lambda: get_preset("llama2"), "presets: gpt2, gpt2-medium"),
        (lambda: plan(get_preset("gpt2"), "q", 4), "module names attn.c_attn"),
        (lambda: plan(get_preset("gpt2"), "all-linear", 769), "exceeds min(in, out) = 768"),
        (lambda: plan(get_preset("gpt2"), "attn", 4, tokens=0), "tokens must be an int > 0"),
        (lambda: plan(get_preset("gpt2"), "attn", 4, dtype="fp8"), "dtype must be one of"),
        (lambda: plan(get_preset("gpt2"), "attn", 4, optimizer="adam"), "adamw, sgd"),
        (lambda: plan(get_preset("gpt2"), "", 4), "at least one module"),
    ],
)
def test_plan_bad_input(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_plan_cli(capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["plan", "llama3-8b", "--targets", "q,k,v,o", "--rank", "1,16", "--rank", "64"]) == 0
    )
    out = capsys.readouterr().out
    assert "13,631,488" in out and "LoRA r=64" in out and "full fine-tuning" in out
    assert main(["plan", "gpt2", "--targets", "attn", "--json", "--dtype", "fp32"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert [p["rank"] for p in plans] == [16] and plans[0]["dtype"] == "fp32"
    assert main(["plan", "llama3-8b", "--targets", "all-linear", "--base-dtype", "nf4"]) == 0
    out = capsys.readouterr().out
    assert "bf16 on a nf4 base" in out and "a dequantized weight (QLoRA)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "nope", "--targets", "q"], "unknown model 'nope'"),
        (["plan", "gpt2", "--targets", "qq"], "target 'qq' matches no linear layer"),
        (["plan", "gpt2", "--targets", "attn", "--rank", "x"], "ranks are integers"),
        (["plan", "gpt2", "--targets", "attn", "--rank", "0"], "ranks are integers"),
        (["plan", "gpt2", "--targets", "attn", "--tokens", "-1"], "tokens must be"),
    ],
)
def test_plan_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
