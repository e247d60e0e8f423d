"""Model presets: the linear layers of one block of published models, with (in, out, bias),
under the module names the reference code gives them, and the parameters outside those
layers (embeddings, norms, heads), so that counts can be made without building the model.

No torch here: the planner and the CLI read these as plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALIASES = ("attn", "mlp", "all-linear")


@dataclass(frozen=True)
class LinearSpec:
    """One linear layer of a block: x (..., in) -> (..., out).

    `group` is "attn" or "mlp". `reads` names the tensor the layer reads: layers reading the
    same tensor (q, k and v) save it for backward once.
    """

    in_features: int
    out_features: int
    bias: bool
    group: str
    reads: str

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class Preset:
    """A model: `blocks` repeats of `linears` (block-relative module name -> LinearSpec), plus
    `other_params` outside them per block and for the whole model. `head` is the output
    projection (hidden -> vocab) when the model has one; `tied` when it shares the embedding.
    `roles` maps short names (q, k, v, o) to module names. `hf` is the transformers config
    (model_type and fields) the preset was read from, for building the real model."""

    name: str
    source: str
    hidden: int
    blocks: int
    vocab: int
    linears: dict[str, LinearSpec]
    block_other_params: int  # norms of one block
    model_other_params: int  # embeddings, final norm, pooler; an untied head is counted apart
    head: LinearSpec | None
    tied: bool
    roles: dict[str, str] = field(default_factory=dict)
    hf: dict[str, object] = field(default_factory=dict)

    @property
    def head_params(self) -> int:
        """Parameters of the output projection not shared with the embedding."""
        return 0 if self.head is None or self.tied else self.head.params

    @property
    def total_params(self) -> int:
        block = sum(s.params for s in self.linears.values()) + self.block_other_params
        return self.blocks * block + self.model_other_params + self.head_params

    def group(self, name: str) -> list[str]:
        return [m for m, s in self.linears.items() if s.group == name]

    def resolve(self, targets: list[str] | str) -> list[str]:
        """Block-relative module names that `targets` select, in block order.

        A target is an alias (attn, mlp, all-linear: every linear of a block, the head left out
        as PEFT does), a role (q, k, v, o), a module name, or its last part (c_proj selects
        both of GPT-2's c_proj layers, as PEFT's suffix match does).
        """
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise ValueError(f"targets must name at least one module; {self.allowed_targets()}")
        chosen: set[str] = set()
        for target in targets:
            found = self._match(target)
            if not found:
                raise ValueError(
                    f"target {target!r} matches no linear layer of {self.name}; "
                    f"{self.allowed_targets()}"
                )
            chosen.update(found)
        return [m for m in self.linears if m in chosen]

    def _match(self, target: str) -> list[str]:
        if target == "all-linear":
            return list(self.linears)
        if target in ("attn", "mlp"):
            return self.group(target)
        target = self.roles.get(target, target)
        return [m for m in self.linears if m == target or m.endswith(f".{target}")]

    def allowed_targets(self) -> str:
        roles = ", ".join(f"{k}={v}" for k, v in self.roles.items())
        return f"allowed: {', '.join(ALIASES)}, the module names {', '.join(self.linears)}" + (
            f", or the roles {roles}" if roles else ""
        )


def _linear(i: int, o: int, bias: bool, group: str, reads: str) -> LinearSpec:
    return LinearSpec(i, o, bias, group, reads)


def gpt2(name: str, source: str, hidden: int, blocks: int, heads: int) -> Preset:
    """GPT-2 (transformers' GPT2LMHeadModel): fused c_attn (Conv1D, weight stored (in, out)),
    learned positions (1024), LayerNorms with bias, MLP 4·hidden, head tied to wte."""
    h, vocab, positions = hidden, 50257, 1024
    linears = {
        "attn.c_attn": _linear(h, 3 * h, True, "attn", "ln_1"),
        "attn.c_proj": _linear(h, h, True, "attn", "attn"),
        "mlp.c_fc": _linear(h, 4 * h, True, "mlp", "ln_2"),
        "mlp.c_proj": _linear(4 * h, h, True, "mlp", "act"),
    }
    return Preset(
        name, source, h, blocks, vocab, linears,
        block_other_params=2 * 2 * h,  # ln_1, ln_2: weight and bias
        model_other_params=vocab * h + positions * h + 2 * h,  # wte, wpe, ln_f
        head=_linear(h, vocab, False, "head", "ln_f"),
        tied=True,
        roles={"o": "attn.c_proj"},
        hf={"model_type": "gpt2", "n_embd": h, "n_layer": blocks, "n_head": heads},
    )  # fmt: skip


def llama(
    name: str, source: str, hidden: int, ffn: int, blocks: int, heads: int, kv_heads: int,
    vocab: int, model_type: str = "llama",
) -> Preset:  # fmt: skip
    """Llama and Mistral (transformers' LlamaForCausalLM, MistralForCausalLM): grouped-query
    attention without biases, SwiGLU MLP, RMSNorm (weight only), untied head."""
    h, kv = hidden, hidden // heads * kv_heads
    linears = {
        "self_attn.q_proj": _linear(h, h, False, "attn", "input_layernorm"),
        "self_attn.k_proj": _linear(h, kv, False, "attn", "input_layernorm"),
        "self_attn.v_proj": _linear(h, kv, False, "attn", "input_layernorm"),
        "self_attn.o_proj": _linear(h, h, False, "attn", "attn"),
        "mlp.gate_proj": _linear(h, ffn, False, "mlp", "post_attention_layernorm"),
        "mlp.up_proj": _linear(h, ffn, False, "mlp", "post_attention_layernorm"),
        "mlp.down_proj": _linear(ffn, h, False, "mlp", "act"),
    }
    return Preset(
        name, source, h, blocks, vocab, linears,
        block_other_params=2 * h,  # input_layernorm, post_attention_layernorm
        model_other_params=vocab * h + h,  # embed_tokens, final norm
        head=_linear(h, vocab, False, "head", "norm"),
        tied=False,
        roles={r: f"self_attn.{r}_proj" for r in "qkvo"},
        hf={
            "model_type": model_type, "hidden_size": h, "intermediate_size": ffn,
            "num_hidden_layers": blocks, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": False,
        },
    )  # fmt: skip


def bert_base() -> Preset:
    """BERT-base (transformers' BertModel, pooler included): biases everywhere, learned
    positions (512) and token types (2), LayerNorms with bias."""
    h, ffn, vocab = 768, 3072, 30522
    linears = {
        "attention.self.query": _linear(h, h, True, "attn", "hidden"),
        "attention.self.key": _linear(h, h, True, "attn", "hidden"),
        "attention.self.value": _linear(h, h, True, "attn", "hidden"),
        "attention.output.dense": _linear(h, h, True, "attn", "attn"),
        "intermediate.dense": _linear(h, ffn, True, "mlp", "attention_norm"),
        "output.dense": _linear(ffn, h, True, "mlp", "act"),
    }
    return Preset(
        "bert-base", "google-bert/bert-base-uncased config.json", h, 12, vocab, linears,
        block_other_params=2 * 2 * h,  # two LayerNorms
        # word, position and token-type embeddings, their LayerNorm, the pooler's dense layer
        model_other_params=vocab * h + 512 * h + 2 * h + 2 * h + h * h + h,
        head=None,
        tied=False,
        roles={"q": "attention.self.query", "k": "attention.self.key",
               "v": "attention.self.value", "o": "attention.output.dense"},
        hf={"model_type": "bert"},
    )  # fmt: skip


def gpt3_175b() -> Preset:
    """GPT-3 175B as the LoRA paper (Hu et al., 2021, §4 and Table 4) treats it: d_model 12288,
    96 layers, separate W_q, W_k, W_v, W_o of d_model x d_model, MLP 4·d_model; otherwise GPT-2's
    design (biases, LayerNorms, learned positions over a 2048 context, tied head)."""
    h, vocab, positions = 12288, 50257, 2048
    linears = {
        "attn.q_proj": _linear(h, h, True, "attn", "ln_1"),
        "attn.k_proj": _linear(h, h, True, "attn", "ln_1"),
        "attn.v_proj": _linear(h, h, True, "attn", "ln_1"),
        "attn.o_proj": _linear(h, h, True, "attn", "attn"),
        "mlp.fc_in": _linear(h, 4 * h, True, "mlp", "ln_2"),
        "mlp.fc_out": _linear(4 * h, h, True, "mlp", "act"),
    }
    return Preset(
        "gpt3-175b", "Brown et al. 2020, Table 2.1; LoRA paper (Hu et al. 2021)", h, 96, vocab,
        linears,
        block_other_params=2 * 2 * h,
        model_other_params=vocab * h + positions * h + 2 * h,
        head=_linear(h, vocab, False, "head", "ln_f"),
        tied=True,
        roles={r: f"attn.{r}_proj" for r in "qkvo"},
    )  # fmt: skip


# fmt: off
_ALL = (
    gpt2("gpt2", "openai-community/gpt2 config.json", 768, 12, 12),
    gpt2("gpt2-medium", "openai-community/gpt2-medium config.json", 1024, 24, 16),
    bert_base(),
    llama("llama3-8b", "meta-llama/Meta-Llama-3-8B config.json", 4096, 14336, 32, 32, 8, 128256),
    llama("llama3-70b", "meta-llama/Meta-Llama-3-70B config.json", 8192, 28672, 80, 64, 8,
          128256),
    llama("mistral-7b", "mistralai/Mistral-7B-v0.1 config.json", 4096, 14336, 32, 32, 8, 32000,
          model_type="mistral"),
    gpt3_175b(),
)
# fmt: on
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def get_preset(name: str) -> Preset:
    """The preset called `name`; the error lists them all."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; presets: {', '.join(PRESETS)}") from None
