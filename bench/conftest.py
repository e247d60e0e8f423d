"""pytest options, fixtures and parametrization of the bench, plugins, machine info, and the
session-end writer of results/<device>-<profile>.json and .md."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import torch

from bench.cache import CACHE_MODES
from bench.cases import DTYPES, PROFILES
from bench.memory import CpuProbe
from bench.plan_cli import presets_markdown
from bench.results import Run, dump_run, write_atomic
from bench.runner import Harness
from bench.session import Settings, configure_torch, physical_cores
from bench.tables import run_markdown
from lora_kernels import PluginError, load_plugins

SETTINGS = pytest.StashKey[Settings]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lora-bench")
    group.addoption(
        "--lora-profile",
        choices=list(PROFILES),
        default="quick",
        help="sweep to run: tiny (seconds), quick (default, minutes), full (hours on a CPU)",
    )
    group.addoption(
        "--lora-device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="devices to measure; default every device present",
    )
    group.addoption(
        "--lora-threads",
        type=int,
        default=None,
        help="torch CPU threads, set and recorded; default the physical cores",
    )
    group.addoption(
        "--lora-dtype",
        default=None,
        help=f"comma list of {', '.join(DTYPES)}; default fp32 on cpu, bf16,fp32 on cuda",
    )
    group.addoption(
        "--lora-results",
        default="results",
        help="folder for <device>-<profile>.json and .md (default results/)",
    )
    group.addoption(
        "--lora-seconds",
        type=float,
        default=None,
        help="time budget of each benchmark's paired rounds (default: the profile's)",
    )
    group.addoption(
        "--lora-only",
        action="append",
        default=None,
        metavar="CASE_ID",
        help="run only this case id, e.g. 'toy T=512 r=4 fp32 cpu'; repeatable",
    )
    group.addoption(
        "--lora-cache",
        choices=list(CACHE_MODES),
        default="cold",
        help="cold (default, what a serving step sees): each call reads weights and input from "
        "memory, rotating copies past the last-level cache; warm: the same copy every call",
    )
    group.addoption(
        "--lora-impl",
        action="append",
        default=None,
        metavar="MODULE:ATTR",
        help="also check and time this Impl (module:attr or path/to/file.py:attr); repeatable. "
        "Installed plugins (entry points 'lora_bench.impls') are always loaded",
    )


def pytest_configure(config: pytest.Config) -> None:
    settings = Settings.from_config(config)
    try:
        load_plugins(settings.impl_specs)
    except PluginError as err:
        raise pytest.UsageError(str(err)) from None
    config.stash[SETTINGS] = settings
    configure_torch(settings.threads)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    settings = metafunc.config.stash[SETTINGS]
    names = metafunc.fixturenames
    for case, memory in (("case", False), ("memory_case", True)):
        if case in names and "impl_name" in names:
            pairs = settings.case_impls(memory)
            metafunc.parametrize((case, "impl_name"), pairs, ids=[f"{c}-{i}" for c, i in pairs])
        elif case in names:
            metafunc.parametrize(case, settings.memory_cases() if memory else settings.cases(),
                                 ids=str)  # fmt: skip
    if "model_job" in metafunc.fixturenames:
        metafunc.parametrize("model_job", settings.model_jobs(), ids=str)
    if "multi_job" in metafunc.fixturenames:
        metafunc.parametrize("multi_job", settings.multi_jobs(), ids=str)
    if "timer_case" in metafunc.fixturenames:
        metafunc.parametrize("timer_case", settings.timer_cases(), ids=str)


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig.stash[SETTINGS]


@pytest.fixture
def harness(settings: Settings, request: pytest.FixtureRequest) -> Harness:
    return Harness(settings, request.node.nodeid)


@pytest.fixture(scope="session")
def memory_probe(settings: Settings) -> Iterator[CpuProbe]:
    probe = CpuProbe(settings.threads, settings.impl_specs)
    yield probe
    probe.close()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else _cpu_model()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    settings = config.stash[SETTINGS]
    info = {
        "torch": torch.__version__,
        "cpu_model": _cpu_model(),
        "physical_cores": physical_cores(),
        "threads": settings.threads,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            cuda=torch.version.cuda, gpu=props.name, gpu_memory_gib=props.total_memory / 2**30
        )
    machine_info["lora_bench"] = info


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write one results JSON and .md per device measured, from the entries the benchmarks
    recorded. Machine and commit info come from pytest-benchmark's public hooks."""
    config = session.config
    settings = config.stash.get(SETTINGS, None)
    if settings is None or not settings.entries:
        return
    devices = sorted({e.device for e in settings.entries if hasattr(e, "device")})
    settings.recalibrate()
    hook = config.hook
    machine_info = hook.pytest_benchmark_generate_machine_info(config=config)
    hook.pytest_benchmark_update_machine_info(config=config, machine_info=machine_info)
    commit_info = hook.pytest_benchmark_generate_commit_info(config=config)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for device in devices:
        mine = [e for e in settings.entries if getattr(e, "device", device) == device]
        run = Run(settings.meta(device, _device_name(device), created), machine_info,
                  commit_info, mine)  # fmt: skip
        stem = settings.results_dir / f"{device}-{settings.profile.name}"
        write_atomic(stem.with_suffix(".json"), dump_run(run))
        planner = "\n" + presets_markdown() if run.models() else ""
        write_atomic(stem.with_suffix(".md"), run_markdown(run) + planner)
        config.get_terminal_writer().line(f"lora-bench: wrote {stem}.json and .md")
