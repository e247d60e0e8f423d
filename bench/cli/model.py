"""`lora-bench model MODEL`: what LoRA costs on your own model and adapter, and which variant
to run (loads torch, transformers and PEFT). Writes the run's entries as a results JSON that
`report`, `compare`, `check` and `export` read, and its tables with the verdict as markdown;
prints the cost and the verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.plugin.options import DTYPE_NAMES, positive_int, positive_number
from bench.schema.io import ResultError, check_writable


def output_stem(args: argparse.Namespace, label: str, device: str) -> Path:
    folder = Path(args.output) if args.output else Path("results") / "model"
    return folder / f"{label}-{device}"


def cmd_model(args: argparse.Namespace) -> int:
    from bench.families import user_model as um
    from bench.families import user_request as uq
    from bench.families import user_runner as ur
    from bench.families import user_unet
    from bench.harness.allocator import fix_malloc
    from bench.harness.session import configure_torch, physical_cores
    from bench.report.base import render
    from bench.report.document import write_results
    from bench.report.user_model import VERDICT_TABLES, user_model_tables

    folder = Path(args.output) if args.output else Path("results") / "model"
    check_writable(folder)
    um.quiet_libraries()
    request = uq.Request(
        model=args.model, adapter=args.adapter, rank=args.rank, alpha=args.alpha,
        targets=args.targets, dora=args.dora, rslora=args.rslora, mode=args.mode,
        batch=args.batch, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
        tokens=args.tokens, dtype=args.dtype, device=args.device, blocks=args.blocks,
        adapters=args.adapters, compile=args.compile, base_dtype=args.base_dtype,
        seconds=args.seconds, threads=args.threads or physical_cores(),
    )  # fmt: skip

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        source = user_unet.unet_source(args.model)
        if source is not None:  # a diffusers UNet folder, or a UNet preset
            user_unet.check_request(request)
            configure_torch(request.threads)
            run = user_unet.measure(request, source, fix_malloc(), say)
            label = source.label
        else:
            prepared = uq.prepare(request)
            configure_torch(request.threads)
            run = ur.run_prepared(prepared, fix_malloc(), say)
            label = prepared.source.label
    except um.UserInputError as err:
        raise ResultError(str(err)) from None
    stem = output_stem(args, label, run.meta.device)
    write_results(stem.with_suffix(".json"), run)
    tables = [t for t in user_model_tables(run) if t.title in VERDICT_TABLES]
    sys.stdout.write("\n" + render(tables, "plain") + "\n")
    print(f"wrote {stem}.json and .md (every variant's figures, what was not timed and why)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="what LoRA costs on your own model and adapter, and which "
                       "variant to run")  # fmt: skip
    p.add_argument(
        "model",
        help="a model folder (config.json, with *.safetensors weights when "
        "present), a config.json, a preset, or a Hub id (needs the network); or a diffusers "
        "UNet2DConditionModel folder (a pipeline folder: its unet/) or a UNet preset (sd15, "
        "sd15-cpu), extra diffusion",
    )
    a = p.add_argument_group("the adapter: a PEFT folder, or one described")
    a.add_argument("--adapter", metavar="DIR", help="a PEFT adapter folder (adapter_config.json "
                   "and adapter_model.safetensors); for a UNet a diffusers LoRA file or its "
                   "folder (diffusers' or kohya's layout)")  # fmt: skip
    a.add_argument("--rank", type=positive_int, help="rank r (default 16)")
    a.add_argument("--alpha", type=positive_number, help="alpha (default 2 x rank)")
    a.add_argument("--targets", help="module names, comma-separated, or all-linear (default); "
                   "for a UNet attn (default), attn+conv, or module names")  # fmt: skip
    a.add_argument("--dora", action="store_true", help="DoRA (a magnitude per row)")
    a.add_argument("--rslora", action="store_true", help="scale alpha / sqrt(r)")
    m = p.add_argument_group("what to measure")
    m.add_argument("--mode", choices=["generate", "train", "all"], default="all",
                   help="generation (a UNet: a denoising call), a training step, or both "
                   "(default)")  # fmt: skip
    m.add_argument("--batch", type=positive_int, default=1, help="sequences (default 1)")
    m.add_argument("--prompt-tokens", type=positive_int, default=128,
                   help="generation's prompt (default 128)")  # fmt: skip
    m.add_argument("--new-tokens", type=positive_int, default=32,
                   help="tokens generated, >= 2 (default 32)")  # fmt: skip
    m.add_argument("--tokens", type=positive_int, default=128,
                   help="a training step's sequence length (default 128)")  # fmt: skip
    m.add_argument("--dtype", choices=list(DTYPE_NAMES), help="default fp32 on cpu, bf16 on cuda")
    m.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    m.add_argument("--base-dtype", choices=["nf4", "int8"],
                   help="the frozen linear weights quantized by bitsandbytes (QLoRA; extra "
                   "quant): PEFT's QLoRA against our QLoRA impls")  # fmt: skip
    m.add_argument("--blocks", type=int, metavar="N",
                   help="keep the first N blocks, at the model's real widths (the figures say "
                   "so)")  # fmt: skip
    m.add_argument("--adapters", type=positive_int, default=1, metavar="N",
                   help="also serve a batch whose sequences each take one of N adapters (the "
                   "adapter and N - 1 of its layout; needs --batch >= 2)")  # fmt: skip
    m.add_argument("--compile", action="store_true",
                   help="also generation compiled whole: the frozen model and each variant with "
                   "transformers' static KV cache and torch.compile (CUDA graphs on CUDA); the "
                   "compile is timed apart")  # fmt: skip
    m.add_argument("--seconds", type=positive_number, default=3.0,
                   help="most paired timing per variant and mode (default 3)")  # fmt: skip
    m.add_argument("--threads", type=positive_int,
                   help="torch CPU threads, >= 1 (default: the physical cores)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="DIR",
                   help="folder of the results (default results/model/)")  # fmt: skip
    p.set_defaults(func=cmd_model)
