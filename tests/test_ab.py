"""lora-bench ab: choosing what to compare, the A/B results file and its tables, the git side,
and whole runs on a scratch repository (a broken impl, bad input)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.gates import gitref
from bench.gates.ab import SIDE_ENV, Options, Progress, SideProcess, compare_item
from bench.gates.plan import Item, match_cases, select
from bench.report.ab import ab_markdown, time_row
from bench.report.base import fmt_seconds
from bench.schema.ab import AbMemory, AbMeta, AbProblem, AbRun, AbTime, dump_ab, load_ab
from bench.schema.io import ResultError
from bench.stats.verdicts import NOT_JUDGED

ROOT = Path(__file__).resolve().parents[1]


def plan_case(case_id: str, memory: bool = False, skip: str | None = None) -> dict:
    shape, tokens, rank, dtype, device = case_id.split()
    return {
        "id": case_id,
        "key": case_id.rsplit(" ", 1)[0],
        "fields": {"shape": shape, "tokens": int(tokens[2:]), "rank": int(rank[2:]),
                   "dtype": dtype, "device": device},
        "copies": {"infer": 1, "train": 2},
        "flops": {"infer": 10**9, "train": 3 * 10**9},
        "memory": memory,
        "skip": skip,
    }  # fmt: skip


CASES = [plan_case("toy T=16 r=4 fp32 cpu"), plan_case("gpt2.c_attn T=16 r=16 fp32 cpu"),
         plan_case("gpt2-medium.c_proj T=2048 r=8 fp32 cpu")]  # fmt: skip


def impl(
    name: str,
    origin: str = "ours",
    modes: tuple[str, ...] = ("infer", "train"),
    unavailable: str | None = None,
    devices: tuple[str, ...] = ("cpu", "cuda"),
) -> dict:
    """An impl as a side's hello lists it."""
    return {
        "name": name,
        "origin": origin,
        "devices": list(devices),
        "dtypes": ["fp32"],
        "modes": list(modes),
        "unavailable": unavailable,
    }


def test_match_cases_by_prefix_or_glob() -> None:
    assert [c["id"] for c in match_cases(CASES, ("gpt2",))] == [c["id"] for c in CASES[1:]]
    assert len(match_cases(CASES, ("gpt2.*", "toy"))) == 2
    assert match_cases(CASES, ()) == CASES
    with pytest.raises(ResultError, match="matches none of the profile's: toy T=16"):
        match_cases(CASES, ("llama",))


def test_select_lists_one_sided_impls_and_modes() -> None:
    base = {
        i["name"]: i
        for i in [
            impl("base"),
            impl("addmm"),
            impl("old"),
            impl("merged", modes=("infer",)),
            impl("peft", "peer"),
        ]
    }
    gpu = impl("gpu", devices=("cuda",))
    cur = {i["name"]: i for i in [impl("base"), impl("addmm"), impl("new"), impl("merged"),
                                   impl("peft", "peer"), gpu]}  # fmt: skip
    sel = select(CASES[:1], {"base": base, "current": cur}, "cpu", ())
    assert [(i.impl, i.mode) for i in sel.items] == [
        ("base", "infer"), ("base", "train"), ("addmm", "infer"), ("addmm", "train"),
        ("merged", "infer"),
    ]  # fmt: skip
    assert sel.only_current == ["new", "merged train", "gpu"]
    assert sel.only_base == ["old"]
    peers = select(CASES[:1], {"base": base, "current": cur}, "cpu", ("peft",))
    assert {i.impl for i in peers.items} == {"peft", "base"}, "base comes: the A/A control"
    with pytest.raises(ResultError, match="--impls nope: on neither side; known: base, addmm"):
        select(CASES, {"base": base, "current": cur}, "cpu", ("nope",))


def test_select_records_what_cannot_run() -> None:
    both = {"base": {"tri": impl("tri", unavailable="triton is not installed")},
            "current": {"tri": impl("tri", unavailable="triton is not installed")}}  # fmt: skip
    sel = select(CASES[:1], both, "cpu", ())
    assert not sel.items
    assert {p.message for p in sel.skipped} == {"triton is not installed"}
    half = [plan_case("toy T=16 r=4 bf16 cpu", skip="bf16 is slow here")]
    sides = {"base": {"base": impl("base")}, "current": {"base": impl("base")}}
    assert [p.outcome for p in select(half, sides, "cpu", ()).skipped] == ["skipped"] * 2


