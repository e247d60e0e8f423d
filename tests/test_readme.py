"""The README's implementation table is the registry's (ours and the peers), so it cannot
drift."""

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
