"""A frozen base weight W (out, in) held quantized: NF4 and FP4 (bitsandbytes' blockwise 4-bit,
two codes a byte and one fp32 absmax a block), int8 (one fp32 scale a row, LLM.int8's weight
format) and fp8 (e4m3, one fp32 scale a row; CUDA only). `dequantize()` gives W back in the
compute dtype; the difference to the float W it came from is the format's error."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lora_kernels.weights import all_finite, check_dtype, check_tensor

FORMATS = ("nf4", "fp4", "int8", "fp8")
FOUR_BIT = ("nf4", "fp4")
BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # bitsandbytes' 4-bit blocks
INT8_MAX = 127.0
FP8_MAX = 448.0  # the largest float8_e4m3fn
QUANT_EXTRA = "pip install 'lora-bench[quant]'"


def bnb_missing() -> str | None:
    """Why bitsandbytes cannot be used here, or None."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"the 4-bit formats need bitsandbytes, which is not installed: {QUANT_EXTRA}"
    return None


def format_unavailable(fmt: str, device: str | torch.device) -> str | None:
    """Why `fmt` cannot run on `device` here, or None."""
    if fmt not in FORMATS:
        return f"format must be one of {FORMATS}, got {fmt!r}"
    kind = torch.device(device).type
    if fmt in FOUR_BIT:
        return bnb_missing()
    if fmt == "fp8":
        if kind != "cuda":
            return (
                f"fp8 runs on CUDA only (no fp8 path on {kind!r}); on the CPU use nf4, fp4 or int8"
            )
        if not hasattr(torch, "float8_e4m3fn"):
            return "fp8 needs a torch with float8_e4m3fn"
    return None


def check_blocksize(blocksize: object) -> None:
    """TypeError unless `blocksize` is a whole number, ValueError unless it is one of
    bitsandbytes' 4-bit block sizes: refused up front, for every format."""
    if not isinstance(blocksize, int) or isinstance(blocksize, bool):
        raise TypeError(f"blocksize must be an int, one of {BLOCKSIZES}; got {blocksize!r}")
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {blocksize!r}")


@dataclass(frozen=True)
class QuantizedBase:
    """W (out, in) in format `fmt`, dequantized to `dtype` for compute.

    4-bit: `data` is bitsandbytes' packed uint8 (out·in / 2, 1) and `state` its QuantState
    (absmax per block of `blocksize`, the code table). int8 and fp8: `data` is (out, in) and
    `scale` (out,) fp32, W ≈ data · scale[:, None].
    """

    fmt: str
    data: Tensor
    shape: tuple[int, int]
    dtype: torch.dtype
    blocksize: int = 0  # 4-bit only
    state: Any = None  # 4-bit: bitsandbytes.functional.QuantState
    scale: Tensor | None = None  # int8, fp8

    @classmethod
    def quantize(cls, W: Tensor, fmt: str, *, blocksize: int = 64,
                 dtype: torch.dtype | None = None) -> QuantizedBase:  # fmt: skip
        """W (out, in) quantized to `fmt` on W's device; `dtype` (default W's) is the compute
        dtype that dequantize() gives. `blocksize` (4-bit formats' block, one of BLOCKSIZES)
        is checked whatever the format. W is read, never written."""
        check_blocksize(blocksize)
        check_tensor("W", W)
        if W.dim() != 2 or W.numel() == 0:
            raise ValueError(f"W must be a non-empty 2-D (out, in) tensor, got {tuple(W.shape)}")
        reason = format_unavailable(fmt, W.device)
        if reason:
            raise ValueError(reason)
        if not all_finite(W):
            raise ValueError(
                "W holds non-finite values (NaN or inf); only finite W can be quantized"
            )
        dtype = W.dtype if dtype is None else dtype
        check_dtype(dtype)
        shape = (W.shape[0], W.shape[1])
        with torch.no_grad():
            if fmt in FOUR_BIT:
                if shape[1] % blocksize:
                    raise ValueError(
                        f"{fmt}: in_features must be a multiple of the block size {blocksize}, "
                        f"got W {shape}; a block straddling two rows is decoded wrongly by "
                        "bitsandbytes' CPU kernel (0.50) and by row-tiled kernels"
                    )
                import bitsandbytes.functional as bnbf

                data, state = bnbf.quantize_4bit(
                    W.float().contiguous(), blocksize=blocksize, quant_type=fmt
                )
                state.dtype = dtype
                return cls(fmt, data, shape, dtype, blocksize, state)
            absmax = W.float().abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
            top = INT8_MAX if fmt == "int8" else FP8_MAX
            scale = absmax / top
            q = W.float() / scale[:, None]
            data = q.round_().to(torch.int8) if fmt == "int8" else q.to(torch.float8_e4m3fn)
            return cls(fmt, data, shape, dtype, scale=scale)

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.data.device

    @classmethod
    def from_bnb(cls, layer: Any, dtype: torch.dtype) -> QuantizedBase:
        """The codes and scales of bitsandbytes' Linear4bit or Linear8bitLt (no copy of the
        4-bit ones), dequantized to `dtype`."""
        weight = layer.weight
        shape = (layer.out_features, layer.in_features)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            if shape[1] % state.blocksize:
                raise ValueError(
                    f"{type(layer).__name__} {shape}: in_features is not a multiple of its "
                    f"block size {state.blocksize}; such blocks straddle rows, which "
                    "bitsandbytes' CPU kernel (0.50) decodes wrongly"
                )
            return cls(state.quant_type, weight.data, shape, dtype, state.blocksize, state)
        SCB = weight.SCB if getattr(weight, "SCB", None) is not None else layer.state.SCB
        if weight.dtype != torch.int8 or SCB is None:
            raise ValueError(f"{type(layer).__name__} holds no quantized weight yet (move it to "
                             "its device first: bitsandbytes quantizes there)")  # fmt: skip
        return cls("int8", weight.data, shape, dtype, scale=SCB.float() / INT8_MAX)

    def computing_in(self, dtype: torch.dtype) -> QuantizedBase:
        """The same codes and scales (shared, not copied), dequantized to `dtype`."""
        check_dtype(dtype)
        if self.fmt not in FOUR_BIT:
            return dataclasses.replace(self, dtype=dtype)
        state = copy.copy(self.state)  # bitsandbytes decodes to its state's dtype
        state.dtype = dtype
        return dataclasses.replace(self, dtype=dtype, state=state)

    def dequantize(self) -> Tensor:
        """W (out, in) in the compute dtype, in fresh memory."""
        if self.fmt in FOUR_BIT:
            import bitsandbytes.functional as bnbf

            W = bnbf.dequantize_4bit(self.data, self.state)
            return W if W.dtype == self.dtype else W.to(self.dtype)
        assert self.scale is not None
        return self.data.to(self.dtype).mul_(self.scale.to(self.dtype)[:, None])

    def tensors(self) -> dict[str, Tensor]:
        """The tensors that hold W, by name: what its bytes are."""
        if self.fmt in FOUR_BIT:
            return {"data": self.data, "absmax": self.state.absmax, "code": self.state.code}
        assert self.scale is not None
        return {"data": self.data, "scale": self.scale}

    def nbytes(self) -> int:
        """Bytes held for W: the codes and their scales."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def same_bytes(self, other: QuantizedBase) -> bool:
        """Whether `other` holds exactly these codes and scales."""
        mine, theirs = self.tensors(), other.tensors()
        return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
