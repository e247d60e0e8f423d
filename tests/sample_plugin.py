"""A plugin that is not installed, loaded by `--lora-impl tests/sample_plugin.py:IMPLS`:
two impls from one attribute, one of them with a strided output the bench must charge."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lora_kernels import Impl, LoRAWeights, Op
from lora_kernels.registry import rows_op


def build_sample(w: LoRAWeights) -> Op:
    def rows(x: torch.Tensor) -> torch.Tensor:  # (T, in)
        return torch.addmm(F.linear(x, w.W, w.b), F.linear(x, w.A), w.B.t(), alpha=w.scale)

    return rows_op(w, rows)


def build_strided(w: LoRAWeights) -> Op:
    """The same function for 2-D x, returned as the left half of a (T, 2·out) buffer."""

    def op(x: torch.Tensor) -> torch.Tensor:
        buf = torch.empty(x.shape[0], 2 * w.out_features, dtype=x.dtype, device=x.device)
        y = buf[:, : w.out_features]
        torch.addmm(F.linear(x, w.W, w.b), F.linear(x, w.A), w.B.t(), alpha=w.scale, out=y)
        return y

    return op


IMPLS = [
    Impl("sample_addmm", "test plugin: addmm of the expand", build_sample),
    Impl("sample_strided", "test plugin: y as a strided view", build_strided,
         modes=frozenset({"infer"})),
]  # fmt: skip
