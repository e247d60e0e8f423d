"""The demo prints the seed toy's counts and its loss goes down."""

from __future__ import annotations

import pytest

from lora_kernels import demo


def test_demo_counts_and_loss(capsys: pytest.CaptureFixture[str]) -> None:
    demo.main([])
    out = capsys.readouterr().out
    assert "trainable 296 of total 946" in out
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("epoch")]
    assert len(losses) == 10
    assert losses[-1] < 0.1 * losses[0]


def test_demo_rejects_bad_rank(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--rank", "11"])
    assert exc.value.code == 2
    assert (
        "rank must be in [1, min(in_features, out_features)] = [1, 10]" in capsys.readouterr().err
    )
