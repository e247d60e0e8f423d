"""Multi-adapter forwards in eager PyTorch. Each adds the adapters' terms into the base GEMM's
output y = x Wᵀ + b; x (T, in), index (T,) int64 in [-1, n), y (T, out)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lora_kernels.multi.index import sort_by_adapter
from lora_kernels.multi.registry import MULTI_IMPLS, MultiImpl, MultiOp, multi_rows
from lora_kernels.multi.weights import MultiLoRAWeights
from lora_kernels.registry import register

CHUNK = 16  # rows of one adapter per chunk of chunked_bmm
GROUP_BYTES = 2**21  # x rows gathered per group of chunks: about an L2's worth


def _views(w: MultiLoRAWeights) -> list[tuple[Tensor, Tensor, float]]:
    """Each adapter at its own rank: A_i (r_i, in), B_i (out, r_i) views, and s_i."""
    return [(a.A.detach(), a.B.detach(), a.scale) for a in map(w.adapter, range(w.adapters))]


def build_loop(w: MultiLoRAWeights) -> MultiOp:
    adapters = _views(w)

    def rows(x: Tensor, index: Tensor) -> Tensor:
        y = F.linear(x, w.W, w.b)
        for i in torch.unique(index).tolist():  # PEFT's way: a boolean mask per adapter
            if i < 0:
                continue
            A, B, s = adapters[i]
            mask = index == i
            y[mask] += F.linear(F.linear(x[mask], A), B) * s
        return y

    return multi_rows(w, rows)


def build_gather_bmm(w: MultiLoRAWeights) -> MultiOp:
    A, B = w.padded()
    B = B * w.scale_tensor()[:, None, None]  # s_i folded into B_i: (n, out, r_max)

    def rows(x: Tensor, index: Tensor) -> Tensor:
        y = F.linear(x, w.W, w.b)
        ids = index.clamp(min=0)
        xa = torch.bmm(A[ids], x.unsqueeze(-1))  # (T, r_max, 1): per-token A gathered
        xa.mul_((index >= 0).to(x.dtype)[:, None, None])  # -1: the base layer alone
        return y.add_(torch.bmm(B[ids], xa).squeeze(-1))  # per-token B gathered: (T, out, r_max)

    return multi_rows(w, rows)


def _segments(index: Tensor, adapters: int) -> tuple[Tensor, list[list[int]]]:
    """The stable sort of the tokens by adapter, and on the host, per adapter: its token
    count, its first position in the sort, and its first and last token."""
    order, counts, starts = sort_by_adapter(index, adapters)
    last = order.numel() - 1
    first_tok = order[starts.clamp(max=last)]
    last_tok = order[(starts + counts - 1).clamp(min=0, max=last)]
    return order, torch.stack([counts, starts, first_tok, last_tok], 1).tolist()


def build_segments(w: MultiLoRAWeights) -> MultiOp:
    adapters = _views(w)

    def rows(x: Tensor, index: Tensor) -> Tensor:
        y = F.linear(x, w.W, w.b)
        order, segments = _segments(index, w.adapters)
        for (A, B, s), (count, start, first, last) in zip(adapters, segments, strict=True):
            if count == 0:
                continue
            if last - first + 1 == count:  # one run of tokens: views of x and y, no copy
                y[first : last + 1].addmm_(F.linear(x[first : last + 1], A), B.t(), alpha=s)
            else:
                tokens = order[start : start + count]
                xa = F.linear(x.index_select(0, tokens), A)  # (count, r_i)
                y.index_add_(0, tokens, torch.mm(xa, B.t()), alpha=s)
        return y

    return multi_rows(w, rows)


def build_sorted_gemm(w: MultiLoRAWeights) -> MultiOp:
    adapters = _views(w)

    def rows(x: Tensor, index: Tensor) -> Tensor:
        order, counts, starts = sort_by_adapter(index, w.adapters)
        xs = x.index_select(0, order)  # x in adapter order
        ys = F.linear(xs, w.W, w.b)  # the base GEMM, in adapter order
        segments = torch.stack([counts, starts], 1).tolist()
        for (A, B, s), (count, start) in zip(adapters, segments, strict=True):
            if count:
                seg = slice(start, start + count)
                ys[seg].addmm_(F.linear(xs[seg], A), B.t(), alpha=s)  # views: no copy
        return torch.empty_like(ys).index_copy_(0, order, ys)  # back in token order

    return multi_rows(w, rows)


def _chunks(index: Tensor, adapters: int, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """The sorted tokens tiled into chunks of `chunk` rows of one adapter each: the chunks'
    adapters (c,), their tokens (c, chunk), and which rows are real (c, chunk); a short
    chunk's padding rows repeat its first token."""
    order, counts, starts = sort_by_adapter(index, adapters)
    per = (counts + chunk - 1) // chunk  # chunks of each adapter
    ids = torch.repeat_interleave(torch.arange(adapters, device=index.device), per)  # (c,)
    before = torch.cumsum(per, 0) - per  # chunks of the adapters before each
    nth = torch.arange(ids.numel(), device=index.device) - before[ids]  # chunk within adapter
    first = starts[ids] + nth * chunk  # (c,) position in the sort
    pos = first[:, None] + torch.arange(chunk, device=index.device)  # (c, chunk)
    real = pos < (starts + counts)[ids][:, None]
    return ids, order[torch.where(real, pos, first[:, None])], real


