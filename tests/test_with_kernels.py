"""load_kernels imports `lora_kernels` from one source tree only: a submodule the tree lacks
is a ModuleNotFoundError, never the installed copy's module (an editable install's finder
maps submodules to its own checkout whatever the package's __path__ says)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(tree: Path, then: str = "") -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        from pathlib import Path
        from bench.gates.with_kernels import load_kernels
        kernels = load_kernels(Path({str(tree)!r}))
        print(kernels.__file__)
        {then}
    """)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    package = tmp_path / "lora_kernels"
    package.mkdir()
    (package / "__init__.py").write_text("from lora_kernels.sub import VALUE\n")
    (package / "sub.py").write_text("VALUE = 'from the tree'\n")
    return tmp_path


def test_the_tree_is_imported(tree: Path) -> None:
    proc = load(tree, "import lora_kernels.sub as s; print(s.VALUE, s.__file__)")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == str(tree / "lora_kernels" / "__init__.py")
    assert second == f"from the tree {tree / 'lora_kernels' / 'sub.py'}"


def test_a_module_the_tree_lacks_is_not_taken_from_the_install(tree: Path) -> None:
    """lora_kernels.numerics exists in the installed copy, not in the tree."""
    assert (ROOT / "lora_kernels" / "numerics.py").is_file()
    proc = load(tree, "import lora_kernels.numerics")
    assert proc.returncode != 0
    assert f"No module named 'lora_kernels.numerics' in {tree}" in proc.stderr


def test_a_tree_without_the_package_is_refused(tmp_path: Path) -> None:
    proc = load(tmp_path)
    assert proc.returncode != 0 and "has no lora_kernels package" in proc.stderr
