"""Noise a user saw in every run, kept off lora-bench's output without hiding a real error:
kineto's USDT lines at each profile, and bitsandbytes' warning that its optional Hub kernel
did not load."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.harness.quiet import without_kineto_lines

ROOT = Path(__file__).resolve().parents[1]


def test_a_profile_leaves_kineto_s_lines_out_and_a_real_error_in(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from torch.profiler import ProfilerActivity, profile

    with without_kineto_lines(), profile(activities=[ProfilerActivity.CPU]):
        torch.mm(torch.randn(4, 4), torch.randn(4, 4))
        os.write(2, b"a real error from C\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and "profiler_start" not in err
    assert "a real error from C" in err


def test_lora_bench_profile_prints_no_kineto_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.cli.main", "profile", "toy", "--tokens", "8", "--rank",
           "2", "--impl", "addmm", "-o", str(tmp_path / "p")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "USDT" not in proc.stdout + proc.stderr


NO_BNB = "bitsandbytes is not installed: pip install 'lora-bench[quant]'"


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason=NO_BNB)
def test_bitsandbytes_hub_kernel_warning_is_left_out_and_its_other_warnings_kept() -> None:
    code = "import lora_kernels, bitsandbytes"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    assert "Failed to load CPU gemm_4bit_forward" not in proc.stderr
    import lora_kernels.quant  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "a real problem", (),
                               None)  # fmt: skip
    assert logger.filter(record)
