"""`lora-bench model` on the user's own model and adapter: tiny configs of six architectures
saved with save_pretrained (one with its weights), a PEFT adapter saved beside, measured end to
end with and without the adapter folder; the verdict's rules; the refusals, one line each,
exit 2, nothing measured or written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.cli.main import main
from bench.families import user_model as um
from bench.families.models import MODEL_TOLERANCE
from bench.families.user_runner import Request, measure
from bench.report.document import write_results
from bench.report.user_model import seconds_to_tell, user_model_tables, verdict_table
from bench.report.verdicts import Comparison
from bench.schema.run import load_run

pytestmark = pytest.mark.skipif(um.models.missing() is not None, reason=str(um.models.missing()))

SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}  # fmt: skip
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": SMALL,
    "qwen2": SMALL,
    "mistral": SMALL,
    "gemma": {**SMALL, "head_dim": 16},  # GeGLU MLP: fuse_modules fuses q, k, v only
    "phi3": {**SMALL, "pad_token_id": 0},  # fused qkv_proj and gate_up_proj
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 256},  # Conv1D
}
WITH_WEIGHTS = "llama"  # saved with its safetensors: the loading path runs
FUSES = {"llama": "all", "qwen2": "all", "mistral": "all", "gemma": "some", "phi3": "none",
         "gpt2": "none"}  # fmt: skip
QUICK = {"prompt_tokens": 6, "new_tokens": 3, "tokens": 6, "seconds": 0.05, "threads": 1}


def save_model(folder: Path, kind: str, weights: bool) -> Path:
    """A tiny `kind` model saved as save_pretrained writes it (config.json alone without
    `weights`), and a PEFT adapter on all its linear layers (B non-zero) in folder/adapter."""
    import transformers
    from peft import LoraConfig, get_peft_model

    config = transformers.AutoConfig.for_model(kind, **ARCHITECTURES[kind])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    if weights:
        model.save_pretrained(folder / kind)
    else:
        config.save_pretrained(folder / kind)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                      fan_in_fan_out=kind == "gpt2")  # fmt: skip
    get_peft_model(model, lora).save_pretrained(folder / f"{kind}-adapter")
    return folder / kind


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_model(root, kind, kind == WITH_WEIGHTS) for kind in ARCHITECTURES}


def ours_in_every_phase(run: Any) -> None:
    phases = {(e.phase, e.origin) for e in run.user_model()}
    for phase in ("prefill", "decode", "train"):
        assert (phase, "peer") in phases and (phase, "ours") in phases, (phase, phases)


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
@pytest.mark.parametrize("adapter", ["folder", "described"])
def test_each_architecture_end_to_end(saved: dict[str, Path], kind: str, adapter: str,
                                      tmp_path: Path) -> None:  # fmt: skip
    folder = saved[kind]
    given = str(folder.parent / f"{kind}-adapter") if adapter == "folder" else None
    rank = None if given else 4
    run = measure(Request(str(folder), adapter=given, rank=rank, **QUICK))  # type: ignore[arg-type]
    ours_in_every_phase(run)
    for e in run.user_model():
        assert e.rel_error <= MODEL_TOLERANCE["fp32"], (e.variant, e.phase, e.rel_error)
        assert e.tokens_equal == 1.0 and e.model == kind
    info = run.user_model_info()
    assert info is not None and info.random_weights == (kind != WITH_WEIGHTS)
    assert ("random" in info.model_source) == (kind != WITH_WEIGHTS)
    fused = [e for e in run.user_model() if e.variant == "fused"]
    said = " ".join(info.screened + info.notes)
    if FUSES[kind] == "none":
        assert not fused and ("nothing to fuse" in said or "fused: no module fuses" in said)
    else:
        assert fused and ("left per layer" in said) == (FUSES[kind] == "some")
    assert (info.load_s != {}) == (adapter == "folder")
    profiled = {(e.mode, e.impl) for e in run.profiles()}  # where the time goes
    assert {("infer", "base"), ("infer", "peft"), ("train", "base"), ("train", "peft")} <= profiled
    tables = {t.title: t for t in user_model_tables(run)}
    assert {"Your model: what the adapter costs", "Your model: verdict"} <= tables.keys()
    written = write_results(tmp_path / "run.json", run)
    again = load_run(tmp_path / "run.json")
    assert again.user_model() == written.user_model()
    assert again.user_model_info() == written.user_model_info()


def test_many_adapters_compile_and_quantized_base(saved: dict[str, Path]) -> None:
    """--adapters: a mixed batch against PEFT's; --compile: every timed variant compiled with
    the frozen model compiled beside; --base-dtype nf4: PEFT's QLoRA against ours."""
    folder, adapter = str(saved["llama"]), str(saved["llama"].parent / "llama-adapter")
    run = measure(
        Request(
            folder, adapter=adapter, mode="generate", batch=3, adapters=2, compile=True, **QUICK
        )
    )  # type: ignore[arg-type]
    mixed = {e.variant for e in run.user_model() if e.adapters == 2}
    assert "peft_mixed" in mixed and len(mixed) == 2
    compiled = {e.variant for e in run.user_model() if e.compiled}
    assert {"frozen", "peft", "peft_merged"} <= compiled
    assert all(e.compile_s > 0 for e in run.user_model() if e.compiled and e.variant == "peft")
    rows = {r[0]: r for r in verdict_table(run).rows}
    assert "2 adapters served in one batch" in rows
    quant = measure(Request(folder, adapter=adapter, base_dtype="nf4", **QUICK))  # type: ignore[arg-type]
    ours = {e.variant for e in quant.user_model() if e.origin == "ours"}
    assert ours and ours <= {"qlora_dequant", "qlora_lean"}
    assert all(e.rel_error <= MODEL_TOLERANCE["fp32"] for e in quant.user_model())