def build_chunked_bmm(w: MultiLoRAWeights) -> MultiOp:
    A, B = w.padded()
    At = A.transpose(1, 2).contiguous()  # (n, in, r_max)
    Bt = B.transpose(1, 2).contiguous()  # (n, r_max, out)
    scales = w.scale_tensor()
    group = max(1, GROUP_BYTES // (CHUNK * w.in_features * w.dtype.itemsize))

    def rows(x: Tensor, index: Tensor) -> Tensor:
        y = F.linear(x, w.W, w.b)
        ids, tokens, real = _chunks(index, w.adapters, CHUNK)
        keep = real.to(x.dtype).mul_(scales[ids][:, None]).unsqueeze(-1)  # (c, chunk, 1)
        for g in range(0, ids.numel(), group):
            i, t = ids[g : g + group], tokens[g : g + group].reshape(-1)
            xg = x.index_select(0, t).view(len(i), CHUNK, -1)  # (g, chunk, in)
            xa = torch.bmm(xg, At[i]).mul_(keep[g : g + group])  # (g, chunk, r_max)
            y.index_add_(0, t, torch.bmm(xa, Bt[i]).view(t.numel(), -1))
        return y

    return multi_rows(w, rows)


def build_masked_dense(w: MultiLoRAWeights) -> MultiOp:
    A, B = w.padded()
    n, r = w.adapters, w.r_max
    A_all = A.reshape(n * r, w.in_features)  # (n·r_max, in)
    Bt_all = B.permute(0, 2, 1).reshape(n * r, w.out_features)  # (n·r_max, out)
    scales = w.scale_tensor()

    def rows(x: Tensor, index: Tensor) -> Tensor:
        y = F.linear(x, w.W, w.b)
        xa = F.linear(x, A_all).view(-1, n, r)  # every adapter's shrink: (T, n, r_max)
        own = F.one_hot(index.clamp(min=0), n).to(x.dtype)  # (T, n)
        own.mul_(scales).mul_((index >= 0).to(x.dtype)[:, None])
        xa.mul_(own[:, :, None])  # keep each token's own adapter, scaled
        return y.addmm_(xa.view(-1, n * r), Bt_all)

    return multi_rows(w, rows)


for _impl in (
    MultiImpl("loop", "PEFT's way: per adapter present, a boolean mask, gather, two GEMMs and "
              "a masked add", build_loop),
    MultiImpl("gather_bmm", "Punica's baseline: gathers each token's A and B (T·r·(in+out) "
              "elements), two bmm", build_gather_bmm),
    MultiImpl("segments", "stable sort by adapter; per adapter, one run of tokens in place on "
              "views, or gather, shrink, expand and index_add_ into y", build_segments),
    MultiImpl("sorted_gemm", "x sorted by adapter, the base GEMM on it, each adapter's segment "
              "added on contiguous views, y put back in token order", build_sorted_gemm),
    MultiImpl("chunked_bmm", "sorted tokens tiled into 16-row chunks of one adapter; per group "
              "of chunks one gather, two bmm and one index_add_", build_chunked_bmm),
    MultiImpl("masked_dense", "shrink against every adapter in one GEMM, keep each token's own, "
              "expand in one GEMM: cost grows with the adapters", build_masked_dense),
):  # fmt: skip
    register(_impl, MULTI_IMPLS)
