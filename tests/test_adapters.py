"""Adapters in PEFT's format on our layers: what we save PEFT reads to the same function, what
PEFT saves we read to PEFT's function; switching, deleting, hot-swapping (also under
torch.compile, without a recompile); and refusals that name the file and module and leave the
model as it was."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft_models import needs_peft, peft_model, same, snapshot
from torch import nn

from lora_kernels import (
    adapter_names,
    delete_adapter,
    from_peft,
    hotswap_adapter,
    load_adapter,
    lora_layers,
    merge,
    rel_error,
    save_adapter,
    set_adapter,
    unmerge,
)

pytestmark = needs_peft
IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(5))


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def peft_saved(tmp_path: Path, name: str, seed: int, kind: str = "llama", **config: object) -> Path:
    """A PEFT adapter (A, B and a DoRA magnitude drawn from `seed`) saved in tmp_path/name;
    returns the folder."""
    model = peft_model(kind, **config)
    gen = torch.Generator().manual_seed(seed)
    for key, p in model.named_parameters():
        if "magnitude" in key:
            p.data.mul_(torch.rand(p.shape, generator=gen) + 0.5)
        elif "lora_" in key:
            p.data.normal_(0, 0.2, generator=gen)
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def ours(kind: str = "llama", **config: object) -> nn.Module:
    """A PEFT model of `kind` converted to LoRALinear layers (its own tensors)."""
    model = copy.deepcopy(peft_model(kind, **config))
    from_peft(model)
    return model


def peft_function(folder: Path, kind: str = "llama") -> torch.Tensor:
    """The logits of PEFT's model with the adapter in `folder` loaded by PEFT itself."""
    from peft import PeftModel
    from peft_models import tiny

    return logits(PeftModel.from_pretrained(tiny(kind)[0], folder).eval())


PATTERNS = {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"v_proj": 3}}


@pytest.mark.parametrize("config", [{}, {"use_dora": True}, {"use_rslora": True}, PATTERNS])
def test_load_gives_peft_function_and_save_gives_it_back(tmp_path: Path, config: dict) -> None:
    folder = peft_saved(tmp_path, "a", seed=7, **config)
    model = ours(**{k: v for k, v in config.items() if k == "use_dora"})
    load_adapter(model, folder, "a", activate=True)
    want = peft_function(folder)
    assert rel_error(logits(model), want) <= 1e-5
    assert adapter_names(model) == ["a", "default"]
    save_adapter(model, tmp_path / "again")
    assert rel_error(peft_function(tmp_path / "again"), want) <= 1e-5
    with pytest.raises(FileExistsError, match="never overwritten"):
        save_adapter(model, tmp_path / "again")


def test_gpt2_conv1d_round_trip(tmp_path: Path) -> None:
    folder = peft_saved(tmp_path, "g", seed=3, kind="gpt2", fan_in_fan_out=True)
    model = ours("gpt2", fan_in_fan_out=True)
    load_adapter(model, folder, "g", activate=True)
    assert rel_error(logits(model), peft_function(folder, "gpt2")) <= 1e-5


def test_switch_delete_and_the_default(tmp_path: Path) -> None:
    model = ours()
    first = logits(model)
    load_adapter(model, peft_saved(tmp_path, "a", seed=7), "a")
    assert torch.equal(logits(model), first)  # loading does not activate
    set_adapter(model, "a")
    assert not torch.equal(logits(model), first)
    with pytest.raises(ValueError, match="'a' is the active one"):
        delete_adapter(model, "a")
    set_adapter(model, "default")
    assert torch.equal(logits(model), first)
    delete_adapter(model, "a")
    assert adapter_names(model) == ["default"]
    with pytest.raises(ValueError, match=r"'a' is not loaded; loaded: default"):
        set_adapter(model, "a")
    merge(model)
    with pytest.raises(ValueError, match="merged"):
        load_adapter(model, peft_saved(tmp_path, "b", seed=8), "b", activate=True)
    assert adapter_names(model) == ["default"]
    unmerge(model)


def test_hotswap_in_place_pads_rank_and_folds_scale(tmp_path: Path) -> None:
    model = ours(r=4, lora_alpha=8)
    tensors = {n: id(p) for n, p in model.named_parameters()}
    folder = peft_saved(tmp_path, "small", seed=9, r=2, lora_alpha=5)
    hotswap_adapter(model, folder)
    assert {n: id(p) for n, p in model.named_parameters()} == tensors  # the same tensors
    assert rel_error(logits(model), peft_function(folder)) <= 1e-5
    with pytest.raises(ValueError, match="rank 8, above the loaded adapter's 4"):
        hotswap_adapter(model, peft_saved(tmp_path, "big", seed=9, r=8))


