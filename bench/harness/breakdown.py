"""Where a call's time goes: the ops a profiler recorded, each given to one part of the work
(the base GEMM, the shrink x Aᵀ, the expand into y, ...) by its name and input shapes.

Torch-free: records are plain values, so the rule is tested on made-up ops.

A GEMM's part is read from its (M, K, N): the product of an (M, K) and a (K, N) matrix, as
aten::mm, addmm, bmm, linear and matmul take them. The roles, in matching order:

- base GEMM: x Wᵀ (T, in, out), and in training dx through W (T, out, in);
- shrink: x Aᵀ (T, in, r); in training dx through A (T, r, in) and dA (r, T, in);
- expand: z Bᵀ (T, r, out); in training dz (T, out, r) and dB (out, T, r);
- W + s·B A: the weight-sized product B A (out, r, in), or its transpose (in, r, out); in
  training the adapted weight's gradient (out, T, in) and dA, dB from it (r, out, in),
  (out, in, r).

stacked's one GEMM against [W; A] (T, in, out + r) is the base GEMM's: it holds the shrink.

Where two roles have the same (M, K, N) (in = out and T = r), the first takes it: the
breakdown says so in its note. Inference matches the forward roles only. Elementwise ops on
a y-sized tensor (T × out) are "y add/copy/scale", on a weight-sized one (out × in) "W + s·B A"
(forming the adapted weight on every call); norms, and elementwise ops on a vector of one
value per output row (DoRA's magnitude and norm), are "norm".
An op inside a GEMM op, and an op no rule names, takes its caller's part (aten::t and the bias
copy inside aten::linear are the GEMM's), and "other ops" when it has no caller. "outside
ops" is the call's wall time that no op covers: Python and dispatch between ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.schema.entries import PARTS

BASE, SHRINK, EXPAND, DELTA, ELEMENTWISE, NORM, OTHER = PARTS
GEMMS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm",
         "aten::linear", "aten::matmul", "aten::_addmm_activation"}  # fmt: skip
ADD_FIRST = {"aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::_addmm_activation"}
Y_OPS = {"aten::add", "aten::add_", "aten::copy_", "aten::mul", "aten::mul_", "aten::clone",
         "aten::contiguous", "aten::addcmul", "aten::addcmul_", "aten::div", "aten::div_",
         "aten::sub", "aten::sub_", "aten::fill_", "aten::zero_"}  # fmt: skip
NORM_OPS = {"aten::linalg_vector_norm", "aten::norm", "aten::frobenius_norm", "aten::sqrt",
            "aten::rsqrt", "aten::pow", "aten::reciprocal", "aten::square"}  # fmt: skip
ROW_OPS = Y_OPS | {"aten::sum", "aten::where", "aten::gt", "aten::clamp", "aten::clamp_min"}


@dataclass(frozen=True)
class Dims:
    """The case's sizes: tokens T, in and out features, rank r."""

    tokens: int
    in_features: int
    out_features: int
    rank: int

    def roles(self, train: bool) -> list[tuple[tuple[int, int, int], str]]:
        t, i, o, r = self.tokens, self.in_features, self.out_features, self.rank
        forward = [((t, i, o), BASE), ((t, i, o + r), BASE), ((t, i, r), SHRINK),
                   ((t, r, o), EXPAND), ((o, r, i), DELTA)]  # fmt: skip
        backward = [((t, o, i), BASE), ((t, r, i), SHRINK), ((r, t, i), SHRINK),
                    ((t, o, r), EXPAND), ((o, t, r), EXPAND), ((i, r, o), DELTA),
                    ((o, t, i), DELTA), ((o, i, r), DELTA), ((r, o, i), DELTA)]  # fmt: skip
        return forward + backward if train else [*forward, ((i, r, o), DELTA)]


@dataclass(frozen=True)
class Record:
    """One op the profiler saw: its name, input shapes, interval (µs), self times (µs), the
    bytes it allocated itself, kernels it launched, and its caller's index (None: top)."""

    name: str
    shapes: list[list[int]]
    start_us: float
    end_us: float
    self_cpu_us: float
    self_device_us: float = 0.0
    self_bytes: int = 0
    kernels: int = 0
    parent: int | None = None


def _prod(dims: list[int]) -> int:
    return math.prod(dims) if dims else 1


