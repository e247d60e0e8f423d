"""`lora-bench model`'s measurement: the request checked whole (user_request), the user's
model and PEFT's model of the adapter built on one set of weights, then each mode's variants
checked against PEFT's and timed in pairs with the frozen model (user_generation,
user_training), the adapter's load and merge timed, all as a Run of typed entries.

`measure(Request(...))` is the Python door to the same work as the command."""

from __future__ import annotations

import copy
import functools
import statistics
from typing import Any

from bench.families import models
from bench.families import user_adapter as ua
from bench.families import user_model as um
from bench.families import user_variants as uv
from bench.families.user_generation import Generation, MixedGeneration
from bench.families.user_phase import seconds_of
from bench.families.user_request import Measured, Prepared, Request, Say, prepare
from bench.families.user_training import Training
from bench.harness.cases import DTYPES
from bench.harness.session import command_infos, command_meta
from bench.schema.entries import UserModelInfo
from bench.schema.run import Run
from lora_kernels import delete_adapter, from_peft, load_adapter, merge

LIFECYCLE_REPEATS = 3
__all__ = ["Request", "measure", "run_prepared"]


def measure(request: Request, say: Say = lambda line: None) -> Run:
    """Measure the request (see the module's docstring); `say` hears progress lines."""
    p = prepare(request)
    from bench.harness.allocator import fix_malloc
    from bench.harness.session import configure_torch

    configure_torch(request.threads)
    allocator = fix_malloc()
    return run_prepared(p, allocator, say)


def run_prepared(p: Prepared, allocator: str, say: Say) -> Run:
    r, dtype = p.request, DTYPES[p.request.dtype_name]
    say(f"model: {p.source.describe()}")
    say(f"adapter: {p.adapter.describe()}")
    base = um.build(p.source, dtype, r.device, r.base_dtype)
    peft = ua.peft_model(base, p.adapter)
    out = Measured(notes=list(p.notes))
    trainable = sum(t.numel() for n, t in peft.named_parameters() if "lora_" in n)
    if "generate" in r.modes:
        Generation(p, base, peft, out, say, trainable).run()
        if r.adapters > 1:
            if p.adapter.use_dora:
                out.screened.append("many adapters: the adapter is DoRA; a mixed batch serves "
                                    "LoRA adapters")  # fmt: skip
            else:
                MixedGeneration(p, base, ua.peft_mixed(base, p.adapter, r.adapters), out, say,
                                trainable).run()  # fmt: skip
    if "train" in r.modes:
        Training(p, base, peft, out, say, trainable).run()
    if p.adapter.folder is not None:
        lifecycle(p, peft, out, say)
    adapted = sum(1 for n, _ in peft.named_modules() if n.endswith(".lora_A"))
    info = UserModelInfo(
        model=p.source.label, model_source=p.source.describe(), adapter=p.adapter.label,
        adapter_source=p.adapter.describe(), blocks=p.source.blocks,
        total_blocks=p.source.total_blocks, random_weights=p.source.weights is None,
        adapted_layers=adapted, seconds=r.seconds, estimate_bytes=p.fit.estimate,
        free_bytes=p.fit.free, screened=out.screened, notes=out.notes, load_s=out.load_s,
        merge_s=out.merge_s,
    )  # fmt: skip
    meta = command_meta(r.device, "model", r.threads, [r.dtype_name], "warm", allocator)
    return Run(meta, *command_infos(), [*out.entries, *out.profiles, info])


def lifecycle(p: Prepared, peft: Any, out: Measured, say: Say) -> None:
    """The adapter folder's load onto a model that holds LoRA layers (PEFT's load_adapter,
    ours load_adapter) and a merge into a copy of the weights (PEFT's merge_and_unload, ours
    merge), LIFECYCLE_REPEATS times each."""
    folder, device = p.adapter.folder, p.request.device
    assert folder is not None
    say("  timing the adapter's load and merge ...")
    ours = models.shared_copy(peft)
    from_peft(ours)
    peft_load: list[float] = []
    ours_load: list[float] = []
    why = ""
    if p.source.blocks < p.source.total_blocks:
        why = "with --blocks (the file holds the blocks left out, which PEFT drops and "
        why += "load_adapter refuses)"
    elif p.request.base_dtype:
        why = "on a quantized base (load_adapter takes LoRALinear layers)"
    if why:
        out.notes.append(f"adapter load: not timed {why}")
    for name in [] if why else [f"load{i}" for i in range(LIFECYCLE_REPEATS)]:
        peft_load.append(seconds_of(functools.partial(peft.load_adapter, folder, name), device))
        peft.delete_adapter(name)
        ours_load.append(seconds_of(functools.partial(load_adapter, ours, folder, name), device))
        delete_adapter(ours, name)
    peft_merge, ours_merge = [], []
    for _ in range(LIFECYCLE_REPEATS):
        copied = copy.deepcopy(peft)  # the copy is not the merge's: made before the clock
        peft_merge.append(seconds_of(functools.partial(uv.merge_and_unload, copied), device))
        mine = copy.deepcopy(ours)
        ours_merge.append(seconds_of(functools.partial(merge, mine), device))
    if peft_load:
        out.load_s.update({uv.PEFT: peft_load, "ours": ours_load})
    out.merge_s.update({uv.PEFT: peft_merge, "ours": ours_merge})
    say(f"  merge {statistics.median(peft_merge) * 1e3:.1f} ms (peft) / "
        f"{statistics.median(ours_merge) * 1e3:.1f} ms (ours)")  # fmt: skip
