"""The conformance kit: the equivalence suite any Impl must pass, ours, a peer's or a plugin's.

For every device and dtype the impl claims (and this machine has), and each mode it claims:
- forward against the float64 oracle, on memory poisoned with NaN so an unwritten output shows;
- the gradients of x, A and B (DoRA: and m) against the oracle, for impls that train;
- inputs unchanged: x, W, b, A and B (and m) hold the same values after the call.
Shapes: one token, r=1, r=min(in, out), 1 to 3 leading dims, T=0, non-contiguous x, then
seeded random shapes. DoRA impls get DoRAWeights: every other shape takes the exact norm
gradient (where the impl has it), and a row of W + s·B A that is zero. QLoRA impls get
QLoRAWeights, the formats they take on the device in turn from shape to shape (4-bit ones
with `in` rounded up to whole blocks), checked against the oracle on the dequantized base.
Conv2d LoRA impls get ConvLoRAWeights on CONV_SHAPES: kernels 1 to 5, stride, padding and
dilation, r above in, channels-last and non-contiguous x, and a batch of none; Conv2d DoRA
impls ConvDoRAWeights on the same shapes, the exact norm gradient and a zero channel as for
DoRA.
`lora-bench verify NAME` prints the table; the tests run the same checks.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from tabulate import tabulate

from lora_kernels.conv.dora_weights import ConvDoRAWeights
from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.dora.weights import DoRAWeights
from lora_kernels.quant.formats import FOUR_BIT, format_unavailable
from lora_kernels.quant.weights import QLoRAWeights
from lora_kernels.reference import forward_error, gradient_errors, tolerance
from lora_kernels.registry import DEVICES, FORMATS, MODES, Impl
from lora_kernels.weights import SUPPORTED_DTYPES, LoRAWeights, dtype_name


@dataclass(frozen=True)
class Shape:
    """One conformance case: x (*lead, in) -> (*lead, out) at rank r."""

    label: str
    lead: tuple[int, ...]
    in_f: int
    out_f: int
    rank: int
    bias: bool
    strided: bool = False  # x is a view with stride 2 along `in`

    def make(
        self,
        dtype: torch.dtype,
        device: str,
        seed: int,
        impl: Impl | None = None,
        zero_rows: bool = True,
    ) -> tuple[Weights, torch.Tensor]:
        """Weights and x for `impl`'s variant (LoRA when None). DoRA: the exact norm gradient
        for odd seeds (where the impl has it), a zero row for multiples of 3 (if zero_rows).
        QLoRA in a 4-bit format: `in` rounded up to whole blocks of 64 (a block may not
        straddle rows: see QuantizedBase.quantize)."""
        fmt = (
            "" if impl is None or impl.variant != "qlora" else self.quant_format(impl, device, seed)
        )
        if fmt in FOUR_BIT and self.in_f % 64:
            whole = dataclasses.replace(self, in_f=-(-self.in_f // 64) * 64)
            return whole.make(dtype, device, seed, impl, zero_rows)
        lora = LoRAWeights.random(self.in_f, self.out_f, self.rank, bias=self.bias, seed=seed,
                                  dtype=dtype, device=device)  # fmt: skip
        w: Weights = lora
        if impl is not None and impl.variant == "dora":
            exact = impl.exact_norm and seed % 2 == 1
            w = _dora(lora, seed, exact, zero_row=zero_rows and seed % 3 == 0)
        if fmt:
            w = QLoRAWeights.quantize(lora, fmt)
        gen = torch.Generator().manual_seed(seed + 1)
        width = 2 * self.in_f if self.strided else self.in_f
        x = torch.randn(*self.lead, width, generator=gen).to(device=device, dtype=dtype)
        return w, (x[..., ::2] if self.strided else x)

    @property
    def dims(self) -> str:
        return f"{self.lead}x{self.in_f}->{self.out_f} r={self.rank}"

    def quant_format(self, impl: Impl, device: str, seed: int) -> str:
        """The format a QLoRA impl is checked in on this shape: its formats that run on the
        device, in turn by seed."""
        formats = [f for f in FORMATS if f in impl.formats and not format_unavailable(f, device)]
        if not formats:
            raise ValueError(f"impl {impl.name!r} takes no format that runs on {device}")
        return formats[seed % len(formats)]


@dataclass(frozen=True)
class ConvShape:
    """One conformance case of a Conv2d LoRA impl: x (n, in, h, w) through a k×k convolution
    of the given stride, padding and dilation to `out` channels, at rank r."""

    label: str
    n: int
    in_c: int
    out_c: int
    hw: tuple[int, int]
    k: int
    rank: int
    bias: bool
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    layout: str = "contiguous"  # or "channels_last", or "strided" (every other column of x)

    @property
    def dims(self) -> str:
        return (f"{self.n}x{self.in_c}x{self.hw[0]}x{self.hw[1]} k={self.k} s={self.stride} "
                f"p={self.padding} d={self.dilation} ->{self.out_c} r={self.rank}")  # fmt: skip

    def make(self, dtype: torch.dtype, device: str, seed: int, impl: Impl | None = None,
             zero_rows: bool = True) -> tuple[ConvLoRAWeights | ConvDoRAWeights,
                                              torch.Tensor]:  # fmt: skip
        """Seeded weights and x in this shape's layout; for a Conv2d DoRA impl, DoRA on them as
        Shape.make does it (the exact norm gradient on odd seeds, a zero channel on multiples
        of 3)."""
        w = ConvLoRAWeights.random(self.in_c, self.out_c, self.rank, self.k, stride=self.stride,
                                   padding=self.padding, dilation=self.dilation, bias=self.bias,
                                   seed=seed, dtype=dtype, device=device)  # fmt: skip
        d = None
        if impl is not None and impl.variant == "conv_dora":
            exact = impl.exact_norm and seed % 2 == 1
            d = _conv_dora(w, seed, exact, zero_row=zero_rows and seed % 3 == 0)
        gen = torch.Generator().manual_seed(seed + 1)
        width = 2 * self.hw[1] if self.layout == "strided" else self.hw[1]
        x = torch.randn(self.n, self.in_c, self.hw[0], width, generator=gen)
        x = x.to(device=device, dtype=dtype)
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        return w if d is None else d, x[..., ::2] if self.layout == "strided" else x


CONV_SHAPES = (
    ConvShape("1x1, r=1", 1, 8, 4, (5, 5), 1, 1, True),
    ConvShape("3x3 same padding", 2, 6, 10, (9, 7), 3, 4, False, padding=1),
    ConvShape("3x3 stride 2", 1, 5, 8, (11, 10), 3, 2, True, stride=2, padding=1),
    ConvShape("3x3 dilation 2", 2, 4, 6, (12, 12), 3, 3, True, padding=2, dilation=2),
    ConvShape("5x5 no padding, r > in", 1, 3, 16, (9, 9), 5, 8, True),
    ConvShape("channels_last x", 2, 8, 8, (6, 6), 3, 4, True, padding=1, layout="channels_last"),
    ConvShape("non-contiguous x", 1, 6, 6, (7, 7), 3, 2, False, padding=1, layout="strided"),
    ConvShape("a batch of none", 0, 4, 4, (5, 5), 3, 2, True, padding=1),
)

Weights = LoRAWeights | DoRAWeights | QLoRAWeights | ConvLoRAWeights | ConvDoRAWeights
Shapes = tuple[Shape | ConvShape, ...]


def _dora(w: LoRAWeights, seed: int, exact: bool, zero_row: bool) -> DoRAWeights:
    """DoRA on w: m random around the row norms; the exact norm gradient when `exact`; with
    `zero_row`, a zero row of W + s·B A (see _zeroed)."""
    return _zeroed(DoRAWeights.with_random_m(w, seed, detach_norm=not exact), zero_row)


def _conv_dora(w: ConvLoRAWeights, seed: int, exact: bool, zero_row: bool) -> ConvDoRAWeights:
    """_dora's for a convolution: m random around the output channels' norms."""
    return _zeroed(ConvDoRAWeights.with_random_m(w, seed, detach_norm=not exact), zero_row)


AnyDoRA = TypeVar("AnyDoRA", DoRAWeights, ConvDoRAWeights)


def _zeroed(d: AnyDoRA, zero_row: bool) -> AnyDoRA:
    """With `zero_row`, d with W's and B's last rows zeroed, so that row (channel) of
    W + s·B A is zero and its output must be the bias alone; else d."""
    if not zero_row:
        return d
    W, B = d.W.clone(), d.B.clone()
    W[-1], B[-1] = 0, 0
    return dataclasses.replace(d, W=W, B=B)


EDGE_SHAPES = (
    Shape("one token, r=1", (1,), 16, 8, 1, True),
    Shape("r=min(in,out)", (5,), 24, 40, 24, False),
    Shape("2 leading dims, r=min(in,out)", (2, 3), 33, 17, 17, True),
    Shape("3 leading dims", (4, 1, 3), 8, 64, 2, False),
    Shape("T=0", (0,), 16, 12, 4, True),
    Shape("non-contiguous x", (6,), 32, 20, 4, True, strided=True),
)


def random_shapes(n: int, seed: int) -> tuple[Shape, ...]:
    """n seeded random shapes: in, out up to 96, 1 to 3 leading dims, any valid rank."""
    rnd = random.Random(seed)
    shapes = []
    for i in range(n):
        in_f, out_f = rnd.randint(1, 96), rnd.randint(1, 96)
        lead = tuple(rnd.randint(1, 9) for _ in range(rnd.randint(1, 3)))
        rank = rnd.randint(1, min(in_f, out_f))
        shapes.append(Shape(f"random {i}", lead, in_f, out_f, rank, rnd.random() < 0.5))
    return tuple(shapes)


SHAPES = EDGE_SHAPES + random_shapes(10, seed=0)


@dataclass(frozen=True)
class CheckResult:
    """One check of one impl on one device, dtype and mode, over several shapes."""

    device: str
    dtype: str
    mode: str
    check: str
    shapes: int
    worst: float  # largest relative error seen (0 for the inputs check)
    tol: float
    failure: str = ""  # the first failing shape and why; "" when it passed
    computed: int | None = None  # shapes whose error was measured (None: all of them)

    @property
    def passed(self) -> bool:
        return not self.failure


def _unchanged(before: list[torch.Tensor | None], after: list[torch.Tensor | None]) -> bool:
    pairs = zip(before, after, strict=True)
    return all(a is None or (b is not None and torch.equal(a, b.detach())) for a, b in pairs)


def _tensors(w: Weights, x: torch.Tensor) -> list[torch.Tensor | None]:
    return [x, *w._named().values()]


def _snapshot(w: Weights, x: torch.Tensor) -> list[torch.Tensor | None]:
    return [None if t is None else t.detach().clone() for t in _tensors(w, x)]


def _oracle_weights(impl: Impl, w: Weights) -> Weights:
    """The weights the oracle should see: `base` drops the adapter, so its oracle has s = 0."""
    return w if impl.lora_equivalent else dataclasses.replace(w, scale=0.0)


def _one_shape(impl: Impl, mode: str, w: Weights, x: torch.Tensor) -> tuple[dict, bool]:
    """({name: rel error}, inputs unchanged) of one call in `mode`."""
    oracle = _oracle_weights(impl, w)
    if mode == "infer":
        op = impl.build(w, "infer")
        before = _snapshot(w, x)
        errors = {"y": forward_error(op, oracle, x)}
        return errors, _unchanged(before, _tensors(w, x))
    w.requires_grad_()
    x = x.detach().requires_grad_()
    op = impl.build(w, "train")
    before = _snapshot(w, x)
    gen = torch.Generator().manual_seed(x.numel())
    grad_out = torch.randn(*w.output_shape(x), generator=gen).to(device=x.device, dtype=x.dtype)
    errors = {"y": forward_error(op, oracle, x)}
    grads = gradient_errors(op, oracle, x, grad_out)
    if not impl.lora_equivalent:  # base trains nothing; only dx is defined
        grads = {"x": grads["x"]}
    errors.update({f"d{k}": v for k, v in grads.items()})
    return errors, _unchanged(before, _tensors(w, x))


def run_checks(
    impl: Impl,
    device: str,
    dtype: torch.dtype,
    mode: str,
    shapes: Shapes = SHAPES,
    zero_rows: bool = True,
) -> list[CheckResult]:
    """The equivalence check and the inputs check of impl on one device, dtype and mode.
    zero_rows=False leaves DoRA's zero-row shapes out (for PEFT, which gives NaN there)."""
    tol = tolerance(dtype, device)
    check = "forward" if mode == "infer" else "forward and gradients"
    worst, failure, untouched, computed = 0.0, "", "", 0
    for i, shape in enumerate(shapes):
        seed = 100 + i
        w, x = shape.make(dtype, device, seed, impl=impl, zero_rows=zero_rows)
        try:
            errors, same = _one_shape(impl, mode, w, x)
        except Exception as err:  # a claimed dtype or shape that the impl cannot run
            failure = failure or f"{shape.label}: raised {type(err).__name__}: {err}"
            continue
        worst, computed = max(worst, *errors.values()), computed + 1
        bad = {k: f"{v:.3g}" for k, v in errors.items() if not v <= tol}
        if bad and not failure:
            dims = shape.dims
            if impl.variant in ("dora", "conv_dora") and zero_rows and seed % 3 == 0:
                dims += " (with a zero row of W + s·B A)"
            failure = f"{shape.label} {dims}: rel errors {bad} above {tol:g}"
        if not same and not untouched:
            untouched = f"{shape.label}: the op wrote into one of x, {', '.join(w._named())}"
    name = dtype_name(dtype)
    return [
        CheckResult(device, name, mode, check, len(shapes), worst, tol, failure, computed),
        CheckResult(device, name, mode, "inputs unchanged", len(shapes), 0.0, 0.0, untouched),
    ]