def gemm_mkn(name: str, shapes: list[list[int]]) -> tuple[int, int, int] | None:
    """(M, K, N) of a GEMM op from its input shapes, by position (an out= tensor, as compiled
    code passes, comes last); None when the op is not one or its shapes do not say."""
    first = 1 if name in ADD_FIRST else 0  # addmm(self, mat1, mat2, ...)
    if name not in GEMMS or len(shapes) < first + 2:
        return None
    a, b = shapes[first], shapes[first + 1]
    if len(a) < (1 if name == "aten::linear" else 2) or len(b) < 2:
        return None
    if name == "aten::linear":  # input (..., K), weight (N, K)
        return _prod(a[:-1]), a[-1], b[0]
    if len(b) == 2:  # (..., M, K) @ (K, N): leading dims are rows
        return _prod(a[:-1]), a[-1], b[1]
    return _prod(a[:-1]), a[-1], b[-1]  # batched: (b, M, K) @ (b, K, N)


def own_part(rec: Record, dims: Dims, train: bool) -> str | None:
    """The part an op names by itself, or None when it takes its caller's."""
    mkn = gemm_mkn(rec.name, rec.shapes)
    if mkn is not None:
        return next((part for shape, part in dims.roles(train) if shape == mkn), None)
    if rec.name in NORM_OPS:
        return NORM
    first = _prod(rec.shapes[0]) if rec.shapes and rec.shapes[0] else 0
    if first == dims.tokens * dims.out_features and rec.name in Y_OPS:
        return ELEMENTWISE
    if first == dims.in_features * dims.out_features and rec.name in Y_OPS:
        return DELTA
    if first == dims.out_features and rec.name in ROW_OPS:
        return NORM
    return None


@dataclass
class Breakdown:
    """Per call: seconds of each part on the CPU side (self time of its ops) and on the device
    (kernel time), ops and kernels, bytes the ops allocated, the distinct op names per part,
    and the wall time, of which `outside_s` no op covered."""

    calls: int
    wall_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    device_s: dict[str, float] = field(default_factory=dict)
    ops: dict[str, list[str]] = field(default_factory=dict)
    op_count: float = 0.0
    kernel_count: float = 0.0
    allocated_bytes: float = 0.0
    outside_s: float = 0.0


def _covered_us(records: list[Record]) -> float:
    """Length of the union of the top-level ops' intervals."""
    spans = sorted((r.start_us, r.end_us) for r in records if r.parent is None)
    total, end = 0.0, -math.inf
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def breakdown(
    records: list[Record], dims: Dims | Sequence[Dims], train: bool, calls: int, wall_s: float
) -> Breakdown:
    """The per-call breakdown of `calls` calls that took `wall_s` in all. Several `dims` (a
    whole model's adapted layers, at each token count it runs): an op takes the part the
    first of them names."""
    if calls < 1 or not wall_s > 0:
        raise ValueError(f"need calls >= 1 and wall_s > 0, got {calls} and {wall_s}")
    every = [dims] if isinstance(dims, Dims) else list(dims)
    parts: list[str] = []
    for rec in records:  # callers come before their callees
        inherited = parts[rec.parent] if rec.parent is not None else OTHER
        inside_gemm = inherited in (BASE, SHRINK, EXPAND, DELTA)  # addmm's copy of the bias
        own = None if inside_gemm else next(
            (part for d in every if (part := own_part(rec, d, train))), None)  # fmt: skip
        parts.append(own or inherited)
    out = Breakdown(calls, wall_s / calls)
    for rec, part in zip(records, parts, strict=True):
        out.cpu_s[part] = out.cpu_s.get(part, 0.0) + rec.self_cpu_us * 1e-6 / calls
        if rec.self_device_us:
            out.device_s[part] = out.device_s.get(part, 0.0) + rec.self_device_us * 1e-6 / calls
        names = out.ops.setdefault(part, [])
        if rec.name not in names:
            names.append(rec.name)
        out.allocated_bytes += max(rec.self_bytes, 0) / calls
        out.kernel_count += rec.kernels / calls
    out.op_count = sum(1 for r in records if r.name.startswith("aten::")) / calls
    out.outside_s = max(wall_s - _covered_us(records) * 1e-6, 0.0) / calls
    return out
