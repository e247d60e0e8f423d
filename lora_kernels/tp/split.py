"""How a LoRA layer is split over `world` tensor-parallel ranks: the base column-parallel (W
split along out; x whole on every rank, each rank gives its slice of y) or row-parallel (W
split along in; each rank holds its slice of x, the partial outputs are all-reduced), and the
adapter replicated, sharded or fully sharded. Pure arithmetic and slicing: no process group.

Per rank i, with slices out_i, in_i and r_i of the split dimensions:

| base   | adapter       | A held     | B held   | forward comm    | backward comm     |
|--------|---------------|------------|----------|-----------------|-------------------|
| column | replicated    | A          | B        | -               | grads of A and B  |
| column | sharded       | A          | B[out_i] | -               | grad of A         |
| column | fully_sharded | A[r_i]     | B[out_i] | all-gather xAᵀ  | all-reduce of dxa |
| row    | replicated    | A          | B        | all-reduce xAᵀ  | grad of A         |
| row    | sharded       | A[:, in_i] | B        | - (tp x expand) | grad of B         |
| row    | fully_sharded | A[:, in_i] | B[out_i] | all-reduce xAᵀ  | all-reduce of dxa |

"grad of A" is the all-reduce that keeps a replicated tensor's gradient whole on every rank.
The base's own collective (column: dx in backward; row: y in forward) comes on top of these.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import Tensor

from lora_kernels.weights import LoRAWeights

KINDS = ("column", "row")
ADAPTERS = ("replicated", "sharded", "fully_sharded")
# The adapter tensors each split keeps whole on every rank (their gradients are all-reduced).
REPLICATED = {
    ("column", "replicated"): ("A", "B"),
    ("column", "sharded"): ("A",),
    ("column", "fully_sharded"): (),
    ("row", "replicated"): ("A",),
    ("row", "sharded"): ("B",),
    ("row", "fully_sharded"): (),
}


@dataclass(frozen=True)
class Shard:
    """Rank `index`'s tensors (views of the whole layer's): W_i, b_i (column: b's slice; row:
    the whole b, added once after the all-reduce), A_i, B_i. `inp`: the columns of x the rank
    reads; `out`: the columns of y its adapter's expand writes (column: also the slice of y it
    gives back)."""

    index: int
    W: Tensor
    b: Tensor | None
    A: Tensor
    B: Tensor
    out: slice
    inp: slice


@dataclass(frozen=True)
class Slices:
    """What a rank holds: `out`, the columns of y its adapter's expand writes (column: also
    W's rows and the slice of y it gives back); `inp`, the columns of x it reads (row: W's
    columns); A[a_rows, a_cols]; B[b_rows]."""

    out: slice
    inp: slice
    a_rows: slice
    a_cols: slice
    b_rows: slice


@dataclass(frozen=True)
class TPSplit:
    """A tensor-parallel split: `kind` "column" or "row", `adapter` "replicated", "sharded" or
    "fully_sharded", over `world` ranks."""

    kind: str
    adapter: str
    world: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if isinstance(self.world, bool) or not isinstance(self.world, int) or self.world < 1:
            raise ValueError(f"world must be an int >= 1, got {self.world!r}")

    def __str__(self) -> str:
        return f"{self.kind}/{self.adapter} tp={self.world}"

    @property
    def replicated(self) -> tuple[str, ...]:
        """The adapter tensors kept whole on every rank: "A", "B", both or none."""
        return REPLICATED[(self.kind, self.adapter)]

    def split_dims(self, in_features: int, out_features: int, rank: int) -> dict[str, int]:
        """The dimensions this split divides among the ranks, by name."""
        dims = {"out_features": out_features} if self.kind == "column" else {
            "in_features": in_features}  # fmt: skip
        if self.adapter == "fully_sharded":
            dims.update({"rank": rank} if self.kind == "column" else {"out_features": out_features})
        return dims

    def check(self, in_features: int, out_features: int, rank: int) -> None:
        """Raise unless `world` divides every dimension the split divides."""
        for name, n in self.split_dims(in_features, out_features, rank).items():
            if n % self.world:
                dims = ", ".join(self.split_dims(in_features, out_features, rank))
                raise ValueError(
                    f"{self}: the world size {self.world} does not divide {name} ({n}); a "
                    f"{self.kind}-parallel layer with a {self.adapter} adapter splits {dims}"
                )

    def slices(self, in_features: int, out_features: int, rank: int, index: int) -> Slices:
        """Which rows and columns of W, A and B (and of x and y) rank `index` holds."""
        self.check(in_features, out_features, rank)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.world:
            raise ValueError(f"index must be an int in [0, {self.world}), got {index!r}")

        def part(n: int) -> slice:
            k = n // self.world
            return slice(index * k, (index + 1) * k)

        every = slice(None)
        fully = self.adapter == "fully_sharded"
        if self.kind == "column":
            out = part(out_features)
            return Slices(out, every, part(rank) if fully else every, every,
                          every if self.adapter == "replicated" else out)  # fmt: skip
        inp = part(in_features)
        out = part(out_features) if fully else every
        return Slices(out, inp, every, every if self.adapter == "replicated" else inp, out)

    def shard(self, w: LoRAWeights, index: int) -> Shard:
        """Rank `index`'s tensors of the whole layer `w` (views: no copies)."""
        c = self.slices(w.in_features, w.out_features, w.rank, index)
        W = w.W[c.out] if self.kind == "column" else w.W[:, c.inp]
        b = w.b if w.b is None or self.kind == "row" else w.b[c.out]
        return Shard(index, W, b, w.A[c.a_rows, c.a_cols], w.B[c.b_rows], c.out, c.inp)


def expected_traffic(
    split: TPSplit,
    tokens: int,
    in_features: int,
    out_features: int,
    rank: int,
    itemsize: int,
    *,
    train: bool = True,
    adapter: bool = True,
) -> dict[str, int]:
    """Bytes each kind of collective puts in on one rank over a forward, and with `train` a
    backward (x requiring its gradient), the base's own included, as TPLoRALinear's Traffic
    records them: "forward all_reduce", "forward all_gather", "backward all_reduce",
    "backward grad all_reduce" (the replicated tensors' gradients). adapter=False: the frozen
    layer of the same split alone."""
    split.check(in_features, out_features, rank)
    T, n, m, r, tp = tokens, in_features, out_features, rank, split.world
    out: Counter[str] = Counter()
    if split.kind == "column":
        out["backward all_reduce"] += T * n  # dx, the base's
    else:
        out["forward all_reduce"] += T * m  # y, the base's
    if adapter:
        if split.kind == "column" and split.adapter == "fully_sharded":
            out["forward all_gather"] += T * r // tp
            out["backward all_reduce"] += T * r
        if split.kind == "row" and split.adapter in ("replicated", "fully_sharded"):
            out["forward all_reduce"] += T * r
        if split.kind == "row" and split.adapter == "fully_sharded":
            out["backward all_reduce"] += T * r
        grads = {"A": r * n, "B": m * r}
        for name in split.replicated:
            out["backward grad all_reduce"] += grads[name]
    return {k: v * itemsize for k, v in out.items() if v and (train or k.startswith("forward"))}
