"""The import graph of bench/ and lora_kernels/, built from every import statement in their
modules (those inside functions too): no circles, no upward imports across the floors, and
no torch in the readers' subpackages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "lora_kernels")

# Each subpackage's floor: a module may import only from lower floors or its own subpackage.
FLOORS = {
    "lora_kernels": 0,
    "bench.stats": 0,
    "bench.schema": 1,
    "bench.report": 2,
    "bench.harness": 2,
    "bench.families": 3,
    "bench.gates": 4,
    "bench.plugin": 5,
    "bench.cli": 6,
}
# Readers of results files: they must run where torch is not installed.
TORCH_FREE = ("bench.stats", "bench.schema", "bench.report", "bench.plugin.options")
HEAVY = ("torch", "lora_kernels", "triton", "bench.harness", "bench.families", "bench.plugin.hooks")


def modules() -> dict[str, Path]:
    """Library modules by dotted name; the benchmark and test modules are not part of it."""
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name.startswith("test_") or path.name == "conftest.py":
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """Every module name an import statement of the module names, resolved to absolute."""
    names = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a submodule's own name where it is one)."""
    mods = modules()

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = {resolve(t) for t in imported(name, path)}
        edges[name] = {t for t in targets if t and t != name}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def floor(module: str) -> tuple[str, int] | None:
    for pkg, level in FLOORS.items():
        if module == pkg or module.startswith(pkg + "."):
            return pkg, level
    return None


def test_the_check_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    assert circles(graph()) == []


def test_every_library_module_has_a_floor() -> None:
    loose = [m for m in graph() if floor(m) is None and m != "bench"]
    assert loose == [], f"place these in a subpackage of FLOORS: {loose}"


def test_no_upward_or_sideways_imports() -> None:
    bad = []
    for module, targets in graph().items():
        here = floor(module)
        for target in targets:
            there = floor(target)
            if here and there and here[0] != there[0] and there[1] >= here[1]:
                bad.append(f"{module} -> {target}")
    assert bad == []


@pytest.mark.parametrize("package", TORCH_FREE)
def test_readers_import_no_torch(package: str) -> None:
    mods = modules()
    heavy = [
        f"{name} imports {target}"
        for name, path in mods.items()
        if name == package or name.startswith(package + ".")
        for target in imported(name, path)
        if any(target == h or target.startswith(h + ".") for h in HEAVY)
    ]
    assert heavy == []
