"""Bench cases: ids, validation, FLOP and byte formulas, profiles and CPU half skips."""

from __future__ import annotations

import pytest

from bench.harness.cases import PROFILES, SHAPES, Case


def test_case_id_and_key() -> None:
    case = Case("llama3-8b.q_proj", 512, 16, "fp32", "cpu")
    assert str(case) == "llama3-8b.q_proj T=512 r=16 fp32 cpu"
    assert case.key == "llama3-8b.q_proj T=512 r=16 fp32"
    assert (case.in_features, case.out_features, case.bias) == (4096, 4096, False)
    fields = case.fields()
    assert fields["case"] == str(case) and fields["key"] == case.key
    assert (fields["shape"], fields["tokens"], fields["rank"]) == ("llama3-8b.q_proj", 512, 16)


def test_flops_and_bytes_by_hand() -> None:
    case = Case("toy", 8, 4)  # 64 -> 10 with bias
    assert case.flops() == 2 * 8 * (64 * 10 + 4 * (64 + 10))
    assert case.flops("train") == 2 * 8 * (2 * 64 * 10 + 3 * 4 * (64 + 10))
    weights = 64 * 10 + 10 + 4 * 64 + 10 * 4
    assert case.min_bytes() == 4 * (8 * 64 + weights + 8 * 10)
    assert case.min_bytes("train") == 4 * (8 * 64 + weights + 8 * 10 + 8 * 10 + 8 * 64 + 4 * 74)
    assert Case("toy", 8, 4, "bf16").min_bytes() == case.min_bytes() // 2


def test_weights_and_input_match_the_case() -> None:
    case = Case("toy", 3, 2, "bf16")
    w, x = case.weights(), case.input()
    assert tuple(w.W.shape) == (10, 64)
    assert w.rank == 2
    assert tuple(x.shape) == (3, 64)
    assert x.dtype == w.dtype == case.torch_dtype


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": "gpt5.q"}, "unknown shape 'gpt5.q'; known: toy"),
        ({"dtype": "fp8"}, "dtype must be one of fp32, fp16, bf16"),
        ({"tokens": 0}, "tokens must be >= 1"),
        ({"rank": 11}, r"rank must be in \[1, 10\] for toy"),
    ],
)
def test_bad_case(kwargs: dict, match: str) -> None:
    args = {"shape": "toy", "tokens": 4, "rank": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        Case(**args)


def test_cpu_half_is_skipped_except_tiny() -> None:
    assert Case("toy", 16, 4, "bf16", "cpu").skip_reason() is None
    reason = Case("gpt2.c_attn", 512, 16, "bf16", "cpu").skip_reason()
    assert reason is not None
    assert "tiny shapes only" in reason
    assert Case("gpt2.c_attn", 512, 16, "bf16", "cuda").skip_reason() is None
    assert Case("gpt2.c_attn", 512, 16, "fp32", "cpu").skip_reason() is None


def test_profiles_expand_to_valid_cases() -> None:
    full = PROFILES["full"].cases(["cpu"], {"cpu": ["fp32"]})
    assert all(c.rank <= min(c.in_features, c.out_features) for c in full)
    assert {c.shape for c in full} == set(SHAPES)
    assert not any(c.shape == "toy" and c.rank > 10 for c in full)
    quick = PROFILES["quick"].cases(["cpu", "cuda"], {"cpu": ["fp32"], "cuda": ["bf16"]})
    assert {c.device for c in quick} == {"cpu", "cuda"}
    assert len({str(c) for c in quick}) == len(quick), "ids must be unique"
    cpu = [c for c in quick if c.device == "cpu"]
    assert any(c.tokens <= 16 for c in cpu) and any(c.tokens >= 512 for c in cpu)
    long = {(c.device, c.tokens) for c in quick if c.tokens >= 4096}
    assert long == {("cuda", 4096), ("cuda", 8192)}, "long prefill on CUDA only"
