"""Kit 3 of adapters and quantized bases, the adapter half: PEFT saves an adapter of a random
config (targets, r, alpha, rank and alpha patterns, rsLoRA, DoRA, random weights) for a small
random model; what load_adapter and hotswap_adapter read from it must compute PEFT's function,
and what save_adapter writes PEFT must read back to the same function. The file is then
mangled at random (the config's r or patterns against the weights, NaN and inf, dtypes,
missing and extra keys, shapes, DoRA against LoRA, broken bytes; alpha and rsLoRA changed):
each mangled file either gives the function PEFT reads from it, or is refused with the model
as it was (its tensors, bank and active adapter)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from peft_models import needs_peft, same, snapshot
from torch import nn

from lora_kernels import (
    adapter_names,
    hotswap_adapter,
    inject,
    load_adapter,
    rel_error,
    save_adapter,
)

pytestmark = needs_peft
TARGETS = ("q_proj", "v_proj", "up", "down")
CHECKS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BOUND = 1e-5  # fp32, TF32 off: DESIGN's tolerance


class Block(nn.Module):
    def __init__(self, d: int, h: int, bias: bool) -> None:
        super().__init__()
        self.q_proj, self.v_proj = nn.Linear(d, d, bias=bias), nn.Linear(d, d, bias=bias)
        self.up, self.down = nn.Linear(d, h, bias=bias), nn.Linear(h, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.q_proj(x) * torch.sigmoid(self.v_proj(x))
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    """x (T, d) -> (T, d) through `n` blocks of four linear layers (d->d, d->d, d->h, h->d)."""

    def __init__(self, d: int, h: int, n: int, bias: bool, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(Block(d, h, bias) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@st.composite
def setups(draw: st.DrawFn) -> dict:
    """A model's sizes and a PEFT LoRA config for it: r, alpha and patterns within the
    targeted layers' sizes."""
    d, h, n = draw(st.integers(2, 12)), draw(st.integers(2, 12)), draw(st.integers(1, 2))
    targets = draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=4, unique=True))
    top = min(d, h) if {"up", "down"} & set(targets) else d
    names = [f"blocks.{i}.{t}" for i in range(n) for t in targets]
    keys = st.sampled_from(targets + names)  # a layer's own name, or a full path
    ranks = st.dictionaries(keys, st.integers(1, top), max_size=2)
    alphas = st.dictionaries(keys, st.floats(0.5, 64).map(lambda a: round(a, 3)), max_size=2)
    config = {
        "r": draw(st.integers(1, top)),
        "lora_alpha": draw(st.sampled_from([1, 8, 16.0]) | st.floats(0.5, 64)),
        "rank_pattern": draw(ranks),
        "alpha_pattern": draw(alphas),
        "use_rslora": draw(st.booleans()),
        "use_dora": draw(st.booleans()),
        "target_modules": targets,
    }
    return {"d": d, "h": h, "n": n, "bias": draw(st.booleans()), "seed": draw(st.integers(0, 99)),
            "config": config}  # fmt: skip


def base(setup: dict) -> Net:
    return Net(setup["d"], setup["h"], setup["n"], setup["bias"], setup["seed"]).eval()


