"""Third-party implementations: installed packages declare them under the entry-point group
`lora_bench.impls`; a file or module that is not installed is named as `module:attr` or
`path/to/file.py:attr`. Either way they join IMPLS beside ours and the peers.

An entry point or spec names an `Impl`, or a list or tuple of them. Anything wrong (a module
that fails to import, a missing attribute, something that is not an Impl, a name that is taken)
raises PluginError naming the plugin: nothing is skipped silently.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from lora_kernels.registry import IMPLS, Impl, register

ENTRY_POINT_GROUP = "lora_bench.impls"
# Per registry, the plugins already loaded into it. The registry itself is kept here too, so
# that its id cannot be reused by another dict while the entry lives.
_loaded: dict[int, tuple[dict[str, Impl], set[str]]] = {}


class PluginError(ValueError):
    """A plugin could not be loaded; the message names it and says what was wrong."""


def _impls_of(value: object, label: str) -> list[Impl]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    bad = [type(v).__name__ for v in items if not isinstance(v, Impl)]
    if bad or not items:
        raise PluginError(
            f"plugin {label}: expected an lora_kernels.Impl or a list of them, got "
            f"{', '.join(bad) or 'an empty list'}"
        )
    return [v for v in items if isinstance(v, Impl)]


def _register_all(impls: list[Impl], label: str, source: str, registry: dict[str, Impl]) -> None:
    taken = [i.name for i in impls if i.name in registry]
    if taken:
        owners = ", ".join(f"{n!r} by {registry[n].source}" for n in taken)
        raise PluginError(f"plugin {label}: impl name already registered: {owners}")
    for impl in impls:
        register(replace(impl, origin="plugin", source=source), registry)


def _is_file_spec(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part


def absolute_spec(spec: str) -> str:
    """`path/to/file.py:attr` with the path made absolute, so it means the same from another
    working directory; module specs unchanged."""
    module_part, sep, attr = spec.rpartition(":")
    if sep and _is_file_spec(module_part):
        return f"{Path(module_part).resolve()}:{attr}"
    return spec


def _import_target(spec: str) -> object:
    """The object `module:attr` or `path/to/file.py:attr` names."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise PluginError(f"plugin {spec!r}: must look like module:attr or path/to/file.py:attr")
    try:
        if _is_file_spec(module_part):
            path = Path(module_part)
            if not path.is_file():
                raise PluginError(f"plugin {spec!r}: no such file {path}")
            name = f"lora_bench_plugin_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise PluginError(f"plugin {spec!r}: {path} cannot be imported as a module")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except PluginError:
        raise
    except Exception as err:
        raise PluginError(
            f"plugin {spec!r}: importing {module_part!r} failed: {type(err).__name__}: {err}"
        ) from err
    if not hasattr(module, attr):
        raise PluginError(f"plugin {spec!r}: module {module_part!r} has no attribute {attr!r}")
    return getattr(module, attr)


def _load_entry_point(ep: EntryPoint, registry: dict[str, Impl]) -> None:
    dist = ep.dist.name if ep.dist is not None else ep.value.split(":")[0]
    label = f"{ep.name!r} ({ENTRY_POINT_GROUP} = {ep.value!r}, from {dist})"
    try:
        value = ep.load()
    except Exception as err:
        raise PluginError(f"plugin {label}: loading failed: {type(err).__name__}: {err}") from err
    _register_all(_impls_of(value, label), label, dist, registry)


def load_plugins(
    specs: Iterable[str] = (),
    *,
    eps: Iterable[EntryPoint] | None = None,
    registry: dict[str, Impl] | None = None,
) -> list[str]:
    """Register the installed plugins (entry points of ENTRY_POINT_GROUP, or `eps`), then each
    `module:attr` spec, into `registry` (default IMPLS). Each is loaded once per registry.
    Returns the names the registry gained."""
    registry = IMPLS if registry is None else registry
    before = set(registry)
    done = _loaded.setdefault(id(registry), (registry, set()))[1]
    found = entry_points(group=ENTRY_POINT_GROUP) if eps is None else eps
    for ep in sorted(found, key=lambda e: e.name):
        if f"ep:{ep.name}={ep.value}" not in done:
            _load_entry_point(ep, registry)
            done.add(f"ep:{ep.name}={ep.value}")
    for spec in specs:
        if f"spec:{spec}" not in done:
            _register_all(_impls_of(_import_target(spec), repr(spec)), repr(spec), spec, registry)
            done.add(f"spec:{spec}")
    return [name for name in registry if name not in before]


def get_impl(name: str) -> Impl:
    """The registered impl called `name`; installed plugins are loaded before giving up.
    The error lists the known names."""
    if not isinstance(name, str):
        raise TypeError(f"impl name must be a str, got {type(name).__name__}")
    if name not in IMPLS:
        load_plugins()
    try:
        return IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown impl {name!r}; known: {', '.join(IMPLS)}") from None
