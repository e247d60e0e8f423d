"""Running a Triton test file again in a child pytest under TRITON_INTERPRET=1, which must be
set before triton is imported: how the kernels' tests run on a machine without CUDA."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"
NO_KERNEL = "no CUDA: run by test_kernel_under_the_interpreter in a child with TRITON_INTERPRET=1"


def run_interpreted(test_file: str) -> None:
    """Run `test_file` in a child pytest with TRITON_INTERPRET=1; fail unless every test
    passed there but the one that started it."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider"]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed, 1 skipped in ", summary), summary  # 1: that test, there
