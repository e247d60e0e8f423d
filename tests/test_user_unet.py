"""`lora-bench model` on a diffusers UNet folder: which folders are UNets (a pipeline's unet/
too), what a UNet refuses, and whole runs on a tiny UNet, with an adapter described and with
a diffusers LoRA file: every variant checked against PEFT's and timed, the verdict per use,
and the merge against diffusers' fuse_lora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.families.unet import UNETS, diffusers_missing
from bench.families.user_model import UserInputError
from bench.families.user_request import Request
from bench.families.user_unet import check_request, resolve, unet_folder
from bench.schema.run import load_run

pytestmark = pytest.mark.skipif(bool(diffusers_missing()), reason=diffusers_missing() or "-")
TINY = UNETS["unet-tiny"][0]


def tiny_folder(path: Path, weights: bool = False, **config: object) -> Path:
    """A folder holding the tiny UNet's diffusers config (and its seeded weights)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**TINY, "sample_size": 8, **config})
    if weights:
        unet.save_pretrained(path)
    else:
        unet.save_config(path)
    return path


def lora_file(path: Path, text_encoder: bool = False) -> Path:
    """A diffusers LoRA file for the tiny UNet (attention and convolutions), B non-zero."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(3)
    unet = UNet2DConditionModel(**{**TINY, "sample_size": 8})
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v", "conv1"]))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    state = {f"unet.{k}": (v + 0.01 if "lora_B" in k else v).contiguous() for k, v in state.items()}
    if text_encoder:
        state["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = (
            torch.ones(4, 32)
        )
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "pytorch_lora_weights.safetensors"))
    return path


def test_a_unet_folder_is_told_from_a_language_model_s(tmp_path: Path) -> None:
    unet = tiny_folder(tmp_path / "sd" / "unet")
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    assert unet_folder(str(unet)) == unet
    assert unet_folder(str(tmp_path / "sd")) == unet  # a pipeline folder: its unet/
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert unet_folder(str(lm)) is None and unet_folder("gpt2") is None
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserInputError, match=r"holds diffusers' AutoencoderKL; .* takes a UNet2D"):
        resolve(vae)
    odd = tiny_folder(tmp_path / "odd", class_embed_type="timestep")
    with pytest.raises(UserInputError, match="class_embed_type='timestep' needs inputs"):
        resolve(odd)


@pytest.mark.parametrize(("change", "flag"), [
    ({"tokens": 64}, "--tokens"), ({"dora": True}, "--dora"), ({"blocks": 1}, "--blocks"),
    ({"compile": True}, "--compile"), ({"adapters": 2}, "--adapters"),
])  # fmt: skip
def test_what_a_unet_does_not_take_is_refused_naming_it(change: dict, flag: str) -> None:
    with pytest.raises(UserInputError, match=f"{flag}: a language model's"):
        check_request(Request(model="x", **change))  # type: ignore[arg-type]


def test_an_adapter_given_and_described_is_refused() -> None:
    with pytest.raises(UserInputError, match="--adapter FILE gives the adapter; --rank"):
        check_request(Request(model="x", adapter="a.safetensors", rank=8))


def run_model(*argv: str) -> tuple[int, str]:
    import contextlib
    import io

    from bench.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["model", *argv, "--seconds", "0.2", "--threads", "1"])
    return code, out.getvalue()


def test_a_described_adapter_on_attention_and_convolutions(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path / "tiny")
    code, printed = run_model(str(folder), "--targets", "attn+conv", "--rank", "4",
                              "-o", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, printed
    run = load_run(tmp_path / "out" / "tiny-cpu.json")
    timed = {(e.phase, e.variant) for e in run.user_model()}
    assert timed == {("denoise", v) for v in ("peft", "fused", "addmm/conv_add", "merged")} | {
        ("train", v) for v in ("peft", "addmm/conv_add", "autograd/conv_autograd")
    }
    assert all(e.rel_error <= 1e-4 and e.tokens == 64 for e in run.user_model())
    info = run.user_model_info()
    assert info is not None and info.model_kind == "unet" and info.random_weights
    assert set(info.merge_s) == {"diffusers fuse_lora", "ours"} and info.adapted_layers > 8
    assert "one adapter served (denoising)" in printed and "training" in printed
    assert "many adapters served" not in printed
    md = (tmp_path / "out" / "tiny-cpu.md").read_text()
    assert "### Your model: denoising step" in md and "### Your model: training step" in md


def test_a_diffusers_lora_file_on_saved_weights(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path / "tiny", weights=True)
    adapter = lora_file(tmp_path / "lora", text_encoder=True)
    code, printed = run_model(str(folder), "--adapter", str(adapter), "--mode", "generate",
                              "-o", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, printed
    run = load_run(tmp_path / "out" / "tiny-cpu.json")
    assert {e.adapter for e in run.user_model()} == {"pytorch_lora_weights"}
    assert {(e.phase, e.variant) for e in run.user_model()} == {
        ("denoise", v) for v in ("peft", "fused", "addmm/conv_add", "merged")
    }
    info = run.user_model_info()
    assert info is not None and not info.random_weights and "weights from" in info.model_source
    assert any("text encoder" in n for n in info.notes)
    assert "r=4" in info.adapter_source


def test_attention_alone_is_run_by_our_linear_impls(tmp_path: Path) -> None:
    code, printed = run_model("unet-tiny", "--mode", "train", "-o", str(tmp_path))
    assert code == 0, printed
    run = load_run(tmp_path / "unet-tiny-cpu.json")
    assert [e.variant for e in run.user_model()] == ["peft", "addmm", "autograd"]


def test_an_adapter_with_layers_this_unet_lacks_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """diffusers loads the layers that match and only warns of the others: refused here."""
    from safetensors.torch import load_file, save_file

    adapter = lora_file(tmp_path / "lora")
    path = adapter / "pytorch_lora_weights.safetensors"
    state = load_file(str(path))
    for key in [k for k in state if ".attn1.to_q." in k][:2]:  # one layer's down and up
        state[key.replace("to_q", "to_nowhere")] = state[key].clone()
    save_file(state, str(path))
    code, _ = run_model("unet-tiny", "--adapter", str(adapter), "-o", str(tmp_path / "out"))
    assert code == 2
    assert "1 of its" in capsys.readouterr().err


def test_an_adapter_of_another_unet_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tiny_folder(tmp_path / "wide", block_out_channels=(64, 64))
    adapter = lora_file(tmp_path / "lora")
    code, _ = run_model(str(folder), "--adapter", str(adapter), "-o", str(tmp_path / "out"))
    assert code == 2
    assert "does not fit this UNet" in capsys.readouterr().err
    assert not (tmp_path / "out" / "wide-cpu.json").exists()