def out(model: nn.Module, setup: dict) -> torch.Tensor:
    x = torch.randn(5, setup["d"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x)


def peft_saved(setup: dict, folder: Path) -> None:
    """PEFT's model for the setup with random A, B (and DoRA magnitudes), saved in `folder`."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base(setup), LoraConfig(**setup["config"], init_lora_weights=False))
    gen = torch.Generator().manual_seed(setup["seed"] + 1)
    for key, p in model.named_parameters():
        if "magnitude" in key:
            p.data.mul_(torch.rand(p.shape, generator=gen) + 0.5)
        elif "lora_" in key:
            p.data.normal_(0, 0.3, generator=gen)
    model.save_pretrained(folder)


def peft_reads(setup: dict, folder: Path) -> torch.Tensor:
    """The output of PEFT's own load of `folder` onto the setup's model: the file's
    function. PEFT's model that saved it can compute another: where two keys of a pattern
    match a layer the first wins, and PEFT writes the config with its keys sorted."""
    from peft import PeftModel

    return out(PeftModel.from_pretrained(base(setup), folder).eval(), setup)


def ours(setup: dict, rank: int = 1) -> nn.Module:
    """The setup's model with LoRALinear layers at `rank` (B zero: the "default" adapter)."""
    model = base(setup)
    config = setup["config"]
    inject(model, config["target_modules"], rank, use_dora=config["use_dora"])
    return model


@CHECKS
@given(setup=setups())
def test_peft_files_load_and_save_to_peft_function(
    setup: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("peft")
    peft_saved(setup, folder / "a")
    model = ours(setup)
    try:
        want = peft_reads(setup, folder / "a")  # PEFT's own model can differ: see peft_reads
    except RuntimeError:  # its sorted keys give a layer another rank than its weights have
        event("PEFT cannot read the file it wrote")
        before = snapshot(model)
        with pytest.raises(ValueError, match=r"has rank \d+ in its weights, but"):
            load_adapter(model, folder / "a", "a", activate=True)
        assert same(snapshot(model), before)
        return
    event(f"rslora={setup['config']['use_rslora']} dora={setup['config']['use_dora']}")
    load_adapter(model, folder / "a", "a", activate=True)
    assert rel_error(out(model, setup), want) <= BOUND, "load_adapter: PEFT's function"
    save_adapter(model, folder / "saved", "a")
    assert rel_error(peft_reads(setup, folder / "saved"), want) <= BOUND, "PEFT reads it back"
    top = min(min(m.weight.shape) for n, m in base(setup).named_modules()
              if n.rpartition(".")[2] in setup["config"]["target_modules"])  # fmt: skip
    swapped = ours(setup, rank=top)  # every rank the file can hold fits: the swap is taken
    hotswap_adapter(swapped, folder / "a")
    assert rel_error(out(swapped, setup), want) <= BOUND, "hotswap_adapter: PEFT's function"
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "a" / "adapter_model.safetensors"))
    ranks = {t.shape[0] for key, t in tensors.items() if key.endswith("lora_A.weight")}
    small = ours(setup, rank=1)  # a file of any rank above 1 does not fit: refused, unchanged
    before, answer = snapshot(small), out(small, setup)
    if ranks == {1}:
        hotswap_adapter(small, folder / "a")
        assert rel_error(out(small, setup), want) <= BOUND, "rank 1 throughout: swapped"
        return
    with pytest.raises(ValueError, match="above the loaded adapter's 1"):
        hotswap_adapter(small, folder / "a")
    assert same(snapshot(small), before) and torch.equal(out(small, setup), answer)


