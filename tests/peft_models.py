"""Small transformers models with PEFT's LoRA for the tests, and a snapshot of everything a
refusal must leave as it was."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None or importlib.util.find_spec("transformers") is None,
    reason="peft and transformers are not installed: pip install 'lora-bench[peers,models]'",
)


def tiny(kind: str) -> tuple[nn.Module, list[str] | str]:
    """A two-block transformers model with random weights, and LoRA targets for it."""
    import transformers

    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=64,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval(), "all-linear"
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=64, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval(), ["c_attn", "c_proj", "c_fc"]


def peft_model(kind: str, **config: object) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    model, targets = tiny(kind)
    options = {"r": 4, "lora_alpha": 8, "target_modules": targets, "init_lora_weights": False}
    if kind == "gpt2":
        options["fan_in_fan_out"] = True  # GPT-2's Conv1D stores W as (in, out)
    return get_peft_model(model, LoraConfig(**{**options, **config})).eval()


def snapshot(model: nn.Module) -> tuple:
    """Everything a refusal must leave as it was: each module's type and mode, each
    parameter's and buffer's values, identity and grad flag, and each layer's merged state."""
    return (
        [(n, type(m), m.training, getattr(m, "merged", None)) for n, m in model.named_modules()],
        [(n, id(p), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
        [(n, b.clone()) for n, b in model.named_buffers()],
    )


def same(a: tuple, b: tuple) -> bool:
    modules_a, params_a, buffers_a = a
    modules_b, params_b, buffers_b = b
    return (
        modules_a == modules_b
        and [(n, i, g) for n, i, _, g in params_a] == [(n, i, g) for n, i, _, g in params_b]
        and all(torch.equal(x[2], y[2]) for x, y in zip(params_a, params_b, strict=True))
        and all(torch.equal(x[1], y[1]) for x, y in zip(buffers_a, buffers_b, strict=True))
    )
