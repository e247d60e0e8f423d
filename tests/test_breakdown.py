"""The breakdown's rule on made-up ops: a GEMM's part from its (M, K, N), elementwise ops on y,
norms, ops inside a GEMM, callers' parts, and the wall time no op covers."""

from __future__ import annotations

import pytest

from bench.harness.breakdown import Dims, Record, breakdown, gemm_mkn, own_part
from bench.schema.entries import ProfileEntry

DIMS = Dims(tokens=64, in_features=128, out_features=96, rank=8)


def rec(name: str, shapes: list[list[int]], start: float, end: float, self_us: float,
        parent: int | None = None) -> Record:  # fmt: skip
    return Record(name, shapes, start, end, self_us, parent=parent)


@pytest.mark.parametrize(
    ("name", "shapes", "mkn"),
    [
        ("aten::mm", [[64, 128], [128, 96]], (64, 128, 96)),
        ("aten::addmm", [[96], [64, 128], [128, 96], [], []], (64, 128, 96)),
        ("aten::linear", [[4, 16, 128], [96, 128], [96]], (64, 128, 96)),
        ("aten::matmul", [[4, 16, 128], [128, 8]], (64, 128, 8)),
        ("aten::bmm", [[3, 64, 8], [3, 8, 96]], (192, 8, 96)),
        ("aten::add", [[64, 96], [64, 96], []], None),
        ("aten::mm", [[64, 128]], None),
        ("aten::mm", [[64, 8], [8, 96], [64, 96]], (64, 8, 96)),  # out= comes last
        ("aten::addmm", [[64, 96], [64, 128], [128, 96], [], [], [64, 96]], (64, 128, 96)),
    ],
)
def test_gemm_dimensions(name: str, shapes: list[list[int]], mkn: tuple | None) -> None:
    assert gemm_mkn(name, shapes) == mkn


@pytest.mark.parametrize(
    ("shapes", "train", "part"),
    [
        ([[64, 128], [128, 96]], False, "base GEMM"),
        ([[64, 128], [128, 8]], False, "shrink"),
        ([[64, 8], [8, 96]], False, "expand"),
        ([[96, 8], [8, 128]], False, "W + s·B A"),
        ([[64, 128], [128, 104]], False, "base GEMM"),  # stacked: [W; A], out + r columns
        ([[64, 96], [96, 128]], True, "base GEMM"),  # dx through W
        ([[8, 64], [64, 128]], True, "shrink"),  # dA = dzᵀ x
        ([[96, 64], [64, 8]], True, "expand"),  # dB = dyᵀ z
        ([[64, 96], [96, 128]], False, None),  # a backward shape in a forward: no part
    ],
)
def test_gemm_roles(shapes: list[list[int]], train: bool, part: str | None) -> None:
    assert own_part(rec("aten::mm", shapes, 0, 1, 1), DIMS, train) == part


def test_elementwise_and_norm_parts() -> None:
    assert own_part(rec("aten::add", [[64, 96], [64, 96], []], 0, 1, 1), DIMS, False) == (
        "y add/copy/scale"
    )
    assert own_part(rec("aten::add", [[64, 8], [64, 8], []], 0, 1, 1), DIMS, False) is None
    assert own_part(rec("aten::linalg_vector_norm", [[96, 128]], 0, 1, 1), DIMS, False) == "norm"
    assert own_part(rec("aten::div", [[96], [96]], 0, 1, 1), DIMS, False) == "norm"
    weight_sum = rec("aten::add", [[96, 128], [96, 128], []], 0, 1, 1)
    assert own_part(weight_sum, DIMS, False) == "W + s·B A", "delta_weight's W + s·B A"


def test_breakdown_per_call_with_callers_and_outside() -> None:
    """Two calls of 50 µs each: a linear (its t and a bias copy inside), a scaled add on y, a
    view with no caller; 20 µs between ops are outside any."""
    one = [
        rec("aten::linear", [[64, 128], [96, 128], [96]], 0, 30, 2),
        rec("aten::t", [[96, 128]], 1, 3, 2, parent=0),
        rec("aten::addmm", [[96], [64, 128], [128, 96]], 4, 29, 20, parent=0),
        rec("aten::copy_", [[64, 96], [96]], 5, 8, 3, parent=2),
        rec("aten::add", [[64, 96], [64, 96], []], 35, 40, 5),
        rec("aten::view", [[64, 96], []], 45, 50, 5),
    ]

    def later(r: Record) -> Record:
        parent = None if r.parent is None else r.parent + len(one)
        return Record(
            r.name, r.shapes, r.start_us + 50, r.end_us + 50, r.self_cpu_us, parent=parent
        )

    second = [later(r) for r in one]
    out = breakdown(one + second, DIMS, train=False, calls=2, wall_s=100e-6)
    assert out.wall_s == pytest.approx(50e-6)
    assert out.cpu_s == pytest.approx({"base GEMM": 27e-6, "y add/copy/scale": 5e-6,
                                       "other ops": 5e-6})  # fmt: skip
    assert out.ops["base GEMM"] == ["aten::linear", "aten::t", "aten::addmm", "aten::copy_"]
    assert out.op_count == 6
    assert out.outside_s == pytest.approx(10e-6), "0-30, 35-40, 45-50 covered of each 50"


def test_breakdown_refuses_no_calls() -> None:
    with pytest.raises(ValueError, match="calls >= 1 and wall_s > 0"):
        breakdown([], DIMS, False, 0, 1.0)


def profile(**changes: object) -> ProfileEntry:
    fields: dict = dict(fullname="x", case="toy T=4 r=2 fp32 cpu", key="toy T=4 r=2 fp32",
                        impl="two_step", shape="toy", tokens=4, rank=2, dtype="fp32",
                        device="cpu", mode="infer", calls=3, wall_s=1.1e-3, outside_s=1e-5,
                        cpu_s={"base GEMM": 1e-3}, device_s={}, ops={"base GEMM": ["aten::mm"]},
                        op_count=8, kernel_count=0, allocated_bytes=64.0, peak_bytes=0,
                        paired_s=0.0, base_paired_s=0.0, trace="", snapshot="",
                        unprofiled_s=1e-3)  # fmt: skip
    return ProfileEntry(**(fields | changes))


def test_profile_entry_checks_its_parts_and_says_its_overhead() -> None:
    assert profile().overhead == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"unknown parts \['bogus'\]; known: base GEMM"):
        profile(cpu_s={"bogus": 1e-3})
    with pytest.raises(ValueError, match="must be > 0"):
        profile(unprofiled_s=0.0)
