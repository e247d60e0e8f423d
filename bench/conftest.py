"""The benchmark modules' options, fixtures and results writer are the lora-bench pytest
plugin (bench.plugin.hooks). An install registers it through the `pytest11` entry point; a
checkout run without one (PYTHONPATH=.) loads it here."""

from __future__ import annotations

from importlib.metadata import entry_points

if not entry_points(group="pytest11", name="lora_bench"):
    pytest_plugins = ["bench.plugin.hooks"]
