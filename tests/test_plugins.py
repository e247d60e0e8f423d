"""Plugins: entry points and module:attr specs join the registry, bad ones get a clear error
naming them, and `lora-bench verify` checks any impl, the installed example plugin included."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from lora_kernels import IMPLS, Impl, PluginError, load_plugins
from lora_kernels.plugins import ENTRY_POINT_GROUP

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(ROOT / "tests" / "sample_plugin.py")

GOOD = """
from lora_kernels import IMPLS, Impl
IMPL = Impl("{name}", "test plugin", IMPLS["addmm"].builder)
NOT_AN_IMPL = 42
"""


@pytest.fixture
def registry() -> dict[str, Impl]:
    """A copy of the registry, so these tests leave IMPLS as it was."""
    return dict(IMPLS)


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "plugin_ok.py").write_text(GOOD.format(name="plugin_ok"))
    (tmp_path / "plugin_two.py").write_text(GOOD.format(name="plugin_ok"))  # the same name
    (tmp_path / "plugin_broken.py").write_text("import no_such_package_at_all\n")
    return tmp_path


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def test_entry_point_joins_the_registry_as_a_plugin(
    module_dir: Path, registry: dict[str, Impl]
) -> None:
    added = load_plugins(eps=[ep("ok", "plugin_ok:IMPL")], registry=registry)
    assert added == ["plugin_ok"]
    impl = registry["plugin_ok"]
    assert impl.origin == "plugin"
    assert impl.source == "plugin_ok"  # no distribution: the module it came from
    assert list(registry)[-1] == "plugin_ok", "plugins come after ours and the peers"
    assert load_plugins(eps=[ep("ok", "plugin_ok:IMPL")], registry=registry) == [], "once"
    assert "plugin_ok" not in IMPLS


def test_file_spec_with_a_list_of_impls(registry: dict[str, Impl]) -> None:
    assert load_plugins([f"{SAMPLE}:IMPLS"], eps=[], registry=registry) == [
        "sample_addmm",
        "sample_strided",
    ]
    assert registry["sample_strided"].source == f"{SAMPLE}:IMPLS"


@pytest.mark.parametrize(
    ("eps", "specs", "message"),
    [
        ([ep("broken", "plugin_broken:IMPL")], [], re.escape(
         "plugin 'broken' (lora_bench.impls = 'plugin_broken:IMPL', from plugin_broken): "
         "loading failed: ModuleNotFoundError: No module named 'no_such_package_at_all'")),
        ([ep("missing", "no_such_plugin_module:IMPL")], [], "plugin 'missing' .* loading failed"),
        ([ep("attr", "plugin_ok:NOPE")], [], "plugin 'attr' .* AttributeError"),
        ([ep("int", "plugin_ok:NOT_AN_IMPL")], [],
         "plugin 'int' .*: expected an lora_kernels.Impl or a list of them, got int"),
        ([ep("clash", "plugin_ok:IMPL"), ep("twin", "plugin_two:IMPL")], [],
         "plugin 'twin' .*: impl name already registered: 'plugin_ok' by plugin_ok"),
        ([], ["plugin_ok:NOT_AN_IMPL"], "plugin 'plugin_ok:NOT_AN_IMPL': expected an"),
        ([], ["plugin_ok:NOPE"], "module 'plugin_ok' has no attribute 'NOPE'"),
        ([], ["no_such_mod:X"], "importing 'no_such_mod' failed: ModuleNotFoundError"),
        ([], ["missing/file.py:X"], r"no such file missing/file.py"),
        ([], ["plugin_ok"], "must look like module:attr or path/to/file.py:attr"),
        ([], [f"{SAMPLE}:IMPLS", "plugin_ok:IMPL", f"{SAMPLE}:IMPLS".replace(".py", ".py")], None),
    ],
)  # fmt: skip
def test_bad_plugins_name_themselves(
    module_dir: Path,
    registry: dict[str, Impl],
    eps: list[EntryPoint],
    specs: list[str],
    message: str | None,
) -> None:
    if message is None:  # the control: good plugins load, a repeated spec is loaded once
        load_plugins(specs, eps=eps, registry=registry)
        return
    with pytest.raises(PluginError, match=message):
        load_plugins(specs, eps=eps, registry=registry)


def test_a_plugin_may_not_take_our_names(module_dir: Path, registry: dict[str, Impl]) -> None:
    (module_dir / "plugin_clash.py").write_text(GOOD.format(name="addmm"))
    with pytest.raises(PluginError, match="already registered: 'addmm' by lora-bench"):
        load_plugins(["plugin_clash:IMPL"], eps=[], registry=registry)
    assert registry["addmm"].origin == "ours"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "has space"}, ValueError, "must be a Python identifier"),
        ({"description": ""}, TypeError, "description must be a non-empty str"),
        ({"description": "two\nlines"}, ValueError, "description must be one line"),
        ({"builder": 3}, TypeError, "builder must be callable"),
        ({"devices": frozenset({"tpu"})}, ValueError, r"devices \['tpu'\] not allowed"),
        ({"modes": frozenset()}, TypeError, "modes must be a non-empty frozenset"),
        ({"modes": {"infer"}}, TypeError, "modes must be a non-empty frozenset"),
        ({"origin": "mine"}, ValueError, "origin must be one of"),
    ],
)
def test_impl_fields_are_validated(kwargs: dict, error: type, match: str) -> None:
    args = {"name": "x", "description": "d", "builder": IMPLS["addmm"].builder, **kwargs}
    with pytest.raises(error, match=match):
        Impl(**args)


def lora_bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench.cli.main", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_verify_unknown_name_lists_the_known_ones() -> None:
    proc = lora_bench("verify", "fastest")
    assert proc.returncode == 2
    assert proc.stderr.startswith("lora-bench verify: unknown impl 'fastest'; known: base, ")
    assert proc.stderr.count("\n") == 1


def test_verify_a_file_plugin_and_a_bad_one(tmp_path: Path) -> None:
    proc = lora_bench("verify", "sample_addmm", "--impl", f"{SAMPLE}:IMPLS")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sample_addmm: all 12 checks passed" in proc.stdout
    liar = tmp_path / "liar.py"
    liar.write_text(
        "import torch\nfrom lora_kernels import IMPLS, Impl\n"
        "def build(w):\n    if w.dtype != torch.float32:\n"
        "        raise TypeError(f'no kernel for {w.dtype}')\n"
        "    return IMPLS['addmm'].builder(w)\n"
        "IMPL = Impl('liar', 'claims every dtype, runs fp32 only', build)\n"
    )
    proc = lora_bench("verify", "liar", "--impl", f"{liar}:IMPL")
    assert proc.returncode == 1
    assert "FAIL: one token, r=1: raised TypeError: no kernel for torch.bfloat16" in proc.stdout
    assert "liar: 4 of 12 checks failed" in proc.stdout
    proc = lora_bench("verify", "x", "--impl", f"{tmp_path}/none.py:IMPL")
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and proc.stderr.count("\n") == 1


EXAMPLE = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "toy_einsum"]


@pytest.mark.skipif(
    not EXAMPLE, reason="the example plugin is not installed: pip install -e examples/toy_plugin"
)
def test_the_installed_example_plugin_passes_verify() -> None:
    assert IMPLS["toy_einsum"].origin == "plugin"
    assert IMPLS["toy_einsum"].source == "lora-bench-toy-plugin"
    proc = lora_bench("verify", "toy_einsum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "toy_einsum: all 12 checks passed" in proc.stdout
    table = lora_bench("impls").stdout
    rows = [[c.strip() for c in line.split("|")[1:3]] for line in table.splitlines()]
    assert ["`toy_einsum`", "plugin: lora-bench-toy-plugin"] in rows
