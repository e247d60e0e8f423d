"""The toy example done right: fit a frozen 64->10 linear layer's rank-4 adapter.

python -m lora_kernels.demo [--rank 4] [--epochs 10] [--impl two_step]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn, optim

from lora_kernels.layer import LoRALinear
from lora_kernels.params import count_parameters
from lora_kernels.registry import IMPLS

IN, OUT, SAMPLES, BATCH = 64, 10, 1000, 50


def run(rank: int = 4, epochs: int = 10, impl: str = "two_step", seed: int = 0) -> list[float]:
    """Train the adapter towards a target that differs from the base by a rank-`rank` update.

    Returns the mean training loss of each epoch.
    """
    torch.manual_seed(seed)
    layer = LoRALinear(IN, OUT, rank, alpha=2.0 * rank, impl=impl)
    shift = torch.randn(OUT, rank) @ torch.randn(rank, IN) / IN**0.5  # (out, in), rank r
    x = torch.randn(SAMPLES, IN)  # (N, in)
    with torch.no_grad():
        target = layer.base(x) + x @ shift.T  # (N, out)
    counts = count_parameters(layer)
    print(f"{layer}\ntrainable {counts.trainable} of total {counts.total} parameters")
    opt = optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for epoch in range(epochs):
        total = 0.0
        for i in range(0, SAMPLES, BATCH):
            loss = nn.functional.mse_loss(layer(x[i : i + BATCH]), target[i : i + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / (SAMPLES // BATCH))
        print(f"epoch {epoch + 1:2d}  loss {losses[-1]:.5f}")
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    trainable = [
        n
        for n, i in IMPLS.items()
        if i.lora_equivalent and i.variant == "lora" and "train" in i.modes
    ]
    parser.add_argument("--impl", default="two_step", choices=trainable)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    try:
        run(args.rank, args.epochs, args.impl)
    except (TypeError, ValueError) as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
