"""Property test of the results readers: a valid results file, mutated (a value's type or
sign changed, NaN or infinity put in, a field dropped or added, the text cut short), read by
report, compare, check and export. Each exits 0 (1 for check's regressions) with sane output,
or 2 with one line on stderr: never a traceback, never NaN or infinity in the output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runs import make_run, run_json, user_model_run

from bench.cli.main import main

VALID = json.loads(run_json(make_run("cpu")))
MODEL_VALID = json.loads(run_json(user_model_run()))  # `lora-bench model`'s entries
NOT_A_NUMBER = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)
READERS = (
    ["report", "{m}"],
    ["report", "{m}", "--format", "csv", "--group-by", "rank"],
    ["report", "{m}", "--format", "html"],
    ["compare", "{v}", "{m}", "--format", "html"],
    ["compare", "{v}", "{m}"],
    ["check", "{v}", "{m}"],
    ["check", "{m}", "{v}"],
    ["export", "{m}", "--format", "github-action-benchmark"],
)
REPLACEMENTS = st.sampled_from(
    [float("nan"), float("inf"), -1.0, -1, 0, 0.0, 1e308, "1.0", None, True, [], {}, "x"]
)


def paths(node: object, here: tuple = ()) -> list[tuple]:
    """Every place in the JSON tree: keys of objects and indices of lists."""
    found = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            found += paths(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += paths(v, (*here, i))
    return found


def mutated(data: st.DataObject, valid: dict) -> str:
    """The valid file's text with one mutation."""
    kind = data.draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "cut"]))
    text = json.dumps(valid)
    if kind == "cut":
        return text[: data.draw(st.integers(0, len(text) - 1))]
    doc = json.loads(text)
    place = data.draw(st.sampled_from(paths(valid)[1:]))
    parent = doc
    for step in place[:-1]:
        parent = parent[step]
    last = place[-1]
    if kind == "replace":
        parent[last] = data.draw(REPLACEMENTS)
    elif kind == "drop":
        del parent[last]
    elif isinstance(parent, dict):
        parent["unexpected_field"] = 1
    return json.dumps(doc)  # NaN and Infinity written as Python's json does


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples in every CI run; False locally to explore
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
@pytest.mark.parametrize("document", [VALID, MODEL_VALID], ids=["layers", "model"])
def test_readers_exit_0_with_sane_output_or_2_with_one_line(
    document: dict, data: st.DataObject, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    valid, broken = tmp_path / "valid.json", tmp_path / "mutated.json"
    valid.write_text(json.dumps(document))
    broken.write_text(mutated(data, document))
    args = [a.format(v=valid, m=broken) for a in data.draw(st.sampled_from(READERS))]
    code = main(args)
    out, err = capsys.readouterr()
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(f"lora-bench {args[0]}: "), err
        return
    assert code in ((0, 1) if args[0] == "check" else (0,)), (code, err)
    assert not NOT_A_NUMBER.search(out), out
    if args[0] == "export":
        json.loads(out, parse_constant=lambda c: pytest.fail(f"export wrote {c}"))


@pytest.mark.parametrize(
    ("place", "value", "message"),
    [
        (("entries", 0, "rounds", "base_s", 0), 0.0, "must be seconds > 0, got 0.0"),
        (("entries", 0, "rounds", "impl_s", 1), -1e-3, "must be a finite number >= 0"),
        (("entries", 0, "rounds", "impl_s", 1), float("nan"), "must be a finite number >= 0"),
        (
            (
                "entries",
                0,
                "floor_s",
            ),
            float("inf"),
            "floor_s must be a finite number >= 0",
        ),
        (("entries", -2, "peak_bytes"), -5, "peak_bytes must be a finite number >= 0"),
    ],
)
def test_numbers_that_cannot_be_true_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    place: tuple,
    value: float,
    message: str,
) -> None:
    doc = json.loads(json.dumps(VALID))
    parent = doc
    for step in place[:-1]:
        parent = parent[step]
    parent[place[-1]] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    for command in (["report", str(path)], ["check", str(path), str(path)],
                    ["export", str(path), "--format", "github-action-benchmark"]):  # fmt: skip
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
