"""Tensor-parallel LoRA on torch.distributed: a layer's base split column- or row-parallel
over a process group, its adapter replicated, sharded or fully sharded (TPSplit); each rank's
part as a TPLoRALinear, or a TPMultiLoRALinear for a multi-adapter batch; the collectives
counted (Traffic); and run_ranks to start a group of processes on one machine."""

from lora_kernels.tp.comm import Traffic
from lora_kernels.tp.launch import RankError, run_ranks
from lora_kernels.tp.layer import TPLoRALinear
from lora_kernels.tp.multi import TPMultiLoRALinear
from lora_kernels.tp.split import ADAPTERS, KINDS, Shard, Slices, TPSplit, expected_traffic

__all__ = [
    "ADAPTERS",
    "KINDS",
    "RankError",
    "Shard",
    "Slices",
    "TPLoRALinear",
    "TPMultiLoRALinear",
    "TPSplit",
    "Traffic",
    "expected_traffic",
    "run_ranks",
]
