"""The README's implementation table is the registry's (ours and the peers), and its excerpt
of `lora-bench model`'s verdict is the committed run's, so neither can drift."""

from __future__ import annotations

from pathlib import Path

from lora_kernels import IMPLS
from lora_kernels.registry import impls_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_impls_table_matches_registry() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = "<!-- impls:start -->\n", "\n<!-- impls:end -->"
    assert start in text and end in text, "README lost its impls markers"
    block = text.split(start, 1)[1].split(end, 1)[0]
    builtin = [i for i in IMPLS.values() if i.origin != "plugin"]
    assert block.strip() == impls_table(builtin).strip(), (
        "README's table is stale; regenerate it with `lora-bench impls --no-plugins`"
    )


def test_readme_model_excerpt_is_the_committed_runs() -> None:
    from bench.report.user_model import verdict_excerpt
    from bench.schema.run import load_run

    text = README.read_text(encoding="utf-8")
    start, end = "<!-- model-excerpt:start -->\n```\n", "\n```\n<!-- model-excerpt:end -->"
    assert start in text and end in text, "README lost its model-excerpt markers"
    block = text.split(start, 1)[1].split(end, 1)[0]
    run = load_run(README.parent / "results" / "reference" / "model" / "llama-cpu-cpu.json")
    assert block == verdict_excerpt(run), (
        "README's excerpt of the committed model run is stale: paste "
        "bench.report.user_model.verdict_excerpt of results/reference/model/llama-cpu-cpu.json"
    )