def compiled_counting(module: nn.Module) -> tuple[Any, list[torch.fx.GraphModule]]:
    """torch.compile of `module` whose backend runs each graph as traced and keeps it: the
    list grows by one for each graph dynamo compiles."""
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, _: object) -> object:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(module, backend=backend), graphs


def test_hotswap_under_compile_keeps_the_graph(tmp_path: Path) -> None:
    model = ours()
    compiled, graphs = compiled_counting(model)
    logits(compiled)
    logits(compiled)
    assert len(graphs) == 1
    folder = peft_saved(tmp_path, "new", seed=11)
    hotswap_adapter(model, folder)
    assert rel_error(logits(compiled), peft_function(folder)) <= 1e-5
    assert len(graphs) == 1  # no recompile


def test_refusals_name_the_file_and_change_nothing(tmp_path: Path) -> None:
    model = ours()
    before = snapshot(model)
    good = peft_saved(tmp_path, "good", seed=7)
    biased = {**json.loads((good / "adapter_config.json").read_text()), "lora_bias": True}

    def variant(name: str, edit: Callable[[Path], object]) -> Path:
        """A copy of the good adapter in tmp_path/name, edited."""
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        edit(folder)
        return folder

    from safetensors.torch import load_file, save_file

    def reshape(folder: Path) -> None:
        t = load_file(folder / "adapter_model.safetensors")
        key = next(k for k in t if k.endswith("q_proj.lora_A.weight"))
        t[key] = torch.zeros(4, 31)
        save_file(t, folder / "adapter_model.safetensors")

    def extra(folder: Path) -> None:
        t = load_file(folder / "adapter_model.safetensors")
        t["base_model.model.model.layers.0.mlp.nope.lora_A.weight"] = torch.zeros(4, 32)
        save_file(t, folder / "adapter_model.safetensors")

    def poisoned(value: float) -> Callable[[Path], None]:
        def edit(folder: Path) -> None:
            t = load_file(folder / "adapter_model.safetensors")
            key = next(k for k in t if k.endswith("v_proj.lora_B.weight"))
            t[key][1, 2] = value
            save_file(t, folder / "adapter_model.safetensors")

        return edit

    def configured(**changes: object) -> Callable[[Path], None]:
        config = json.loads((good / "adapter_config.json").read_text())
        return lambda f: (f / "adapter_config.json").write_text(json.dumps({**config, **changes}))

    cases = [
        (variant("shape", reshape), r"adapter_model.safetensors: .*q_proj has lora_A \(4, 31\)"),
        (variant("config", lambda f: (f / "adapter_config.json").unlink()),
         r"config/adapter_config.json: missing"),
        (variant("corrupt", lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 9)),
         r"corrupt/adapter_model.safetensors: not a readable safetensors file"),
        (variant("extra", extra), r"weights for model.layers.0.mlp.nope, which has no LoRA layer"),
        (variant("json", lambda f: (f / "adapter_config.json").write_text("{")),
         r"json/adapter_config.json: not a readable JSON file"),
        (variant("bias", lambda f: (f / "adapter_config.json").write_text(json.dumps(biased))),
         r"lora_bias=true"),
        (variant("nan", poisoned(float("nan"))), r"v_proj's lora_B holds non-finite values"),
        (variant("inf", poisoned(float("inf"))), r"v_proj's lora_B holds non-finite values"),
        (variant("r", configured(r=8)),
         r"has rank 4 in its weights, but adapter_config.json gives it r = 8"),
        (variant("pattern", configured(rank_pattern={"v_proj": 2})),
         r"v_proj has rank 4 in its weights, but adapter_config.json gives it r = 2"),
        (variant("r0", configured(r=0)), r"r must be a whole number >= 1, got 0"),
        (variant("alpha", configured(alpha_pattern={"q_proj": -1})),
         r"q_proj's alpha_pattern value must be a finite number > 0, got -1"),
        (tmp_path / "absent", r"absent: no such adapter folder"),
    ]  # fmt: skip
    for folder, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_adapter(model, folder, "x", activate=True)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            hotswap_adapter(model, folder)
    assert same(snapshot(model), before)
    assert adapter_names(model) == ["default"]
    dora = peft_saved(tmp_path, "dora", seed=7, use_dora=True)
    message = r"dora/adapter_model.safetensors: .* is DoRA .*, but the model's layer is LoRA"
    with pytest.raises(ValueError, match=message):
        load_adapter(model, dora, "d")
    assert same(snapshot(model), before)
    assert list(lora_layers(model))