def test_a_dora_adapter_times_the_dora_impls_against_peft_dora() -> None:
    run = measure(Request("llama-tiny", dora=True, rank=4, **QUICK))  # type: ignore[arg-type]
    ours_in_every_phase(run)
    ours = {e.variant for e in run.user_model() if e.origin == "ours"}
    assert ours and all(v.startswith("dora_") for v in ours)
    assert all(e.rel_error <= MODEL_TOLERANCE["fp32"] for e in run.user_model())
    info = run.user_model_info()
    assert info is not None and any("not DoRA" in line for line in info.screened)


def test_a_model_ours_cannot_take_is_measured_with_peft_alone() -> None:
    """LoRA on the embedding: from_peft refuses it, so no variant of ours runs, and the run
    says why."""
    run = measure(Request("llama-tiny", targets="q_proj,embed_tokens", rank=4, **QUICK))  # type: ignore[arg-type]
    assert {e.origin for e in run.user_model()} == {"peer"}
    info = run.user_model_info()
    assert info is not None and any("PEFT Embedding" in line for line in info.screened)
    rows = {r[0]: r for r in verdict_table(run).rows}
    assert rows["training"][1] == "peft" and "only PEFT" in rows["training"][2]


def test_blocks_keeps_the_first_blocks_and_says_so(saved: dict[str, Path]) -> None:
    folder, adapter = str(saved["llama"]), str(saved["llama"].parent / "llama-adapter")
    run = measure(Request(folder, adapter=adapter, blocks=1, mode="train", **QUICK))  # type: ignore[arg-type]
    info = run.user_model_info()
    assert info is not None and (info.blocks, info.total_blocks) == (1, 2)
    assert any("blocks past --blocks 1" in n for n in info.notes)
    assert all("blocks=1" in e.case for e in run.user_model())


def test_verdict_states_a_difference_only_where_the_ci_resolves_it() -> None:
    from runs import user_entry, user_model_run

    resolved = user_model_run()  # addmm 1.10 against peft 1.20, spreads of 1%
    rows = {r[0]: r for r in verdict_table(resolved).rows}
    assert rows["one adapter served"][1] == "peft_merged"
    assert rows["one adapter served"][2].startswith("merge it: x1.20")
    assert rows["2 adapters served in one batch"][1] == "segments"
    tied = user_model_run([user_entry("peft", "decode", 1.20, spread=0.2, origin="peer"),
                           user_entry("addmm", "decode", 1.14, spread=0.2)])  # fmt: skip
    row = {r[0]: r for r in verdict_table(tied).rows}["one adapter served"]
    assert row[1] == "addmm or peft" and "cannot be told apart at this budget" in row[2]
    assert "unresolved" in row[2] and "s of rounds a side would tell" in row[2]
    assert "not measured: add --adapters N" in {r[0]: r for r in verdict_table(tied).rows}[
        "many adapters served"][2]  # fmt: skip


