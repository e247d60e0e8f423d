"""Generation compiled whole, the way users speed it up: transformers' static KV cache and
torch.compile of the model's forward (on CUDA with CUDA graphs, mode "reduce-overhead"), so a
decode step runs one graph of fixed shapes. The compile happens at the first generation, which
is timed apart (compile_s) and never inside a timed round."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.harness.timing import synchronize
from lora_kernels.impls.compiled import no_silent_fallback


def compile_mode(device: str) -> str | None:
    """torch.compile's mode: CUDA graphs on CUDA, the default elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


@dataclass
class StaticDecoder:
    """Greedy decoding with a static KV cache through the compiled forward: the same
    interface as generation's Decoder (generate, phases, last_cache, model)."""

    model: nn.Module
    ids: Tensor  # (batch, prompt)
    new: int
    device: str
    forward: Any = None
    cache: Any = None
    last_cache: Any = None
    phases: list[tuple[float, float]] = field(default_factory=list)  # (prefill, decode) s

    def __post_init__(self) -> None:
        from transformers import StaticCache

        model: Any = self.model
        config = getattr(model, "config", None) or model.base_model.model.config
        prompt = self.ids.shape[1]
        self.cache = StaticCache(config=config, max_cache_len=prompt + self.new)
        no_silent_fallback()
        self.forward = torch.compile(self.model.forward, mode=compile_mode(self.device))
        self.last_cache = self.cache

    def _step(self, ids: Tensor, positions: Tensor) -> Tensor:
        out = self.forward(input_ids=ids, past_key_values=self.cache, use_cache=True,
                           cache_position=positions, logits_to_keep=1)  # fmt: skip
        return out.logits[:, -1].argmax(-1)

    @torch.no_grad()
    def generate(self) -> Tensor:
        """All new tokens (batch, new); each phase's seconds are appended to `phases`. The
        cache is cleared before the clock starts."""
        prompt = self.ids.shape[1]
        self.cache.reset()
        synchronize(self.device)
        start = time.perf_counter()
        token = self._step(self.ids, torch.arange(prompt, device=self.ids.device))
        synchronize(self.device)
        middle = time.perf_counter()
        out = [token]
        for i in range(self.new - 1):
            position = torch.tensor([prompt + i], device=self.ids.device)
            token = self._step(token[:, None], position)
            out.append(token)
        synchronize(self.device)
        self.phases.append((middle - start, time.perf_counter() - middle))
        return torch.stack(out, 1)


def _graphs() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, by dynamo's counters."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def compiled_decoder(model: nn.Module, ids: Tensor, new: int, device: str
                     ) -> tuple[Any, float, str]:  # fmt: skip
    """The model's compiled decoder, its compile (the first generation's seconds: both
    graphs, prefill and decode, compile there) and what dynamo made of it ("4 graphs, 1 graph
    break"). ValueError saying why where the architecture does not take the static cache or
    does not compile."""
    try:
        before = _graphs()
        d = StaticDecoder(model, ids, new, device)
        start = time.perf_counter()
        d.generate()
        compile_s = time.perf_counter() - start
        graphs, breaks = (after - first for after, first in zip(_graphs(), before, strict=True))
        d.generate()  # the graphs are warm: no recompile in the rounds
    except Exception as err:  # any failure of transformers' cache or dynamo
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(f"does not compile whole with transformers' static cache "
                         f"({type(err).__name__}: {first})") from None  # fmt: skip
    if not graphs:
        return d, compile_s, "no new graph: dynamo reused one compiled before (same code, shapes)"
    return d, compile_s, f"{graphs} graphs, {breaks} graph breaks"