def test_progress_estimates_the_time_left() -> None:
    class Stream(list):
        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    stream = Stream()
    progress = Progress([1.0, 1.0, 2.0], stream)
    progress.show(0, "toy · base infer")
    progress.start -= 10  # as if the first comparison took 10 s
    progress.show(1, "toy · addmm infer")
    progress.finish()
    assert stream[0] == "ab [1/3] toy · base infer · …\n"
    assert stream[1] == "ab [2/3] toy · addmm infer · about 30s left\n"
    assert stream[2].startswith("ab: 3 comparisons in 10s")


def ab_run(slower: float = 1.0, peak: int = 2**20) -> AbRun:
    """An A/B run with one time entry (current `slower` times the base), one memory entry
    (current `peak` bytes against 1 MiB) and one problem of each kind that matters."""
    base_s = [1e-3 * (1 + 0.002 * (i % 5)) for i in range(21)]
    cur_s = [s * slower * (1 + 0.001 * (i % 3)) for i, s in enumerate(base_s)]
    meta = AbMeta(
        base_ref="HEAD~1", base_commit="a" * 40, current_commit="b" * 40, current_dirty=True,
        device="cpu", profile="quick", threads=2, cache="cold", torch="2.13.0",
        created="2026-01-01T00:00:00+00:00", seconds=2.0, threshold=0.1, alpha=0.01,
        memory_rel=0.05, memory_mib=1.0, cases=["gpt2"], impls=[], only_base=["old"],
        only_current=["new", "merged train"], wall_s=61.0,
    )  # fmt: skip
    case = "gpt2.c_attn T=16 r=16 fp32 cpu"
    entries = [
        AbTime(case, case[:-4], "addmm", "infer", 3, 1, base_s, cur_s, 1e-7, 1e-7),
        AbMemory(case, case[:-4], "addmm", "infer", "rss", 2**20, peak),
        AbProblem(case, "compiled", "train", "base", "error", "boom"),
        AbProblem("*", "triton_fused", "infer", "current", "skipped", "CUDA only"),
    ]
    return AbRun(meta, entries)


def test_ab_results_round_trip(tmp_path: Path) -> None:
    run = ab_run(1.2)
    path = tmp_path / "ab.json"
    path.write_text(dump_ab(run))
    assert load_ab(path) == run
    data = json.loads(path.read_text())
    assert data["entries"][0]["ratio"] == pytest.approx(1.2, rel=0.01)
    assert (
        data["entries"][0]["ci_low"] <= data["entries"][0]["ratio"] <= data["entries"][0]["ci_high"]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "not an A/B file"),
        ('{"lora_bench_ab": {"schema": 99}}', "A/B schema 99"),
        ('{"lora_bench_ab": {"schema": 1}, "entries": [{"kind": "x"}]}', "kind 'x'"),
    ],
)
def test_load_ab_refuses_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ab.json"
    path.write_text(text)
    with pytest.raises(ResultError, match=message):
        load_ab(path)
    with pytest.raises(ResultError, match="no such A/B results file"):
        load_ab(tmp_path / "missing.json")


def test_verdicts_and_tables() -> None:
    same = ab_run(1.02)
    assert same.regressions() == []
    text = ab_markdown(same)
    assert "against HEAD~1 (aaaaaaaaaa)" in text and "with uncommitted changes" in text
    assert "Only on the base side (not compared): old." in text
    assert "Only on the current side (not compared): new, merged train." in text
    assert "### Not compared" in text and "CUDA only" in text and "boom" in text
    assert "1 time and 1 memory comparisons in 1.0 min: 0 regression(s)" in text
    slow = ab_run(1.2, peak=3 * 2**20)
    assert [type(e).__name__ for e in slow.regressions()] == ["AbTime", "AbMemory"]
    text = ab_markdown(slow)
    assert "### Regressions: time" in text and "### Regressions: peak memory" in text
    assert "+2.0 MiB (+200.0%)" in text
    fast = ab_run(0.8)
    assert "### Improvements: time" in ab_markdown(fast) and fast.regressions() == []
    wrong = AbProblem("c", "addmm", "infer", "current", "not equivalent", "rel error 1")
    broken = replace(same, entries=[*same.entries, wrong])
    assert len(broken.regressions()) == 1
    assert "### Failures on the current side" in ab_markdown(broken)