def mangle(folder: Path, how: str, rng: random.Random) -> bool:
    """Mangle the adapter in `folder` in place; True where PEFT's function of the result is
    still a LoRA adapter's function (the file stays consistent), False where the file is
    inconsistent and must be refused."""
    from safetensors.torch import load_file, save_file

    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    config = json.loads(config_path.read_text())
    tensors = load_file(str(weights_path))
    keys = sorted(tensors)
    key = rng.choice(keys)
    module = key.rsplit(".", 2)[0].removeprefix("base_model.model.") if "weight" in key \
        else key.rsplit(".", 1)[0].removeprefix("base_model.model.")  # fmt: skip
    A = tensors.get(f"base_model.model.{module}.lora_A.weight")
    rank = int(A.shape[0]) if A is not None else 1
    kept = True
    if how == "r off":  # the config's rank for this module, against its weights
        config["rank_pattern"] = {re.escape(module): rank + 1, **config.get("rank_pattern", {})}
        kept = False
    elif how == "nan" or how == "inf":
        t = tensors[key].clone()
        t.view(-1)[rng.randrange(t.numel())] = float(how)
        tensors[key], kept = t, False
    elif how in ("fp16", "bf16", "fp64"):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}[how]
        tensors = {k: t.to(dtype) for k, t in tensors.items()}
    elif how == "int":
        tensors[key], kept = (tensors[key] * 4).round().to(torch.int32), False
    elif how == "missing":
        del tensors[key]
        kept = False
    elif how == "extra":
        tensors["base_model.model.blocks.0.nope.lora_A.weight"] = torch.ones(rank, 2)
        kept = False
    elif how == "shape":
        tensors[key] = torch.cat([tensors[key], tensors[key][..., :1]], dim=-1)
        kept = False
    elif how == "dora flip":  # a magnitude vector dropped, or one made up
        magnitudes = [k for k in keys if k.endswith("lora_magnitude_vector")]
        if magnitudes:
            del tensors[magnitudes[0]]
        else:
            B = tensors[f"base_model.model.{module}.lora_B.weight"]
            tensors[f"base_model.model.{module}.lora_magnitude_vector"] = torch.ones(B.shape[0])
        kept = False
    elif how == "alpha":
        config["lora_alpha"] = round(rng.uniform(0.5, 64), 3)
    elif how == "rslora flip":
        config["use_rslora"] = not config.get("use_rslora", False)
    elif how == "bad alpha":
        config["lora_alpha"], kept = rng.choice([0, -2, "8", None, True]), False
    elif how == "bad r":
        config["r"], kept = rng.choice([0, -1, 2.5, "4", True]), False
    elif how == "truncated":
        weights_path.write_bytes(weights_path.read_bytes()[: rng.randrange(1, 200)])
        return False
    elif how == "json":
        config_path.write_text(config_path.read_text()[: rng.randrange(0, 20)])
        return False
    else:
        raise AssertionError(f"no such mangle: {how}")
    config_path.write_text(json.dumps(config))
    save_file(tensors, str(weights_path))
    return kept


MANGLES = ["r off", "nan", "inf", "fp16", "bf16", "fp64", "int", "missing", "extra", "shape",
           "dora flip", "alpha", "rslora flip", "bad alpha", "bad r", "truncated",
           "json"]  # fmt: skip


@pytest.mark.parametrize("how", MANGLES)
@settings(CHECKS, max_examples=12)
@given(setup=setups(), op=st.sampled_from(["load", "hotswap"]), seed=st.integers(0, 2**16))
def test_a_mangled_file_gives_peft_function_or_is_refused_unchanged(
    setup: dict,
    how: str,
    op: str,
    seed: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("mangled") / "a"
    peft_saved(setup, folder)
    try:
        peft_reads(setup, folder)
    except RuntimeError:
        assume(False)  # PEFT cannot read the file it wrote (see above): nothing to mangle
    model = ours(setup)
    load_adapter(model, folder, "first", activate=True)  # the state a refusal must keep
    before, names = snapshot(model), adapter_names(model)
    answer = out(model, setup)
    kept = mangle(folder, how, random.Random(seed))  # in place: the loaded tensors are copies
    act: Callable[[], None] = (
        (lambda: load_adapter(model, folder, "second", activate=True)) if op == "load"
        else (lambda: hotswap_adapter(model, folder))
    )  # fmt: skip
    refusal = None
    try:
        act()
    except (ValueError, TypeError, FileNotFoundError) as err:
        refusal = err
    if refusal is None:
        event(f"{how}: taken")
        assert kept, f"{how}: an inconsistent file was taken"
        assert rel_error(out(model, setup), peft_reads(setup, folder)) <= BOUND, how
        return
    event(f"{how}: refused")
    if kept:  # a consistent file may only be refused by a hot swap, for its rank
        assert op == "hotswap" and "above the loaded adapter's" in str(refusal), refusal
    assert "adapter" in str(refusal) or str(folder) in str(refusal), refusal
    assert same(snapshot(model), before), f"{how}: refused, but the model changed"
    assert adapter_names(model) == names
    assert torch.equal(out(model, setup), answer)
