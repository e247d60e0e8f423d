"""The lora-bench pytest plugin, registered through the `pytest11` entry point so that it
exists wherever lora-bench is installed: the --lora-* options, the fixtures and
parametrization of the benchmark modules, machine info, and the session-end writer of
results/<device>-<profile>.json and .md.

It stays idle in a pytest session that runs none of the benchmark modules: their plugins and
thread count are set up when the first of them is collected."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import torch

from bench.families import probe
from bench.families.budget import expected_seconds
from bench.families.conv import conv_jobs
from bench.families.conv_models import conv_model_jobs
from bench.families.fused import fused_jobs
from bench.families.generation import gen_jobs
from bench.families.lifecycle import life_jobs
from bench.families.models import model_jobs
from bench.families.multi import multi_jobs
from bench.families.quant import quant_jobs
from bench.families.tp import tp_jobs
from bench.families.unet import unet_jobs
from bench.harness import pages
from bench.harness.allocator import fix_malloc
from bench.harness.memory import CpuProbe
from bench.harness.placement import release_setups
from bench.harness.runner import Harness
from bench.harness.session import Settings, configure_torch, cpu_model, device_name, physical_cores
from bench.harness.shards import assign
from bench.plugin.options import OPTIONS
from bench.report.document import write_results
from bench.report.plan import presets_markdown
from bench.schema.io import ResultError, check_writable
from bench.schema.run import Run
from lora_kernels import PluginError, load_plugins
from lora_kernels.planner import plan
from lora_kernels.presets import PRESETS

SETTINGS = pytest.StashKey[Settings]()
STARTED = pytest.StashKey[bool]()
MODULE = pytest.StashKey[str]()  # the module of the benchmark that ran last
# Each family's job fixture and what lists its jobs for a profile and devices.
JOB_FIXTURES: dict[str, Callable[[str, list[str]], list[Any]]] = {
    "model_job": model_jobs, "multi_job": multi_jobs, "gen_job": gen_jobs, "life_job": life_jobs,
    "quant_job": quant_jobs, "fused_job": fused_jobs, "conv_job": conv_jobs,
    "conv_model_job": conv_model_jobs, "unet_job": unet_jobs, "tp_job": tp_jobs,
}  # fmt: skip
BENCH_FIXTURES = {"breakdown_case", "case", "memory_case", "timer_case", *JOB_FIXTURES}
PRESET_TARGETS = ("attn", "all-linear")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lora-bench")
    for option in OPTIONS:
        group.addoption(f"--lora-{option.name}", dest=option.dest, help=option.help,
                        **option.kwargs)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """Read and check the options, and load the plugins they name; nothing else changes yet."""
    settings = Settings.from_config(config)
    if settings.impl_specs:
        try:
            load_plugins(settings.impl_specs)
        except PluginError as err:
            raise pytest.UsageError(f"--lora-impl: {err}") from None
    known = case_ids(settings) if settings.only else []
    unknown = [i for i in settings.only if i not in known]
    if unknown:
        pytest.exit(  # exit 2, as lora-bench ab refuses it: unusable input
            f"--lora-only {', '.join(map(repr, unknown))}: no such case in profile "
            f"{settings.profile.name!r}; its cases: {', '.join(known)}",
            returncode=2,
        )
    config.stash[SETTINGS] = settings
    config.stash[STARTED] = False


def case_ids(settings: Settings) -> list[str]:
    """Every case and job id of the profile on the run's devices, in order, once each."""
    profile, devices, dtypes = settings.profile, settings.devices, settings.dtypes
    cases = [
        *profile.cases(devices, dtypes),
        *profile.memory_cases(devices, dtypes),
        *profile.timer_cases(devices, dtypes),
        *profile.dora_cases(devices, dtypes),
    ]
    jobs = [
        str(j.case) for jobs_of in JOB_FIXTURES.values() for j in jobs_of(profile.name, devices)
    ]
    return list(dict.fromkeys([*map(str, cases), *jobs]))