# --- whole runs on a scratch repository --------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project in git: a first commit without the plugin interface, then one
    with it (HEAD)."""
    root = tmp_path_factory.mktemp("ab-repo")
    for name in ("bench", "lora_kernels"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root)
    git(root, "init", "-q")
    plugins = root / "lora_kernels" / "plugins.py"
    text = plugins.read_text()
    plugins.unlink()
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "before plugins")
    plugins.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "plugins")
    return root


def ab(repo: Path, *args: str) -> int:
    return main(["ab", *args, "--project", str(repo), "--profile", "tiny", "--threads", "1"])


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope", "unknown git ref 'nope'"),
        ("HEAD~1", "predates the plugin interface (lora_kernels/plugins.py)"),
    ],
)
def test_unusable_refs_exit_2(
    repo: Path, ref: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ab(repo, ref) == 2
    assert message in capsys.readouterr().err


def test_a_ref_is_never_an_option(repo: Path) -> None:
    with pytest.raises(ResultError, match="'--all' is not a git ref"):
        gitref.resolve(repo, "--all")


def test_not_a_checkout_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ab", "HEAD", "--project", str(tmp_path)]) == 2
    assert "ab runs each side in a lora-bench source checkout" in capsys.readouterr().err


def test_a_broken_impl_fails_the_gate(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The working tree's addmm drops its adapter: the current side fails the oracle check,
    base still times on both sides (with its rounds paired) and memory is measured."""
    eager = repo / "lora_kernels" / "impls" / "eager.py"
    original = eager.read_text()
    broken = original.replace("alpha=w.scale)  # y += s", "alpha=0.0)  # y += s")
    assert broken != original
    eager.write_text(broken)
    try:
        assert ab(repo, "HEAD", "--require-clean") == 2
        assert "uncommitted changes: lora_kernels/impls/eager.py" in capsys.readouterr().err
        out_json = tmp_path / "ab.json"
        code = ab(repo, "HEAD", "--cases", "toy T=16", "--impls", "base,addmm",
                  "--seconds", "0.05", "--json", str(out_json))  # fmt: skip
    finally:
        eager.write_text(original)
    out = capsys.readouterr().out
    assert code == 1
    assert "### Failures on the current side" in out
    run = load_ab(out_json)
    assert run.meta.current_dirty
    fails = [p for p in run.of(AbProblem) if p.fails]
    assert [(p.impl, p.mode, p.outcome) for p in fails] == [
        ("addmm", "infer", "not equivalent"), ("addmm", "train", "not equivalent")
    ]  # fmt: skip
    times = run.of(AbTime)
    # first attempts; a base that read as changed under load is timed again (attempt >= 1)
    firsts = [(t.impl, t.mode) for t in times if t.attempt == 0]
    assert firsts == [("base", "infer"), ("base", "train")]
    assert {(t.impl, t.mode) for t in times} == set(firsts)
    for t in times:
        assert len(t.base_s) == len(t.current_s) >= 15
        assert t.ratio > 0  # computed; how fast is the machine's business
    assert {(m.impl, m.mode) for m in run.of(AbMemory)} == {("base", "infer"), ("base", "train")}


def test_a_change_counts_only_when_every_attempt_shows_it() -> None:
    run = ab_run(1.2)
    first = run.of(AbTime)[0]
    slow_again = replace(first, current_s=[s * 1.01 for s in first.current_s], attempt=1)
    confirmed = replace(run, entries=[*run.entries, slow_again])
    assert confirmed.verdict(confirmed.times()[0]) == "regression"
    assert confirmed.times() == [first]  # the attempt nearest 1 is shown
    assert "regression (attempts: 1.201, 1.213)" in ab_markdown(confirmed)
    fast_again = replace(first, current_s=[s / 1.44 for s in first.current_s], attempt=1)
    flipped = replace(run, entries=[*run.entries, fast_again])
    assert flipped.verdict(flipped.times()[0]) == "same"  # 1.2 then 0.83: noise, not a change
    assert flipped.regressions() == []


def test_the_cli_names_the_bench_profiles_and_dtypes() -> None:
    """ab's options are named without torch; they must stay the bench's."""
    from bench.cli import ab as ab_cli
    from bench.harness.cases import DTYPES, PROFILES
    from bench.harness.session import DEFAULT_DTYPES

    assert tuple(PROFILES) == ab_cli.PROFILES
    assert set(ab_cli.DTYPES) == set(DTYPES)
    assert {d: v.split(",") for d, v in ab_cli.DEFAULT_DTYPES.items()} == DEFAULT_DTYPES


OLDEST_KERNELS = "09cf713"  # the first commit with the plugin interface: the oldest ab accepts


