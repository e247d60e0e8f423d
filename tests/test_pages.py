"""Huge pages for a benchmark session's large tensors: asked for only when pytest runs the
benchmarks and before torch is imported, recorded as what the process got, and left out of
the memory probe (whose RSS figures count 4 KiB pages)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import pages

ROOT = Path(__file__).resolve().parents[1]
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["pytest", "bench", "--benchmark-only"], True),
        (["pytest", "bench/test_forward.py::test_forward[x]", "--benchmark-only", "-q"], True),
        (["pytest", str(ROOT / "bench"), "--benchmark-only"], True),
        (["pytest", "--pyargs", "bench", "--benchmark-only"], True),
        (["pytest", "bench"], False),  # the benchmarks collected as tests: not a timing run
        (["pytest", "tests", "--benchmark-only"], False),
        (["pytest", "--benchmark-only", "--lora-results", "/tmp/out"], False),
    ],
)  # fmt: skip
def test_only_a_benchmark_session_asks(argv: list[str], wanted: bool) -> None:
    assert pages.is_bench_session(argv, cwd=ROOT) is wanted


def test_what_the_process_got_is_read_from_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    smaps = tmp_path / "smaps_rollup"
    smaps.write_text("Rss: 1 kB\nAnonHugePages: 0 kB\n")
    assert pages.anon_huge_kib(smaps) == 0

    def allocate(nbytes: int) -> None:  # the kernel backs it with huge pages
        smaps.write_text(f"AnonHugePages: {nbytes // 1024} kB\n")

    monkeypatch.setattr(pages, "SMAPS", smaps)
    assert pages.in_force(allocate) == pages.HUGE
    monkeypatch.delenv(pages.VARIABLE, raising=False)
    assert pages.in_force(lambda nbytes: None).startswith("4 KiB: THP_MEM_ALLOC_ENABLE=1 was not")
    monkeypatch.setenv(pages.VARIABLE, "1")
    assert pages.in_force(lambda nbytes: None).startswith("4 KiB: the kernel gave no")
    monkeypatch.setattr(pages, "SMAPS", tmp_path / "missing")
    assert pages.in_force(lambda nbytes: None).startswith("not known")


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="the kernel gives no huge pages"
)
def test_a_benchmark_session_gets_huge_pages_and_other_sessions_do_not() -> None:
    """The plugin's package asks at import, before torch: a process that imports it with a
    benchmark command line, then torch, backs an 8 MiB tensor with huge pages."""
    code = (
        "import sys; sys.argv = ['pytest', *sys.argv[1:]]\n"
        "import bench.plugin, torch\n"
        "from bench.harness import pages\n"
        "print(pages.in_force(lambda n: torch.ones(n // 4)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != pages.VARIABLE}

    def got(*argv: str) -> str:
        cmd = [sys.executable, "-c", code, *argv]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert got("bench", "--benchmark-only") == pages.HUGE
    assert got("tests").startswith("4 KiB: THP_MEM_ALLOC_ENABLE=1 was not set")


def test_the_memory_probe_counts_4_kib_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.families import probe
    from bench.harness.cases import Case
    from bench.harness.memory import CpuProbe

    seen: dict[str, str] = {}

    class Popen:
        def __init__(self, cmd: list[str], **kwargs: object) -> None:
            seen.update(kwargs["env"])  # type: ignore[arg-type]
            raise RuntimeError("started")

    monkeypatch.setattr(subprocess, "Popen", Popen)
    monkeypatch.setenv(pages.VARIABLE, "1")
    with pytest.raises(RuntimeError, match="started"):
        CpuProbe(1, [], probe).measure("base", Case("toy", 16, 4), "infer")
    assert seen[pages.VARIABLE] == "0"