def started(config: pytest.Config) -> Settings:
    """The run's settings, with the installed plugins loaded, the threads and malloc's
    thresholds fixed and the pages large tensors get recorded: done when the first benchmark
    module is collected."""
    settings = config.stash[SETTINGS]
    if not config.stash[STARTED]:
        load_plugins(settings.impl_specs)
        configure_torch(settings.threads)
        settings.allocator = fix_malloc()
        settings.pages = pages.in_force(lambda nbytes: torch.ones(nbytes // 4))
        config.stash[STARTED] = True
    return settings


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before any benchmark runs: the results folder must take the files written at the end."""
    config = session.config
    if config.stash.get(STARTED, False):
        settings = config.stash[SETTINGS]
        folders = {"--lora-results": settings.results_dir, "--lora-trace": settings.trace_dir}
        for option, folder in folders.items():
            try:
                if folder is not None:
                    check_writable(folder)
            except ResultError as err:
                raise pytest.UsageError(f"{option}: {err}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if metafunc.module.__name__.partition(".")[0] != "bench" or not BENCH_FIXTURES & set(names):
        return  # not one of the benchmark modules
    settings = started(metafunc.config)
    for case, memory in (("case", False), ("memory_case", True)):
        if case in names and "impl_name" in names:
            pairs = settings.case_impls(memory)
            metafunc.parametrize((case, "impl_name"), pairs, ids=[f"{c}-{i}" for c, i in pairs])
        elif case in names:
            metafunc.parametrize(case, settings.memory_cases() if memory else settings.cases(),
                                 ids=str)  # fmt: skip
    for fixture, jobs_of in JOB_FIXTURES.items():
        if fixture in names:
            jobs = jobs_of(settings.profile.name, settings.devices)
            metafunc.parametrize(fixture, settings.selected(jobs), ids=str)
    if "timer_case" in names:
        metafunc.parametrize("timer_case", settings.timer_cases(), ids=str)
    if "breakdown_case" in names:
        metafunc.parametrize("breakdown_case", settings.breakdown_cases(), ids=str)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected theirs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --lora-shard i/N, keep the benchmarks of shard i (the others are deselected), by
    each one's expected seconds: its file's measured seconds per benchmark in the profile
    (bench/families/budget.py), 1 s for a file that has none."""
    settings = config.stash.get(SETTINGS, None)
    if settings is None or settings.shard is None:
        return
    bench = {_key(i): i for i in items if _module_of(i).partition(".")[0] == "bench"}
    profile = settings.profile.name
    seconds = {key: expected_seconds(i.nodeid.partition("::")[0], profile)
               for key, i in bench.items()}  # fmt: skip
    index, count = settings.shard
    keep = set(assign(seconds, count)[index - 1])
    settings.shard_items = [key.partition("::")[2] for key in seconds if key in keep]
    settings.shard_of = hashlib.sha256("\n".join(sorted(bench)).encode()).hexdigest()[:16]
    dropped = [i for key, i in bench.items() if key not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = set(map(id, dropped))  # items compare by identity: a set, not a list scan
        items[:] = [i for i in items if id(i) not in gone]


def _key(item: pytest.Item) -> str:
    """module::test id, the same wherever the package is installed (a node id is not)."""
    return f"{_module_of(item)}::{item.nodeid.partition('::')[2]}"


def _module_of(item: pytest.Item) -> str:
    module = getattr(item, "module", None)
    return getattr(module, "__name__", "")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Past --lora-deadline no further benchmark starts; the results list the ones skipped.
    The setups one benchmark module held for its cases go before the next module starts."""
    settings = item.config.stash.get(SETTINGS, None)
    if settings is None:
        return
    module = _module_of(item)
    if module != item.config.stash.get(MODULE, module):
        release_setups()
    item.config.stash[MODULE] = module
    if not settings.past_deadline():
        return
    if BENCH_FIXTURES & set(getattr(item, "fixturenames", ())):
        settings.not_run.append(item.nodeid.partition("::")[2])
        pytest.skip(f"--lora-deadline {settings.deadline:g} s passed before it started")


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return started(pytestconfig)


@pytest.fixture
def harness(settings: Settings, request: pytest.FixtureRequest) -> Harness:
    return Harness(settings, request.node.nodeid)


@pytest.fixture(scope="session")
def memory_probe(settings: Settings) -> Iterator[CpuProbe]:
    cpu_probe = CpuProbe(settings.threads, settings.impl_specs, probe)
    yield cpu_probe
    cpu_probe.close()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    info = {
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "physical_cores": physical_cores(),
        "threads": settings.threads,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            cuda=torch.version.cuda, gpu=props.name, gpu_memory_gib=props.total_memory / 2**30
        )
    machine_info["lora_bench"] = info


def planner_markdown(rank: int = 16, tokens: int = 2048) -> str:
    """The planner's figures for every preset, with LoRA on attn and on all-linear."""
    plans = [
        (targets, plan(preset, targets, rank, tokens=tokens))
        for preset in PRESETS.values()
        for targets in PRESET_TARGETS
    ]
    return presets_markdown(plans, rank, tokens)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write one results JSON and .md per device measured, from the entries the benchmarks
    recorded. Machine and commit info come from pytest-benchmark's public hooks."""
    config = session.config
    settings = config.stash.get(SETTINGS, None)
    if settings is None or not (settings.entries or settings.not_run):
        return
    if not settings.entries:  # the deadline cut every benchmark: said, and recorded
        config.get_terminal_writer().line(
            f"lora-bench: --lora-deadline {settings.deadline:g} s passed before any benchmark "
            f"started: {len(settings.not_run)} not run, nothing measured",
            red=True,
        )
    # entries of no device (parameter counts) go with every device's; alone, the devices run
    devices = sorted({e.device for e in settings.entries if hasattr(e, "device")})
    devices = devices or list(settings.devices)
    settings.recalibrate()
    hook = config.hook
    machine_info = hook.pytest_benchmark_generate_machine_info(config=config)
    hook.pytest_benchmark_update_machine_info(config=config, machine_info=machine_info)
    commit_info = hook.pytest_benchmark_generate_commit_info(config=config)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for device in devices:
        mine = [e for e in settings.entries if getattr(e, "device", device) == device]
        meta = settings.meta(device, device_name(device), created)
        run = Run(meta, machine_info, commit_info, mine)
        stem = settings.results_dir / f"{device}-{settings.profile.name}"
        planner = "\n" + planner_markdown() if run.models() else ""
        write_results(stem.with_suffix(".json"), run, planner)
        config.get_terminal_writer().line(f"lora-bench: wrote {stem}.json and .md")