def test_the_base_side_imports_only_the_base_commits_kernels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The base commit's kernels lack lora_kernels.dora, .multi and .numerics, which the
    installed copy has: the base side must run on its own kernels, not borrow those."""
    try:
        archive = subprocess.run(["git", "archive", OLDEST_KERNELS, "lora_kernels"], cwd=ROOT,
                                 check=True, capture_output=True).stdout  # fmt: skip
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip(f"this checkout lacks commit {OLDEST_KERNELS} (a shallow clone?)")
    for name in ("bench", "lora_kernels"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    git(tmp_path, "init", "-q")
    current = tmp_path.parent / f"{tmp_path.name}-current"
    shutil.move(tmp_path / "lora_kernels", current)
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    assert not (tmp_path / "lora_kernels" / "dora").exists()
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "old kernels")
    shutil.rmtree(tmp_path / "lora_kernels")
    shutil.move(current, tmp_path / "lora_kernels")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "current kernels")
    out_json = tmp_path / "ab.json"
    code = ab(tmp_path, "HEAD~1", "--cases", "toy T=16", "--impls", "addmm", "--seconds", "0.05",
              "--rechecks", "0", "--json", str(out_json))  # fmt: skip
    out = capsys.readouterr().out
    run = load_ab(out_json)
    assert [p.message for p in run.of(AbProblem)] == [], out
    assert code in (0, 1), out  # 1: a timing verdict, which 0.05 s of rounds may give
    wanted = {(impl, mode) for impl in ("addmm", "base") for mode in ("infer", "train")}
    assert {(t.impl, t.mode) for t in run.of(AbTime)} == wanted, "base too: the A/A control"
    assert {(m.impl, m.mode) for m in run.of(AbMemory)} == wanted
    assert run.meta.control, "base's code is the same in both commits"


class FakeSide:
    """A side whose op takes `op_s`, except right after the other side ran: then `penalty`
    times as long (the other side's idle threads still hold a core)."""

    def __init__(self, name: str, op_s: float, log: list[str], penalty: float = 2.0) -> None:
        self.name, self.op_s, self.log, self.penalty = name, op_s, log, penalty

    def ask(self, op: str, **request: object) -> dict:
        self.send(op, **request)
        return self.receive()

    def send(self, op: str, **request: object) -> None:
        self.op = op

    def receive(self) -> dict:
        if self.op == "setup":
            return {"rel_error": 1e-7, "build_s": 0.0, "copied_output": False}
        if self.op == "warm":
            return {"per_call_s": self.op_s}
        after_other = bool(self.log) and self.log[-1] != self.name
        self.log.append(self.name)
        return {"s": self.op_s * (self.penalty if after_other else 1.0)}


def test_abba_quads_cancel_what_the_side_before_leaves_behind() -> None:
    """Whichever side runs second in a pair is twice as slow: base-first pairs would read 2.0;
    quads of base, current, current, base read the true 1.0, and stop once that is sure."""
    log: list[str] = []
    sides = {"base": FakeSide("base", 1e-3, log), "current": FakeSide("current", 1e-3, log)}
    item = Item(CASES[0], "addmm", "infer")
    opts = Options("HEAD", ROOT, memory=False, seconds=60.0)
    (entry,) = compare_item(sides, item, opts)  # type: ignore[arg-type]
    assert isinstance(entry, AbTime) and entry.order == "abba"
    assert log[:8] == ["base", "current", "current", "base"] * 2
    assert entry.ratio == pytest.approx(1.0) and entry.stopped == "sure"
    assert len(entry.base_s) == 2 * opts.min_quads
    slower = {"base": FakeSide("base", 1e-3, []), "current": FakeSide("current", 1.06e-3, [])}
    slower["base"].log = slower["current"].log  # one machine, one log
    (entry,) = compare_item(slower, item, opts)  # type: ignore[arg-type]
    assert entry.ratio == pytest.approx(1.06)
    assert entry.status(0.05, 0.01) == "regression"  # type: ignore[union-attr]


def test_abba_entries_pair_each_quad_s_rounds_and_round_trip(tmp_path: Path) -> None:
    case = "gpt2.c_attn T=16 r=16 fp32 cpu"
    base_s = [1.0e-3, 1.2e-3] * 5  # each quad: base first (1.0), then base second (1.2)
    cur_s = [1.2e-3 * 1.05, 1.0e-3 * 1.05] * 5  # current second, then first: 5% slower
    e = AbTime(case, case[:-4], "addmm", "infer", 1, 1, base_s, cur_s, 1e-7, 1e-7, 0,
               "sure", "abba")  # fmt: skip
    assert e.blocks()[1] == pytest.approx([2.2e-3] * 5)
    assert e.ratio == pytest.approx(1.05)  # the position effect cancels within each quad
    with pytest.raises(ValueError, match="even number of rounds"):
        replace(e, base_s=base_s[:-1], current_s=cur_s[:-1])
    run = replace(ab_run(), entries=[e])
    path = tmp_path / "ab.json"
    path.write_text(dump_ab(run))
    assert load_ab(path).entries == [e]


def test_the_sides_start_with_the_spin_and_malloc_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, str] = {}

    class Popen:
        def __init__(self, cmd: list[str], **kwargs: object) -> None:
            seen.update(kwargs["env"])  # type: ignore[arg-type]
            self.stdin = self.stdout = object()

    monkeypatch.setattr(subprocess, "Popen", Popen)
    with open(tmp_path / "log", "w+", encoding="utf-8") as log:
        SideProcess("base", tmp_path, Options("HEAD", ROOT), log)
    assert {k: seen[k] for k in SIDE_ENV} == SIDE_ENV
    assert SIDE_ENV["GOMP_SPINCOUNT"] == "10000"


