"""Run one role of the bench with `lora_kernels` imported from another source tree, the rest
of the bench from this one: `python -m bench.gates.with_kernels TREE ROLE [ARGS...]`, where
TREE holds a `lora_kernels/` folder and ROLE is `side` (one side of `lora-bench ab`) or
`probe` (the memory probe a side starts). Both sides of `lora-bench ab` run this way, so each
times its own kernels with one harness."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


class TreeFinder(importlib.abc.MetaPathFinder):
    """Finds `lora_kernels` and its submodules in one source tree and nowhere else: first on
    sys.meta_path, so an editable install's finder (which maps the package's submodules to
    its own checkout whatever the package's __path__) never supplies a module the tree lacks.
    A module the tree lacks is a ModuleNotFoundError, as it would be in that commit."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] != "lora_kernels":
            return None
        where = self.tree.joinpath(*fullname.split("."))
        if (where / "__init__.py").is_file():
            init = where / "__init__.py"
            return importlib.util.spec_from_file_location(
                fullname, init, submodule_search_locations=[str(where)]
            )
        if where.with_suffix(".py").is_file():
            return importlib.util.spec_from_file_location(fullname, where.with_suffix(".py"))
        raise ModuleNotFoundError(f"No module named {fullname!r} in {self.tree}", name=fullname)


def load_kernels(tree: Path) -> ModuleType:
    """Import `tree/lora_kernels` as `lora_kernels`; every later import of it, or of its
    submodules and of plugins that use it, gets this copy. Raises ImportError when another
    copy is already imported or the tree has none."""
    if "lora_kernels" in sys.modules:
        raise ImportError(f"lora_kernels is already imported from {sys.modules['lora_kernels']}")
    if not (tree / "lora_kernels" / "__init__.py").is_file():
        raise ImportError(f"{tree} has no lora_kernels package")
    finder = TreeFinder(tree)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module("lora_kernels")
    except BaseException:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] == "lora_kernels"]:
            del sys.modules[name]
        raise


def _side(args: list[str]) -> None:
    # Imported after the kernels, so the side sees the tree's copy; this module by its own
    # name too (it runs as __main__), for the side to start its memory probe through it.
    from bench.gates import side, with_kernels

    side.main(args, with_kernels)


def _probe(args: list[str]) -> None:
    from bench.families import probe

    probe.main(args)


ROLES: dict[str, Callable[[list[str]], None]] = {"side": _side, "probe": _probe}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ROLES:
        raise SystemExit(
            f"usage: python -m bench.gates.with_kernels TREE {{{','.join(ROLES)}}} [ARGS...]"
        )
    tree, role, *args = argv
    load_kernels(Path(tree).resolve())
    ROLES[role](args)


if __name__ == "__main__":
    main(sys.argv[1:])