def test_seconds_to_tell_grows_with_the_ci_over_the_difference() -> None:
    wide = Comparison("", 0.99, 0.95, 1.03)
    narrow = Comparison("", 0.99, 0.98, 1.0005)
    assert seconds_to_tell(wide, 1.0) > seconds_to_tell(narrow, 1.0) >= 2.0
    assert seconds_to_tell(Comparison("", 1.0, 0.9, 1.1), 1.0) == float("inf")


def test_compiled_variants_are_linked_to_peft_through_the_frozen_model() -> None:
    """A compiled variant's ratio is to the compiled frozen model; against PEFT eager it
    goes through the compiled frozen model's paired ratio to the eager one."""
    from runs import user_entry, user_model_run

    from bench.report.user_model import _against

    peft = user_entry("peft", "decode", 1.20, origin="peer")
    fast = user_entry("addmm", "decode", 1.10, compiled=True)
    link = user_entry("frozen", "decode", 0.50, compiled=True, origin="frozen")
    run = user_model_run([peft, fast, link])
    c = _against(fast, peft, run)
    assert c.quotient == pytest.approx(1.10 * 0.50 / 1.20, rel=1e-6)
    assert c.low < c.quotient < c.high
    with pytest.raises(ValueError, match="no compiled frozen model"):
        _against(fast, peft, user_model_run([peft, fast]))


# --- refusals: one line, exit 2, nothing measured or written ---------------------------------


def refused(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> str:
    code = main(["model", *args, "-o", str(out), "--seconds", "0.05"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("lora-bench model: "), err
    assert not out.exists(), "a refused run writes nothing"
    return err


def test_refusals(saved: dict[str, Path], tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "out"
    llama, root = saved["llama"], saved["llama"].parent
    (tmp_path / "empty").mkdir()
    assert "no config.json" in refused(capsys, out, str(tmp_path / "empty"))
    for model_type, message in (("nonesuch", "transformers cannot read this config"),
                                ("t5", "cannot build a causal language model")):  # fmt: skip
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert message in refused(capsys, out, str(folder))
    other = refused(capsys, out, str(saved["qwen2"].parent / "mistral"), "--adapter",
                    str(root / "gpt2-adapter"))  # fmt: skip
    assert "weights for transformer.h.0" in other and "another model" in other
    narrow = tmp_path / "narrow"
    import transformers

    config = transformers.AutoConfig.for_model("llama", **{**SMALL, "hidden_size": 32})
    config.save_pretrained(narrow)
    shapes = refused(capsys, out, str(narrow), "--adapter", str(root / "llama-adapter"))
    assert "model.layers.0.self_attn.q_proj lora_A is (4, 64)" in shapes
    assert "is (32, 32) and needs (r, 32)" in shapes
    assert "--targets 'nope'" in refused(capsys, out, str(llama), "--targets", "q_proj,nope")
    assert "keep 1..2" in refused(capsys, out, str(llama), "--blocks", "0")
    assert "keep 1..2" in refused(capsys, out, str(llama), "--blocks", "3")
    fit = refused(capsys, out, "llama3-8b")
    assert "by the planner's estimate" in fit and "--blocks" in fit and "would fit" in fit
    both = refused(capsys, out, str(llama), "--adapter", str(root / "llama-adapter"), "--rank", "8")
    assert "give one or the other" in both
    assert "--batch 2 or more" in refused(capsys, out, "llama-tiny", "--adapters", "2")
    assert "not a multiple of the block size" in refused(capsys, out, "llama-tiny",
                                                         "--base-dtype", "nf4")  # fmt: skip
    assert "not a PEFT adapter folder" in refused(capsys, out, str(llama), "--adapter",
                                                  str(tmp_path / "empty"))  # fmt: skip


def test_an_output_that_cannot_be_written_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["model", "llama-tiny", "-o", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write results there" in err and err.count("\n") == 1
