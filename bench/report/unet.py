"""The UNet tables of a run: each variant's denoising call and training step against the frozen
UNet's, the denoising target judged, and our merge and unmerge against diffusers' fuse_lora and
unfuse_lora with the drift cycles leave."""

from __future__ import annotations

from bench.report.base import Table, fmt_bytes, fmt_ci, fmt_seconds
from bench.report.conv import verdict
from bench.schema.run import Run

DENOISE_TARGET = 1.05  # unmerged, LoRA on attention and convolutions, over the frozen UNet


def unet_tables(run: Run) -> list[Table]:
    entries = run.unet()
    rows: list[list[object]] = []
    for e in entries:
        judged = ""
        if e.mode == "infer" and e.targets == "attn+conv":
            judged = f"≤ {DENOISE_TARGET:.2f}: {verdict(e.rounds.ratio_ci, DENOISE_TARGET)}"
        ratio = f"{e.rounds.ratio:.3f} {fmt_ci(e.rounds.ratio_ci)}"
        rows.append([e.case, "denoise" if e.mode == "infer" else e.mode, e.variant, e.origin, ratio,
                     fmt_seconds(e.rounds.impl_median_s), fmt_seconds(e.rounds.base_median_s),
                     e.lora_layers, f"{e.lora_params:,}",
                     "the reference" if e.variant == "peft" else f"{e.rel_error:.1e}", judged,
                     ])  # fmt: skip
    headers = ["case", "mode", "LoRA by", "origin", "LoRA UNet / frozen UNet [95% CI]",
               "per call", "frozen's", "LoRA layers", "parameters trained", "err vs PEFT",
               "target"]  # fmt: skip
    note = (
        "A diffusers UNet2DConditionModel from its config (seeded weights, no download) with "
        "LoRA on its attention (to_q, to_k, to_v, to_out.0) or on its attention and "
        "convolutions (also conv1, conv2, conv_shortcut, the samplers' conv, proj_in and "
        "proj_out), put there by diffusers' add_adapter (PEFT's layers) or made ours by "
        "from_peft on the same tensors (variant: our linear impl / our Conv2d impl). denoise: "
        "one noise prediction without autograd; train: its MSE, backward to the latents and "
        "every A and B, and an AdamW step; the frozen UNet's step is the forward and the "
        "backward to the latents. err: our prediction (and every gradient) against PEFT's. "
        "target: the best unmerged denoising call within 5% of the frozen UNet, met when the "
        "whole 95% CI is."
    )
    tables = [Table("UNet: LoRA against the frozen UNet", headers, rows, note)]
    fuse = [
        [e.case, e.variant, f"{e.rounds.ratio:.3f} {fmt_ci(e.rounds.ratio_ci)}",
         fmt_seconds(e.rounds.impl_median_s), fmt_seconds(e.rounds.base_median_s),
         fmt_bytes(e.peak_bytes), fmt_bytes(e.diffusers_peak_bytes), e.cycles,
         f"{e.drift:.1e}", f"{e.diffusers_drift:.1e}"]
        for e in run.unet_fuse()
    ]  # fmt: skip
    tables.append(Table(
        "UNet: fuse and unfuse",
        ["case", "ours by", "our cycle / diffusers' [95% CI]", "our merge + unmerge",
         "fuse_lora + unfuse_lora", "our peak", "diffusers' peak", "cycles", "our drift",
         "diffusers' drift"], fuse,
        "One cycle, every LoRA layer merged into its weight and taken out again: ours "
        "(lora_kernels.merge and unmerge) in paired rounds with diffusers' fuse_lora and "
        "unfuse_lora on the same UNet. peak: bytes allocated over one cycle above what was "
        "held. drift: the worst relative change of any base weight after that many cycles (fp "
        "rounding; ours takes out exactly what it folded in).",
    ))  # fmt: skip
    return tables
