"""The refusal matrix, generated from the parsers: every `lora-bench` subcommand's options and
arguments, and every `--lora-*` option of the pytest plugin, are given the bad values of their
kind (0, -1, nan, inf, a huge number, empty, the wrong type; for paths a file where a folder is
wanted and the reverse, a read-only place, an input given as output). Each must be refused
with exit 2 (4 under plain pytest), one line on stderr, no traceback and nothing created; or be
listed in ACCEPTED with why it is a value the option takes. An option the parsers gain is in
the matrix the moment it exists: one that takes free text or a path fails `test_every_option_
has_a_kind` until KINDS says which it is."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runs import make_run, run_json

from bench.cli.main import parser
from bench.plugin.options import OPTIONS, text
from bench.schema.run import dump_run

ROOT = Path(__file__).resolve().parents[1]
READ_ONLY = "/proc/lora-bench-refusals"  # no one, root included, makes a file there

NUMBER = ["0", "-1", "nan", "inf", "1e400", "1e12", "", "x"]  # as the command line gives them
WHOLE = [*NUMBER, "1.5", "1000000000000"]
SHARD = ["0/2", "3/2", "x/y", "1/0", "", "2"]
CHOICE = ["nope", ""]
TEXT = [""]
PATH_IN = ["{missing}", "{folder}", "{empty}", "{not_json}", "{other_json}"]
PATH_OUT = ["{folder}", "{blocked}", READ_ONLY + "/out.json", "{input}"]
FOLDER_OUT = ["{a_file}", "{blocked}", READ_ONLY + "/out"]
FOLDER_IN = ["{a_file}", "{missing}"]

# (command, dest) of options and arguments that take text or a path: their kind. The typed
# ones (a type function, choices) are classified from the parser itself.
KINDS: dict[tuple[str, str], list[str]] = {
    **{(c, d): PATH_IN for c, d in [
        ("report", "result"), ("compare", "a"), ("compare", "b"), ("agree", "first"),
        ("agree", "second"), ("check", "baseline"), ("check", "current"), ("plot", "results"),
        ("baseline", "result"), ("export", "result"), ("merge", "shards")]},
    **{(c, d): PATH_OUT for c, d in [
        ("compare", "output"), ("agree", "output"), ("export", "output"), ("merge", "output"),
        ("report", "output"),
        ("ab", "json"), ("ab", "markdown")]},
    **{(c, d): FOLDER_OUT for c, d in [
        ("plot", "output"), ("baseline", "dir"), ("profile", "output"), ("model", "output"),
        ("run", "lora_results"),
        ("run", "lora_trace"), ("sweep", "lora_results"), ("docs", "site")]},
    **{(c, d): FOLDER_IN for c, d in [("check", "project"), ("ab", "project"),
                                      ("model", "adapter"), ("docs", "root")]},
    ("model", "model"): [*TEXT, "nope", "{missing}", "{empty}", "{not_json}", "{other_json}",
                         "{a_file}", "{folder}"],
    **{(c, d): NUMBER for c, d in [
        ("check", "max_slowdown"), ("check", "alpha"), ("check", "max_memory_growth"),
        ("ab", "max_slowdown"), ("ab", "alpha"), ("ab", "max_memory_growth"),
        ("plan", "rank")]},
    **{(c, d): [*TEXT, "nope"] for c, d in [
        ("ab", "base_ref"), ("ab", "cases"), ("ab", "impls"), ("ab", "dtype"), ("ab", "impl"),
        ("plan", "model"), ("plan", "targets"), ("impls", "impl"), ("verify", "name"),
        ("verify", "impl"), ("profile", "case"), ("profile", "impl"), ("run", "lora_dtype"),
        ("run", "lora_only"), ("run", "lora_impl"), ("check", "ignore"), ("sweep", "ray"),
        ("sweep", "lora_dtype"), ("sweep", "lora_only"), ("sweep", "lora_impl"),
        ("model", "targets")]},
}  # fmt: skip

# (command, dest, value) the option takes, and why.
ACCEPTED: dict[tuple[str, str, str], str] = {
    **{(c, "memory_mib", "0"): "0 MiB: growth past the relative margin alone" for c in
       ("check", "ab")},
    **{(c, "memory_mib", "1e12"): "a margin no peak reaches: memory not gated" for c in
       ("check", "ab")},
    ("ab", "rechecks", "0"): "no recheck: the first attempt decides",
    ("ab", "rechecks", "1000000000000"): "rechecks stop once an attempt clears the change",
    **{(c, "seconds", "1e12"): "a budget in seconds: rounds stop when sure first" for c in
       ("ab", "run", "profile", "sweep")},
    **{(c, "lora_seconds", "1e12"): "as --seconds" for c in ("run", "sweep")},
    **{(c, "lora_deadline", "1e12"): "a deadline no run reaches" for c in ("run", "sweep")},
    ("sweep", "connect_timeout", "1e12"): "wait as long as Ray takes",
    ("plan", "tokens", "1000000000000"): "arithmetic only: a planner answers for any length",
    ("model", "alpha", "1e12"): "any alpha > 0 scales the adapter",
    ("model", "seconds", "1e12"): "a budget in seconds: rounds stop when sure first",
    ("plan", "alpha", "1e12"): "any alpha > 0 scales the adapter",
    ("plan", "rank", "1e12"): "refused per target with the limit; the preset decides",
    ("ab", "base_ref", "nope"): "refused by git inside ab: not reached here (run_ab stubbed)",
    ("ab", "cases", "nope"): "matched against the side's cases inside ab (stubbed)",
    ("ab", "impls", "nope"): "matched against the sides' impls inside ab (stubbed)",
    ("ab", "impl", "nope"): "loaded by each side inside ab (stubbed)",
    ("check", "ignore", ""): "ignoring no impl changes nothing",
    **{("ab", o, "{input}"): "ab reads no results file: its outputs are new files, as named"
       for o in ("json", "markdown")},
    ("check", "ignore", "nope"): "an impl the runs do not have is ignored as asked",
}  # fmt: skip

# The first call of each command past its checks: stubbed, so a value the command accepts is
# seen as reached, not run.
WORK = {
    "run": ("bench.cli.run", "subprocess"),
    "ab": ("bench.cli.ab", "run_ab"),
    "profile": ("bench.harness.allocator", "fix_malloc"),
    "verify": ("lora_kernels.conformance", "verify"),
    "sweep": ("bench.cli.sweep", "connect"),
    "docs": ("bench.cli.docs", "stale_blocks"),
}

BASE: dict[str, list[str]] = {
    "report": ["report", "{run}"],
    "compare": ["compare", "{run}", "{run2}"],
    "agree": ["agree", "{run}", "{run2}"],
    "check": ["check", "{run}", "{run2}"],
    "plot": ["plot", "{run}", "-o", "{out}/plots"],
    "baseline": ["baseline", "{run}", "--dir", "{out}/base"],
    "ab": ["ab", "HEAD", "--project", str(ROOT)],
    "plan": ["plan", "gpt2", "--targets", "attn"],
    "export": ["export", "{run}", "--format", "github-action-benchmark"],
    "impls": ["impls"],
    "verify": ["verify", "two_step"],
    "profile": ["profile", "toy", "--tokens", "4", "--rank", "2", "-o", "{out}/p"],
    "model": ["model", "llama-tiny", "-o", "{out}/model"],
    "run": ["run", "--profile", "tiny", "--results", "{out}/r"],
    "merge": ["merge", "{shard1}", "{shard2}", "-o", "{out}/m.json"],
    "sweep": ["sweep", "--ray", "--shards", "2", "--profile", "tiny", "--results", "{out}/s"],
    "docs": ["docs", "--check", "--root", str(ROOT)],
}


SECOND = {("compare", "b"), ("agree", "second"), ("check", "current")}  # the others are first
PYTEST_CHECKS = ("lora_dtype", "lora_only", "lora_impl", "lora_trace")  # checked by the plugin


class ReachedError(Exception):
    """A command went past its checks into its work: the value was accepted."""


@dataclass(frozen=True)
class Case:
    command: str
    dest: str
    flag: str  # "" for a positional argument
    value: str

    @property
    def id(self) -> str:
        return f"{self.command} {self.flag or self.dest} {self.value!r}"


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _valued(sp: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for a in sp._actions:
        if not isinstance(a, argparse._HelpAction) and a.nargs != 0:
            yield a


def _bad_values(command: str, action: argparse.Action) -> list[str] | None:
    if action.choices:
        return CHOICE
    name = getattr(action.type, "__name__", "")
    if name in ("positive_int", "int"):
        return WHOLE
    if name in ("positive_number", "non_negative_number", "fraction", "float"):
        return NUMBER
    if name == "shard_option":
        return SHARD
    return KINDS.get((command, action.dest))


def _cases() -> list[Case]:
    out = []
    for command, sp in _commands().items():
        for action in _valued(sp):
            for value in _bad_values(command, action) or []:
                flag = action.option_strings[-1] if action.option_strings else ""
                out.append(Case(command, action.dest, flag, value))
    return out


def test_every_option_has_a_kind() -> None:
    """A new option that takes text or a path is in the matrix once KINDS names its kind."""
    missing = [f"{c} {a.option_strings or a.dest}" for c, sp in _commands().items()
               for a in _valued(sp) if _bad_values(c, a) is None]  # fmt: skip
    assert not missing, f"add these to KINDS with their kind: {missing}"
    stale = [k for k in KINDS if k[0] not in _commands()
             or k[1] not in {a.dest for a in _valued(_commands()[k[0]])}]  # fmt: skip
    assert not stale, f"KINDS names options that no longer exist: {stale}"


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Inputs in a folder of their own, the current folder empty, the work stubbed."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = {
        "run": make_run(), "run2": make_run(ratios={(k, "addmm"): 1.07 for k in ("x",)}),
    }  # fmt: skip
    paths = {name: inputs / f"{name}.json" for name in files}
    for name, run in files.items():
        paths[name].write_text(run_json(run))
    for i in (1, 2):
        shard = make_run()
        shard = type(shard)(
            type(shard.meta)(**{**shard.meta.__dict__, "shard": f"{i}/2"}),
            shard.machine_info, shard.commit_info, shard.entries[i - 1 :: 2],
        )  # fmt: skip
        paths[f"shard{i}"] = inputs / f"shard{i}.json"
        paths[f"shard{i}"].write_text(dump_run(shard))
    (inputs / "empty.json").write_text("")
    (inputs / "not.json").write_text("{")
    (inputs / "other.json").write_text("[]")
    (inputs / "a-file").write_text("mine")
    (inputs / "folder").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for module, name in WORK.values():
        target = __import__(module, fromlist=[name])

        def reached(*args: object, **kwargs: object) -> None:
            raise ReachedError

        if name == "subprocess":
            fake = type("Sub", (), {"run": staticmethod(reached)})
            monkeypatch.setattr(target, name, fake)
        else:
            monkeypatch.setattr(target, name, reached)
    return {
        **{k: str(v) for k, v in paths.items()},
        "out": str(work / "out"), "missing": str(inputs / "missing.json"),
        "folder": str(inputs / "folder"), "empty": str(inputs / "empty.json"),
        "not_json": str(inputs / "not.json"), "other_json": str(inputs / "other.json"),
        "a_file": str(inputs / "a-file"), "blocked": str(inputs / "a-file" / "x"),
        "root": str(tmp_path),
    }  # fmt: skip


def _argv(case: Case, where: dict[str, str]) -> list[str]:
    base = [a.format(**where) for a in BASE[case.command]]
    value = case.value.format(**where, input=where["run"])
    if not case.flag:  # a positional: it takes the place of the base's own
        second = (case.command, case.dest) in SECOND
        position = 2 if second else 1
        return [*base[:position], value, *base[position + 1 :]]
    if case.flag in base:  # replace the base's own value of it
        at = base.index(case.flag)
        return [*base[:at], f"{case.flag}={value}", *base[at + 2 :]]
    return [*base, f"{case.flag}={value}"]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                       if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_value_is_refused_in_one_line_changing_nothing(
    case: Case, sandbox: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli.main import main

    if case.command in ("run", "sweep") and case.dest in PYTEST_CHECKS:
        pytest.skip("checked by pytest itself, where run and sweep hand it on: see "
                    "test_plugin_options_refused_under_plain_pytest")  # fmt: skip
    if case.command == "plot":
        pytest.importorskip("matplotlib", reason="plot needs the plot extra")
    argv = _argv(case, sandbox)
    root = Path(sandbox["root"])
    before = _tree(root)
    accepted = ACCEPTED.get((case.command, case.dest, case.value))
    try:
        code: int | None = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    except ReachedError:
        assert accepted, f"{case.id} was accepted and went on to work: refuse it, or list why"
        return
    err = capsys.readouterr().err
    if accepted and code == 0:
        return
    assert code == 2, f"{case.id}: exit {code}\n{err}"
    assert err.count("\n") == 1 and "Traceback" not in err, f"{case.id}:\n{err}"
    assert _tree(root) == before, f"{case.id} changed the folder it refused"


PLUGIN = [o for o in OPTIONS if o.kwargs.get("type") in (None, text) and "choices" not in o.kwargs]
PLUGIN_BAD = {
    "dtype": ["", "fp64", "fp32,,x"],
    "results": ["{a_file}", "{blocked}", READ_ONLY + "/r"],
    "trace": ["{a_file}", "{blocked}", READ_ONLY + "/t"],
    "only": ["", "toy T=1 r=1 fp32 cpu"],
    "impl": ["", "no_such_module:IMPL", "tests/sample_plugin.py:NOPE"],
}


def test_every_plugin_option_without_a_type_has_bad_values() -> None:
    assert {o.name for o in PLUGIN} == set(PLUGIN_BAD)


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in PLUGIN_BAD.items() for v in vs])
def test_plugin_options_refused_under_plain_pytest(name: str, value: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("mine")
    value = value.format(a_file=tmp_path / "a-file", blocked=tmp_path / "a-file" / "x")
    before = _tree(tmp_path)
    cmd = [sys.executable, "-m", "pytest", "bench/test_forward.py", "--benchmark-only", "-q",
           "-p", "no:cacheprovider", "--lora-profile", "tiny", "--collect-only",
           f"--lora-{name}={value}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (2, 4), (proc.returncode, proc.stdout[-1500:], proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr, proc.stderr
    # pytest frames a usage error with its own usage and ini lines: the refusal is the one
    # line of them that names the option
    said = [line for line in proc.stderr.splitlines() if f"--lora-{name}" in line]
    assert len(said) == 1, proc.stderr
    assert _tree(tmp_path) == before