def _worst(r: CheckResult) -> str:
    """The worst error, over the shapes that ran: none, when every one raised."""
    if r.computed == 0:
        return "none ran"
    partly = "" if r.computed in (None, r.shapes) else f" ({r.computed} of {r.shapes} ran)"
    return f"{r.worst:.2e}{partly}"


@dataclass(frozen=True)
class Report:
    impl: str
    results: list[CheckResult]
    skipped: list[str]  # devices, dtypes or modes claimed but not checked here, with why

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def render(self) -> str:
        rows = [
            [r.device, r.dtype, r.mode, r.check, r.shapes,
             "" if r.check == "inputs unchanged" else _worst(r),
             "" if r.check == "inputs unchanged" else f"{r.tol:g}",
             "pass" if r.passed else f"FAIL: {r.failure}"]
            for r in self.results
        ]  # fmt: skip
        headers = ["device", "dtype", "mode", "check", "shapes", "worst rel error", "tol", "result"]
        text = f"### Conformance of {self.impl!r}\n\n"
        text += tabulate(rows, headers, tablefmt="github", disable_numparse=True) + "\n"
        text += "".join(f"\nnot checked: {s}" for s in self.skipped)
        failed = sum(not r.passed for r in self.results)
        if not self.results:
            verdict = "nothing could be verified on this machine"
        elif failed:
            verdict = f"{failed} of {len(self.results)} checks failed"
        else:
            verdict = f"all {len(self.results)} checks passed"
        return text + f"\n{self.impl}: {verdict}\n"