def test_a_comparison_too_noisy_to_tell_the_threshold_is_called_unresolved() -> None:
    case = "gpt2.c_attn T=16 r=16 fp32 cpu"
    noisy = [1e-3 * (1 + 0.3 * (i % 3)) for i in range(12)]
    e = AbTime(case, case[:-4], "addmm", "infer", 1, 1, noisy, noisy[::-1], 1e-7, 1e-7)
    run = replace(ab_run(), entries=[e])
    assert not e.resolves(0.10) and run.unresolved() == [e] and run.regressions() == []
    text = ab_markdown(run)
    assert "same (unresolved)" in text and "1 time comparison(s) unresolved" in text
    assert ab_run(1.02).unresolved() == []


def test_a_case_whose_a_a_control_is_off_is_not_judged() -> None:
    """base, the same code on both sides, read 1.2x across the two processes at one case:
    addmm's 1.2x there is not called a regression, and the header says why."""
    run = ab_run(1.2)
    (slow,) = run.of(AbTime)
    control = replace(slow, impl="base")
    both = replace(run, entries=[*run.entries, control], meta=replace(run.meta, control=True))
    assert both.verdict(slow) == NOT_JUDGED and both.verdict(control) == "regression"
    assert [e.impl for e in both.regressions() if isinstance(e, AbTime)] == ["base"]
    text = ab_markdown(both)
    assert "not judged (A/A control off)" in text and "1 change(s) not judged" in text
    assert f"Past 5% at {slow.case} infer: changes there are not judged." in text
    steady = replace(control, current_s=control.base_s)
    fine = replace(both, entries=[*run.entries, steady])
    assert fine.verdict(slow) == "regression"
    assert "A/A control (base, the same code on both sides): 1 cases" in ab_markdown(fine)
    changed = replace(both, meta=replace(run.meta, control=False))
    assert changed.controls() == {} and changed.verdict(slow) == "regression"
    assert "No A/A control: base's code differs" in ab_markdown(changed)


def test_the_table_s_times_agree_with_the_ratio_whatever_the_rounds_levels() -> None:
    """Quads whose level moved (both sides alike): 11 quads at 3.5 ms a round, 10 at 0.2 ms,
    with base's extra slow round landing its median high and current's low. The table once
    showed base 3.48 ms beside current 210 µs and a ratio of 0.97; current's time is now
    base's times the ratio."""
    slow, fast = 3.5e-3, 0.2e-3
    levels = [slow] * 11 + [fast] * 10  # per quad
    base_s = [t for level in levels for t in (level, level)]
    current_s = [0.97 * t for t in base_s]
    current_s[20], current_s[21] = 0.97 * fast, 0.97 * fast  # one slow quad of current's fast
    base_s[20] = base_s[21] = slow
    case = "toy T=16 r=4 fp32 cpu"
    e = AbTime(case, case[:-4], "addmm", "train", 1, 1, base_s, current_s, 1e-7, 1e-7,
               order="abba")  # fmt: skip
    assert statistics.median(e.base_s) / statistics.median(e.current_s) > 10  # the trap
    row = time_row(e, "same", [e], 0.05)
    base, current, ratio = row[3], row[4], float(str(row[5]).split()[0])
    assert base == "3.50 ms" and ratio == pytest.approx(0.97, abs=0.01)
    assert current == fmt_seconds(3.5e-3 * e.ratio)
