"""LoRAConv2d, LoRA on a frozen nn.Conv2d in PEFT's layout, and inject_conv, which puts one on
each convolution of a model."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from lora_kernels.conv.weights import ConvLoRAWeights
from lora_kernels.layer import MergedCannotTrain
from lora_kernels.plugins import get_impl
from lora_kernels.registry import Op
from lora_kernels.weights import merge_stays_finite, scaling


def _fresh_adapter(
    base: nn.Module, rank: int, alpha: float, use_rslora: bool, impl: str
) -> tuple[Tensor, Tensor, float]:
    """(A kaiming-uniform, B zero, s) for `base`, after every check (the base left as it is):
    raises, saying what is allowed, for a module LoRA cannot adapt, a bad rank or alpha, or an
    impl that is no Conv2d impl."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    scale = scaling(alpha, rank, use_rslora)
    conv_impl(impl)
    if type(base) is not nn.Conv2d:
        raise TypeError(f"Conv2d LoRA needs a torch.nn.Conv2d, got {type(base).__name__} "
                        "(transposed, 1-D and 3-D convolutions are not taken)")  # fmt: skip
    w = base.weight
    A = torch.empty(rank, *w.shape[1:], device=w.device, dtype=w.dtype)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    B = torch.zeros(w.shape[0], rank, 1, 1, device=w.device, dtype=w.dtype)
    ConvLoRAWeights.from_conv2d(base, A, B, scale)  # groups, padding mode, padding
    return A, B, scale


def conv_impl(name: str) -> str:
    """`name` if it names a Conv2d impl of the registry; ValueError (KeyError: unknown)."""
    impl = get_impl(name)
    if impl.variant != "conv":
        raise ValueError(f"impl {name!r} computes {impl.variant}; a LoRAConv2d takes a Conv2d "
                         "impl (variant conv): see lora-bench impls")  # fmt: skip
    return name