def test_an_adapter_covering_some_layers_loads_as_in_peft(tmp_path: Path) -> None:
    """PEFT's rule: the layers an adapter leaves out run their base layer alone while it is
    active; switching back, merging, saving and reloading keep to it."""
    folder = peft_saved(tmp_path, "q", seed=3, target_modules=["q_proj"])
    model = ours()
    default = logits(model)
    load_adapter(model, folder, "q", activate=True)
    assert rel_error(logits(model), peft_function(folder)) < 1e-5
    off = [n for n, layer in lora_layers(model) if layer.adapter_off]
    assert off and all("q_proj" not in n for n in off)
    merge(model)
    assert rel_error(logits(model), peft_function(folder)) < 1e-5
    unmerge(model)
    save_adapter(model, tmp_path / "again")
    assert rel_error(peft_function(tmp_path / "again"), peft_function(folder)) < 1e-5
    with pytest.raises(ValueError, match="covers other layers than the active adapter"):
        hotswap_adapter(model, peft_saved(tmp_path, "all", seed=4))
    set_adapter(model, "default")
    assert not any(layer.adapter_off for _, layer in lora_layers(model))
    assert rel_error(logits(model), default) < 1e-6


def test_inject_refuses_a_base_weight_that_is_not_finite() -> None:
    from lora_kernels import inject

    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[2].weight[0, 1] = float("inf")
    before = snapshot(model)
    with pytest.raises(ValueError, match="2: its weight or bias holds non-finite values"):
        inject(model, "all-linear", rank=2)
    assert same(snapshot(model), before) and not list(lora_layers(model))
    assert all(p.requires_grad for p in model.parameters()), "nothing frozen either"


@pytest.mark.parametrize("impl", ["two_step", "addmm", "merged", "dora_cached", "dora_factored"])
def test_a_compiled_layer_computes_its_impl(impl: str) -> None:
    """Under torch.compile a LoRALinear traces its impl's op on the live tensors; the graph
    follows an in-place change of A (no stale cache) without compiling again."""
    from lora_kernels import LoRALinear

    gen = torch.Generator().manual_seed(2)
    layer = LoRALinear(12, 10, 4, impl=impl, use_dora=impl.startswith("dora"))
    with torch.no_grad():
        layer.lora_B.normal_(generator=gen)
    layer.requires_grad_(False)
    x = torch.randn(3, 12, generator=gen)
    compiled, graphs = compiled_counting(layer)
    with torch.no_grad():
        assert rel_error(compiled(x), layer(x)) <= 1e-6
        traced = len(graphs)  # more than one where a build checks a value (a graph break)
        layer.lora_A.mul_(2.0)
        assert rel_error(compiled(x), layer(x)) <= 1e-6
    assert len(graphs) == traced


def test_an_adapter_loaded_before_a_move_follows_the_model(tmp_path: Path) -> None:
    model = ours()
    folder = peft_saved(tmp_path, "one", seed=7)
    load_adapter(model, folder, "one")
    want = peft_function(folder)
    model.to(torch.bfloat16)  # casts the active adapter; "one" sits in the bank, in fp32
    set_adapter(model, "one")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert rel_error(logits(model).float(), want) <= 3e-2  # bf16's model tolerance
    set_adapter(model, "default")
    set_adapter(model, "one")  # moved once, kept moved
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.bfloat16}


def test_a_loaded_adapter_owns_its_tensors(tmp_path: Path) -> None:
    """safetensors' load_file maps the file: the loaded tensors changed when the file was
    written over in place (PEFT's save_pretrained does so), and a shorter file killed the
    process with SIGBUS at the next read. Found by the adapter property kit."""
    folder = peft_saved(tmp_path, "a", seed=7)
    model = ours()
    load_adapter(model, folder, "a", activate=True)
    hot = ours()
    hotswap_adapter(hot, folder)
    before = logits(model), logits(hot)
    weights = folder / "adapter_model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:  # the same size, other bytes, the same file
        f.seek(size // 2)
        f.write(b"\x7f" * (size - size // 2))
    assert torch.equal(logits(model), before[0]) and torch.equal(logits(hot), before[1])


def test_an_adapter_folder_appears_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save that dies before the folder's rename leaves no folder and, once the next save
    there has run, no staging folder; a folder holding other files is refused untouched."""
    model = ours()
    load_adapter(model, peft_saved(tmp_path, "a", seed=7), "a", activate=True)
    target = tmp_path / "saved"

    def killed(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(model, target)
    monkeypatch.undo()
    assert not target.exists() and not list(tmp_path.glob(".saved.*"))
    stale = tmp_path / ".saved.999999999.x.tmp"  # a writer SIGKILLed: no process 999999999
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    save_adapter(model, target)
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json",
                                                         "adapter_model.safetensors"]  # fmt: skip
    assert not stale.exists(), "the next save there removes a killed writer's staging folder"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files"):
        save_adapter(model, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    save_adapter(model, empty)
    assert rel_error(peft_function(empty), logits(model)) <= 1e-5
