"""Run a bench module with `lora_kernels` imported from another source tree, the rest of the
bench from this one: `python -m bench.with_kernels TREE MODULE [ARGS...]`, where TREE holds a
`lora_kernels/` folder. Each side of `lora-bench ab` runs this way, so both sides time their
own kernels with one harness."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path
from types import ModuleType


def load_kernels(tree: Path) -> ModuleType:
    """Import `tree/lora_kernels` as `lora_kernels`; every later import of it, or of its
    submodules and of plugins that use it, gets this copy. Raises ImportError when another
    copy is already imported or the tree has none."""
    init = tree / "lora_kernels" / "__init__.py"
    if "lora_kernels" in sys.modules:
        raise ImportError(f"lora_kernels is already imported from {sys.modules['lora_kernels']}")
    if not init.is_file():
        raise ImportError(f"{tree} has no lora_kernels package")
    spec = importlib.util.spec_from_file_location(
        "lora_kernels", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["lora_kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n.split(".")[0] == "lora_kernels"]:
            del sys.modules[name]
        raise
    return module


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m bench.with_kernels TREE MODULE [ARGS...]")
    tree, module, *args = argv
    load_kernels(Path(tree).resolve())
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
