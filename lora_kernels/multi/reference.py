"""Float64 oracle of the multi-adapter forward: a loop over tokens, written apart from every
implementation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lora_kernels.multi.weights import MultiLoRAWeights
from lora_kernels.reference import poisoned_memory, rel_error


def multi_reference_forward(weights: MultiLoRAWeights, x: Tensor, index: Tensor) -> Tensor:
    """y_t = x_t Wᵀ + b + s_i · B_i[:, :r_i] (A_i[:r_i] x_t) for token t with adapter i = index_t
    (nothing added for -1), token by token in float64 on the CPU; x (..., in) -> (..., out)."""
    flat = weights.check_index(index, x).tolist()
    x64 = x.detach().to("cpu", torch.float64).reshape(len(flat), weights.in_features)
    W = weights.W.detach().to("cpu", torch.float64)
    y = x64 @ W.T  # (T, out)
    if weights.b is not None:
        y += weights.b.detach().to("cpu", torch.float64)
    A = weights.A.detach().to("cpu", torch.float64)  # (n, r_max, in)
    B = weights.B.detach().to("cpu", torch.float64)  # (n, out, r_max)
    for t, i in enumerate(flat):
        if i < 0:
            continue
        r = weights.ranks[i]
        y[t] += weights.scales[i] * (B[i, :, :r] @ (A[i, :r] @ x64[t]))
    return y.reshape(*x.shape[:-1], weights.out_features)


def multi_forward_error(
    op: Callable[[Tensor, Tensor], Tensor], weights: MultiLoRAWeights, x: Tensor, index: Tensor
) -> float:
    """Relative error of op(x, index), run on poisoned memory, against the float64 oracle."""
    flat = weights.check_index(index, x)
    with poisoned_memory():
        y = op(x, flat)
    want = (*x.shape[:-1], weights.out_features)
    if tuple(y.shape) != want or y.dtype != weights.dtype:
        raise ValueError(f"op returned {tuple(y.shape)} {y.dtype}; expected {want} {weights.dtype}")
    return rel_error(y, multi_reference_forward(weights, x, index))