def verify(
    impl: Impl,
    devices: str = "all",
    shapes: Shapes | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run every check on every device ("cpu", "cuda" or "all"), dtype and mode impl claims.
    Compiling impls get the edge shapes only: each new shape costs a compile; Conv2d LoRA
    impls get CONV_SHAPES."""
    if shapes is None:
        conv = impl.variant in ("conv", "conv_dora")
        shapes = CONV_SHAPES if conv else EDGE_SHAPES if impl.compiles else SHAPES
    wanted = DEVICES if devices == "all" else (devices,)
    results, skipped = [], []
    for device in (d for d in DEVICES if d in wanted and d in impl.devices):
        if device == "cuda" and not torch.cuda.is_available():
            skipped.append("cuda: CUDA is not available on this machine")
            continue
        for dtype in (d for d in SUPPORTED_DTYPES if d in impl.dtypes):
            for mode in (m for m in MODES if m in impl.modes):
                reason = impl.unavailable_reason(device, dtype, mode)
                if reason:
                    skipped.append(f"{device} {dtype_name(dtype)} {mode}: {reason}")
                    continue
                if progress:
                    progress(f"{device} {dtype_name(dtype)} {mode}")
                results += run_checks(impl, device, dtype, mode, shapes)
    return Report(impl.name, results, skipped)
