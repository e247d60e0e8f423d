"""`report --format html` and `compare --format html`: one self-contained page (nothing
fetched from elsewhere) with the run's header, every table, and the ratios drawn as SVG with
their CIs; refused, writing nothing, over its input or into a place that cannot be written; and
opened in headless Chromium where the machine has it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import CHROMIUM, NO_CHROMIUM, parsed, render
from runs import make_run, run_json, user_model_run

from bench.cli.main import main
from bench.report.document import run_tables


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    files = {"layers": make_run(), "model": user_model_run(),
             "other": make_run(ratios={("toy T=512 r=4 fp32", "addmm"): 1.2})}  # fmt: skip
    out = {}
    for name, run in files.items():
        out[name] = tmp_path / f"{name}.json"
        out[name].write_text(run_json(run))
    return out


@pytest.mark.parametrize("name", ["layers", "model"])
def test_report_html_is_one_page_with_every_table_and_the_ratios_drawn(
    runs: dict[str, Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.schema.run import load_run

    out = tmp_path / "report.html"
    assert main(["report", str(runs[name]), "--format", "html", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    page = parsed(text)
    titles = [t.title for t in run_tables(load_run(runs[name]))]
    assert titles and all(title in page.headings for title in titles), page.headings
    assert page.tags.count("svg") >= 1 and page.tags.count("circle") >= 3
    assert not page.references, f"the page fetches {page.references}"
    assert "<script" not in text and not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE)
    assert main(["report", str(runs[name]), "--format", "html"]) == 0  # to stdout alike
    assert capsys.readouterr().out == text


def test_compare_html_draws_both_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "compare.html"
    code = main(["compare", str(runs["layers"]), str(runs["other"]), "--format", "html",
                 "-o", str(out)])  # fmt: skip
    assert code == 0
    page = parsed(out.read_text(encoding="utf-8"))
    assert "A: cpu, 2 threads" in out.read_text() and page.tags.count("svg") >= 1
    assert page.tags.count("circle") >= 2 * 6  # two series, every case and impl


@pytest.mark.parametrize("where", ["input", "unwritable"])
def test_html_into_its_input_or_an_unwritable_place_is_refused(
    runs: dict[str, Path], where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    target = runs["layers"] if where == "input" else blocker / "report.html"
    before = runs["layers"].read_bytes()
    assert main(["report", str(runs["layers"]), "--format", "html", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lora-bench report: -o "), err
    assert runs["layers"].read_bytes() == before and blocker.read_text() == "mine"


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
@pytest.mark.parametrize("name", ["layers", "model"])
def test_the_html_report_renders_in_headless_chromium(
    runs: dict[str, Path], name: str, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    assert main(["report", str(runs[name]), "--format", "html", "-o", str(page)]) == 0
    colours, dom, errors = render(page.as_uri(), tmp_path)
    assert colours > 8, "the screenshot is blank"
    assert errors == [], errors
    rendered = parsed(dom)
    assert rendered.tags.count("svg") == parsed(page.read_text()).tags.count("svg") >= 1
    assert set(parsed(page.read_text()).headings) <= set(rendered.headings)


COMMITTED = ["results/reference/xeon-480m/quick", "results/reference/xeon-480m/model/llama-cpu-cpu"]


@pytest.mark.parametrize("stem", COMMITTED)
def test_committed_html_reports_are_current(stem: str, tmp_path: Path) -> None:
    """The committed pages are what `report --format html` makes of their runs today."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "page.html"
    assert main(["report", str(root / f"{stem}.json"), "--format", "html", "-o", str(out)]) == 0
    committed = (root / f"{stem}.html").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, (
        f"{stem}.html is stale: lora-bench report {stem}.json --format html -o {stem}.html"
    )
