"""Many adapters in one batch across a whole model: multi_from_peft and adapter_batch give each
sequence its adapter's function, PEFT's mixed batch (generate(adapter_names=...)) being the
reference; bad names and counts are refused before the model runs."""

from __future__ import annotations

import copy

import pytest
import torch
from peft_models import needs_peft, peft_model
from torch import nn

from lora_kernels import MULTI_IMPLS, adapter_batch, multi_from_peft, rel_error

pytestmark = needs_peft
CPU_IMPLS = [
    n for n, i in MULTI_IMPLS.items()
    if i.origin == "ours" and not i.unavailable_reason("cpu", torch.float32, "infer")
]  # fmt: skip
NAMES = ["a1", None, "a2", "a1", "default"]  # None: the base model alone


def three_adapters() -> nn.Module:
    """A PEFT Llama with adapters default (r=4), a1 (r=2) and a2 (r=8), all random."""
    from peft import LoraConfig

    model = peft_model("llama")
    for name, r in (("a1", 2), ("a2", 8)):
        model.add_adapter(name, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                           init_lora_weights=False))  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    for key, p in model.named_parameters():
        if "lora_" in key:
            p.data.normal_(0, 0.2, generator=gen)
    return model.eval()


def peft_names(names: list[str | None]) -> list[str]:
    return ["__base__" if n is None else n for n in names]


@pytest.mark.parametrize("r_max", [None, 16])
@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_generate_matches_peft_mixed_batch(impl: str, r_max: int | None) -> None:
    peft = three_adapters()
    ids = torch.randint(0, 64, (len(NAMES), 6), generator=torch.Generator().manual_seed(4))
    want = peft.generate(input_ids=ids, max_new_tokens=5, do_sample=False,
                         adapter_names=peft_names(NAMES), pad_token_id=0)  # fmt: skip
    with torch.no_grad():
        want_logits = peft(input_ids=want, adapter_names=peft_names(NAMES)).logits
    ours = copy.deepcopy(peft)
    layers = multi_from_peft(ours, impl=impl, r_max=r_max)
    assert {tuple(m.names) for m in layers.values()} == {("default", "a1", "a2")}
    assert {m.lora_A.shape[1] for m in layers.values()} == {r_max or 8}
    with adapter_batch(ours, NAMES), torch.no_grad():
        got = ours.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        logits = ours(input_ids=want).logits
    assert torch.equal(got, want)
    assert rel_error(logits, want_logits) <= 1e-5


def test_refusals_before_the_model_runs() -> None:
    ours = three_adapters()
    multi_from_peft(ours)
    ids = torch.zeros(2, 3, dtype=torch.long)
    unknown = r"unknown adapters \['zz'\]; known: default, a1, a2"
    with pytest.raises(ValueError, match=unknown), adapter_batch(ours, ["a1", "zz"]):
        pass
    calls = []
    hook = ours.get_input_embeddings().register_forward_hook(lambda *_: calls.append(1))
    count = "the batch has 2 sequences, but adapter_batch gave 3"
    with pytest.raises(ValueError, match=count), adapter_batch(ours, ["a1", "a2", None]):
        ours(input_ids=ids)
    assert not calls  # refused before the embedding ran
    hook.remove()
    with pytest.raises(RuntimeError, match="no adapter batch set"), torch.no_grad():
        ours(input_ids=ids)
    with pytest.raises(ValueError, match="one adapter name per sequence"):
        adapter_batch(ours, "a1").__enter__()
    with pytest.raises(ValueError, match="serves an adapter batch already"):
        multi_from_peft(ours)
    with pytest.raises(ValueError, match=r"r_max must be an int >= the largest rank 8"):
        multi_from_peft(three_adapters(), r_max=4)
