"""Per-token adapter indices: random ones of each distribution, and the sort of a batch's
tokens by adapter that the segmented impls start from."""

from __future__ import annotations

import torch
from torch import Tensor

# identical: every token uses adapter 0. uniform: each token's adapter drawn uniformly.
# zipf: drawn with P(i) ∝ 1 / (i + 1) (Zipf, α = 1), as adapter popularity in serving.
# per_sequence: `seqs` contiguous sequences, sequence j using adapter j mod n (round robin).
DISTRIBUTIONS = ("identical", "uniform", "zipf", "per_sequence")


def random_index(
    distribution: str,
    tokens: int,
    adapters: int,
    *,
    seqs: int | None = None,
    base_share: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Tensor:
    """A seeded adapter index (tokens,) int64 with values in [0, adapters), and -1 (base layer
    only) for a share `base_share` of the tokens, or of the sequences with per_sequence.

    per_sequence splits the tokens into `seqs` contiguous sequences (default: one per adapter,
    at most one per token) of lengths differing by at most one.
    """
    if distribution not in DISTRIBUTIONS:
        known = ", ".join(DISTRIBUTIONS)
        raise ValueError(f"unknown distribution {distribution!r}; known: {known}")
    for name, value in (("tokens", tokens), ("adapters", adapters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not 0.0 <= base_share <= 1.0:
        raise ValueError(f"base_share must be in [0, 1], got {base_share}")
    gen = torch.Generator().manual_seed(seed)
    if distribution == "per_sequence":
        seqs = min(adapters, tokens) if seqs is None else seqs
        if isinstance(seqs, bool) or not isinstance(seqs, int) or not 1 <= seqs <= tokens:
            raise ValueError(f"seqs must be an int in [1, tokens = {tokens}], got {seqs!r}")
        seq_of = torch.arange(tokens) * seqs // tokens  # (tokens,) sequence of each token
        per_seq = torch.arange(seqs) % adapters
        per_seq[torch.rand(seqs, generator=gen) < base_share] = -1
        return per_seq[seq_of].to(device)
    if distribution == "identical":
        index = torch.zeros(tokens, dtype=torch.int64)
    elif distribution == "uniform":
        index = torch.randint(0, adapters, (tokens,), generator=gen)
    else:
        weights = 1.0 / torch.arange(1, adapters + 1, dtype=torch.float64)
        index = torch.multinomial(weights, tokens, replacement=True, generator=gen)
    index[torch.rand(tokens, generator=gen) < base_share] = -1
    return index.to(device)


def sort_by_adapter(index: Tensor, adapters: int) -> tuple[Tensor, Tensor, Tensor]:
    """The stable sort of the tokens by adapter, order (T,) with the -1 tokens first; each
    adapter's token count (n,); and its first position in the sort (n,). No host sync."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index + 1, minlength=adapters + 1)  # (n + 1,): the -1 tokens first
    starts = torch.cumsum(counts, 0) - counts
    return order, counts[1:], starts[1:]
