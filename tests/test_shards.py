"""Sharded sweeps: --lora-shard's deterministic, balanced shards, and `lora-bench merge`
joining the shards' results (refusing shards that do not belong together); end to end, the
tiny profile in two shards, merged, holds the entries of the unsharded run, and so does a
sweep of three shards on a local Ray instance started by the test."""

from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runs import make_run

from bench.cli import sweep as sweep_module
from bench.cli.main import main
from bench.cli.merge import merge_runs
from bench.cli.sweep import ShardOutcome, on_ray
from bench.families.budget import FULL_PER_BENCHMARK, QUICK, expected_seconds
from bench.harness.shards import assign
from bench.schema.io import ResultError
from bench.schema.run import Run, dump_run, load_run, parse_shard

ROOT = Path(__file__).resolve().parent.parent


def test_shards_are_parsed_and_refused_clearly() -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad, match in (
        ("0/4", r"i must be in 1\.\.N"),
        ("5/4", r"i must be in 1\.\.N"),
        ("2", "written i/N"),
        ("a/b", "written i/N"),
        ("-1/2", "written i/N"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_shard(bad)


def test_assign_balances_seconds_not_counts_and_is_deterministic() -> None:
    seconds = {"long": 10.0, **{f"short{i}": 1.0 for i in range(10)}}
    shards = assign(seconds, 2)
    assert sorted(n for s in shards for n in s) == sorted(seconds)
    loads = [sum(seconds[n] for n in s) for s in shards]
    assert loads == [10.0, 10.0]  # the long one alone; the ten short ones together
    assert assign(seconds, 2) == shards
    assert assign({}, 3) == [[], [], []]
    assert [len(s) for s in assign({"a": 1.0}, 3)] == [1, 0, 0]


def test_expected_seconds_come_from_the_measured_budgets() -> None:
    fwd = QUICK["bench/test_forward.py"]
    assert expected_seconds("bench/test_forward.py") == fwd.seconds / fwd.benchmarks
    assert expected_seconds("/site-packages/bench/test_forward.py") == expected_seconds(
        "bench/test_forward.py")  # fmt: skip
    assert expected_seconds("bench/test_new_family.py") == 1.0
    # the full profile's own figure where measured: a TP job takes seconds, not quick's skip
    assert expected_seconds("bench/test_tp.py", "full") == FULL_PER_BENCHMARK["bench/test_tp.py"]
    assert expected_seconds("bench/test_tp.py", "full") > 10 * expected_seconds("bench/test_tp.py")
    assert expected_seconds("bench/test_forward.py", "full") == fwd.seconds / fwd.benchmarks


def sharded(run: Run, shard: str, keep: slice) -> Run:
    meta = dataclasses.replace(run.meta, shard=shard)
    return Run(meta, run.machine_info, {"id": "abc"}, run.entries[keep])


def test_merge_joins_shards_and_refuses_what_does_not_belong(tmp_path: Path) -> None:
    run = make_run()
    half = len(run.entries) // 2
    a, b = sharded(run, "1/2", slice(0, half)), sharded(run, "2/2", slice(half, None))
    merged = merge_runs({"a": a, "b": b})
    assert merged.entries == run.entries and merged.meta.shard == ""
    with pytest.raises(ResultError, match=r"missing shard\(s\) 2/2 of 2"):
        merge_runs({"a": a})
    assert merge_runs({"a": a}, partial=True).entries == a.entries
    with pytest.raises(ResultError, match=r"shard 1/2 given twice: a and c"):
        merge_runs({"a": a, "c": a, "b": b})
    overlap = sharded(run, "2/2", slice(half - 1, None))
    with pytest.raises(ResultError, match=r"is in two shards: a and o"):
        merge_runs({"a": a, "o": overlap})
    other = Run(dataclasses.replace(b.meta, profile="full"), {}, {"id": "abc"}, b.entries)
    with pytest.raises(ResultError, match=r"shards of different profile: a: quick, x: full"):
        merge_runs({"a": a, "x": other})
    moved = Run(b.meta, {}, {"id": "def"}, b.entries)
    with pytest.raises(ResultError, match=r"shards of different commits"):
        merge_runs({"a": a, "m": moved})
    with pytest.raises(ResultError, match=r"not the results of a shard"):
        merge_runs({"a": a, "w": run})
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(dump_run(r))
    out = tmp_path / "merged.json"
    shard_files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert main(["merge", *shard_files, "-o", str(out)]) == 0
    assert load_run(out).entries == run.entries
    before = out.read_bytes()
    assert main(["merge", *shard_files, "-o", str(out)]) == 2
    assert out.read_bytes() == before  # not replaced without --force
    assert main(["merge", str(tmp_path / "a.json"), "-o", str(tmp_path / "a.json")]) == 2


def test_merge_refuses_bad_shards_and_says_a_partial_merge_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run()
    half = len(run.entries) // 2
    a, c = sharded(run, "1/3", slice(0, half)), sharded(run, "3/3", slice(half, None))
    files = {}
    for name, r in (("a", a), ("c", c)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(dump_run(r))
    for bad in ("x/y", "5/2", "0/2"):  # a shard field no run of --lora-shard writes
        path = tmp_path / f"bad-{bad.replace('/', '-')}.json"
        path.write_text(dump_run(a).replace('"shard": "1/3"', f'"shard": "{bad}"'))
        assert main(["merge", str(path), str(files["c"]), "-o", str(tmp_path / "m.json"),
                     "--partial"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "shard" in err, err
    assert main(["merge", str(files["a"]), str(files["a"]), "-o", str(tmp_path / "m.json")]) == 2
    assert "given twice" in capsys.readouterr().err
    out = tmp_path / "partial.json"
    assert main(["merge", str(files["a"]), str(files["c"]), "-o", str(out), "--partial"]) == 0
    assert "partial: shard(s) 2/3 missing" in capsys.readouterr().out
    merged = load_run(out)
    assert merged.meta.missing_shards == ["2/3"]
    assert main(["report", str(out)]) == 0
    assert "- partial: merged without shard(s) 2/3" in capsys.readouterr().out
    assert not list(tmp_path.glob("m.json"))


SELECTION = ["-k", "test_params or test_multi"]  # two files of the tiny profile: seconds
TINY = ["--lora-profile", "tiny", "--lora-threads", "1"]


def bench(out: Path, *extra: str) -> Run:
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "bench", "--benchmark-only", "-q",
           "-p", "no:cacheprovider", *TINY, "--lora-device", "cpu", "--lora-results", str(out),
           *SELECTION, *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_run(out / "cpu-tiny.json")


def ids(run: Run) -> list[str]:
    return sorted(f"{e.kind} {getattr(e, 'fullname', '')} {getattr(e, 'mode', '')}"
                  for e in run.entries)  # fmt: skip


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The selection's unsharded run."""
    return bench(tmp_path_factory.mktemp("whole"))


def test_two_shards_merged_hold_the_unsharded_entries(whole: Run, tmp_path: Path) -> None:
    parts = {str(i): bench(tmp_path / f"s{i}", f"--lora-shard={i}/2") for i in (1, 2)}
    assert all(p.meta.shard_items for p in parts.values())
    assert not set(parts["1"].meta.shard_items) & set(parts["2"].meta.shard_items)
    assert parts["1"].meta.shard_of == parts["2"].meta.shard_of != ""
    merged = merge_runs(parts)
    assert ids(merged) == ids(whole) and len(whole.entries) > 20
    other = bench(tmp_path / "other", "--lora-shard=2/2", "-k", "not gpt2")  # another selection
    with pytest.raises(ResultError, match="shards cut from different sets of benchmarks"):
        merge_runs({"1": parts["1"], "other": other})


@pytest.fixture
def local_ray() -> Iterator[None]:
    """A local Ray instance for the test (2 CPUs, no dashboard), shut down after it."""
    ray = pytest.importorskip("ray", reason="Ray is missing: pip install 'lora-bench[cluster]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_a_sweep_on_ray_merged_holds_the_unsharded_entries(
    whole: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ROOT)
    outcomes: list[ShardOutcome] = []

    def seen(*args: Any) -> list[ShardOutcome]:
        outcomes.extend(on_ray(*args))
        return outcomes

    monkeypatch.setattr(sweep_module, "on_ray", seen)
    sweep = ["sweep", "--ray", "--shards", "3", *[a.replace("--lora-", "--") for a in TINY]]
    assert main([*sweep, "--results", str(tmp_path), "--", *SELECTION]) == 0
    merged = load_run(tmp_path / "cpu-tiny.json")
    assert ids(merged) == ids(whole) and merged.meta.shard == ""
    parts = [load_run(tmp_path / "shards" / f"{i}-of-3" / "cpu-tiny.json") for i in (1, 2, 3)]
    assert sorted(n for p in parts for n in p.meta.shard_items) == sorted(
        n for p in parts for n in set(p.meta.shard_items))  # fmt: skip
    spans = sorted((o.started, o.ended) for o in outcomes)
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    out = capsys.readouterr().out
    assert "3 shard(s) on 1 node(s), one at a time each" in out and "shard 3/3 on" in out
    assert (tmp_path / "cpu-tiny.md").read_text().startswith("# lora-bench results")
    # again, over what is there: refused before any shard starts
    assert main([*sweep, "--results", str(tmp_path), "--", *SELECTION]) == 2
    assert "cpu-tiny.json exists; pass --force to replace it" in capsys.readouterr().err
    # a plugin that does not load: refused here, before Ray runs anything
    bad = tmp_path / "bad"
    broken = ["--impl", "no_such_module:IMPL"]
    assert main([*sweep, *broken, "--results", str(bad), "--", *SELECTION]) == 2
    err = capsys.readouterr().err
    assert "refused here, so no shard started" in err and "no_such_module" in err
    assert not bad.exists()
    # every shard fails (the nodes cannot load a plugin this machine can): each is named,
    # nothing merged
    late = ["--impl", "tests/shard_only_plugin.py:IMPLS"]
    assert main([*sweep, *late, "--results", str(bad), "--", *SELECTION]) == 1
    captured = capsys.readouterr()
    assert "shard(s) 1/3, 2/3, 3/3 of 3 failed" in captured.err
    assert "FAILED (exit 4)" in captured.out and "loads only under --collect-only" in captured.out
    assert not (bad / "cpu-tiny.json").exists()


def test_a_sweep_refuses_bad_input_in_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["sweep", "--shards", "2"])
    assert "the following arguments are required: --ray" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["sweep", "--ray", "--shards", "0"])
    assert "--shards: '0': must be a whole number in [1, 2147483647]" in capsys.readouterr().err
    pytest.importorskip("ray", reason="Ray is missing: pip install 'lora-bench[cluster]'")
    results = tmp_path / "r"
    only = ["sweep", "--ray", "--shards", "2", "--profile", "tiny", "--results", str(results)]
    assert main([*only, "--only", "no such case"]) == 2
    err = capsys.readouterr().err
    assert "--lora-only 'no such case': no such case in profile 'tiny'" in err
    assert err.count("\n") == 1 and not results.exists()


def sweep_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bench.cli.main", "sweep", "--shards", "2", "--profile", "tiny",
           *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("answers", [False, True])
def test_a_sweep_gives_up_on_an_address_without_a_cluster(tmp_path: Path, answers: bool) -> None:
    """Nothing listens there: refused at once. Something listens and never speaks Ray: given
    up after --connect-timeout. One line on stderr either way, nothing made."""
    pytest.importorskip("ray", reason="Ray is missing: pip install 'lora-bench[cluster]'")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if answers:
            listener.listen()
        else:
            listener.close()
        start = time.monotonic()
        here = tmp_path / "here"
        here.mkdir()
        proc = sweep_cli("--ray", f"127.0.0.1:{port}", "--connect-timeout", "3",
                         "--results", str(tmp_path / "r"), cwd=here)  # fmt: skip
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"--ray 127.0.0.1:{port}" in proc.stderr, proc.stderr
    said = "did not connect within 3 s" if answers else "no Ray cluster answers"
    assert said in proc.stderr and took < 60
    assert not (tmp_path / "r").exists()
    assert not list(here.iterdir()), "the option check made pytest-benchmark's folder here"


def test_a_sweep_without_ray_says_which_extra_brings_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # importing it raises ImportError
    assert main(["sweep", "--ray", "--shards", "2", "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "needs Ray: pip install 'lora-bench[cluster]'" in err and not (tmp_path / "r").exists()


def test_a_shard_out_of_range_is_refused_in_one_line() -> None:
    cmd = [sys.executable, "-m", "pytest", "bench/test_params.py", "--benchmark-only", "-q",
           "-p", "no:cacheprovider", "--lora-profile", "tiny", "--lora-shard", "3/2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4  # pytest's usage error
    assert "shard 3/2: i must be in 1..N (N = 2), got 3" in proc.stderr