class LoRAConv2d(nn.Module):
    """y = conv(x, W, b) + s · conv1×1(conv(x, A), B) for x (N, in, H, W), the base `conv`
    frozen. A (r, in, kh, kw) takes the base's kernel, stride, padding and dilation and starts
    kaiming-uniform; B (out, r, 1, 1) starts at zero, so the layer starts as the base, unless
    `adapter=(A, B)` gives those tensors (used as they are, no copy). `impl` names a Conv2d
    impl of the registry."""

    def __init__(
        self,
        base: nn.Conv2d,
        rank: int = 8,
        *,
        alpha: float = 8.0,
        use_rslora: bool = False,
        impl: str = "conv_two_step",
        adapter: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        A, B, scale = _fresh_adapter(base, rank, alpha, use_rslora, impl)
        if adapter is not None:
            A, B = adapter
            ConvLoRAWeights.from_conv2d(base, A, B, scale)  # shapes, dtypes and devices
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, scale
        self.lora_A = A if isinstance(A, nn.Parameter) else nn.Parameter(A)
        self.lora_B = B if isinstance(B, nn.Parameter) else nn.Parameter(B)
        self.impl = impl
        self.merged = False
        self._folded: tuple[Tensor, Tensor, float, tuple] | None = None  # A, B, s, key merged
        self._ops: dict[str, tuple[tuple, Op]] = {}

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, name: str) -> None:
        self._impl = conv_impl(name)
        self._ops = {}

    def weights(self) -> ConvLoRAWeights:
        """The live tensors as ConvLoRAWeights (no copies)."""
        return ConvLoRAWeights.from_conv2d(self.base, self.lora_A, self.lora_B, self.scale)

    def _op(self, mode: str) -> Op:
        """The impl's op, rebuilt when a tensor is replaced or changed in place (an optimizer
        step bumps its version), so a merged or stacked kernel never serves stale weights."""
        tensors = (self.base.weight, self.base.bias, self.lora_A, self.lora_B)
        key = tuple((id(t), -1 if t is None else t._version) for t in tensors)
        cached = self._ops.get(mode)
        if cached is None or cached[0] != key:
            cached = (key, get_impl(self._impl).build(self.weights(), mode))
            self._ops[mode] = cached
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            if self._folded is not None and self._folded[3] != self._adapter_key():
                self._refold()  # the adapter changed since merge(): W follows it
            y = self.base(x)
            A, B = self.lora_A, self.lora_B
            if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
                return MergedCannotTrain.apply(y, A, B, "LoRAConv2d")
            return y
        self.weights().check_input(x)
        needs_grad = self.lora_A.requires_grad or self.lora_B.requires_grad or x.requires_grad
        return self._op("train" if needs_grad and torch.is_grad_enabled() else "infer")(x)

    def _adapter_key(self) -> tuple:
        A, B = self.lora_A, self.lora_B
        return id(A), A._version, id(B), B._version, self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Add s·B A to W (fp32, cast back); W is untouched if that is not finite. A copy of
        A and B is kept (r·(in·kh·kw + out) values, not a kernel), so unmerge() takes out what
        was added even if they change meanwhile; a merged forward follows such a change."""
        if self.merged:
            raise ValueError("merge() called on a layer that is already merged; unmerge() first")
        w = self.weights()
        if merge_stays_finite(w.W, w.A, w.B, w.scale):  # W + s·B A added in place: the
            self.base.weight.add_(w.delta())  # merged kernel's values (fp32 sum, cast)
        else:
            self.base.weight.copy_(w.merged_weight())  # raises before writing
        self._folded = (w.A.detach().clone(), w.B.detach().clone(), w.scale, self._adapter_key())
        self.merged = True

    def _unfolded(self) -> Tensor:
        """W without what merge() added; ValueError if that is not finite."""
        if not self.merged or self._folded is None:
            raise ValueError("unmerge() called on a layer that is not merged; merge() first")
        A, B, scale, _ = self._folded
        return dataclasses.replace(self.weights(), A=A, B=B, scale=scale).merged_weight(sign=-1.0)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take out of W what merge() added, even if A or B changed since."""
        self.base.weight.copy_(self._unfolded())
        self._folded, self.merged = None, False

    @torch.no_grad()
    def _refold(self) -> None:
        """Replace the folded adapter with the current one, computed in full before W is
        written."""
        original = dataclasses.replace(self.weights(), W=self._unfolded())
        self.base.weight.copy_(original.merged_weight())
        w = self.weights()
        self._folded = (w.A.detach().clone(), w.B.detach().clone(), w.scale, self._adapter_key())

    def extra_repr(self) -> str:
        return (f"r={self.rank}, alpha={self.alpha}, scale={self.scale:.4g}, impl={self.impl}, "
                f"merged={self.merged}")  # fmt: skip


def inject_conv(
    model: nn.Module,
    rank: int = 8,
    *,
    alpha: float = 8.0,
    use_rslora: bool = False,
    impl: str = "conv_two_step",
    names: Iterable[str] | None = None,
) -> list[str]:
    """Replace each nn.Conv2d of `model` (or those `names` names) with a LoRAConv2d on it, and
    return their names. Planned first: a name that is no nn.Conv2d, or a convolution LoRA
    cannot adapt (grouped, depthwise, a padding mode other than zeros), refuses the whole call,
    naming each module and why, and nothing changes."""
    modules = dict(model.named_modules())
    wanted = (
        [n for n, m in modules.items() if type(m) is nn.Conv2d] if names is None else list(names)
    )
    refusals = []
    for name in wanted:
        module = modules.get(name)
        try:
            if module is None:
                raise ValueError("no such module")
            _fresh_adapter(module, rank, alpha, use_rslora, impl)
        except (TypeError, ValueError, KeyError) as err:
            refusals.append(f"{name}: {err}")
    if refusals:
        raise ValueError("cannot put LoRA on these convolutions (nothing changed): "
                         + "; ".join(refusals))  # fmt: skip
    for name in wanted:
        layer = LoRAConv2d(modules[name], rank, alpha=alpha, use_rslora=use_rslora, impl=impl)
        model.set_submodule(name, layer)
    return wanted
