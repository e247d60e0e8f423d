"""The README and the docs site: every generated block is what `lora-bench docs` makes of its
committed run today, no table of figures is typed by hand, the README stays a front door
(at most 250 lines, the two set-up commands), the site builds with `mkdocs build --strict`,
and every page of it renders in headless Chromium with no console error."""

from __future__ import annotations

import functools
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import CHROMIUM, NO_CHROMIUM, parsed, render

from bench.cli.docs import site_tools_missing
from bench.cli.docs_blocks import BLOCK, DocsError, documents, regenerate, stale_blocks
from bench.cli.main import main, parser

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
# A measured figure: a ratio or share with two decimals or more, a time, a speed-up.
FIGURE = re.compile(r"\b\d+\.\d{2,}\b|\b\d+(\.\d+)?\s?(ms|µs|us)\b|\bx\d+\.\d+")
SETUP = (
    "python -c 'import torch' 2>/dev/null || python -m pip install torch==2.13.0; python -m pip "
    "install -e '.[dev,peers,plot,triton,models,quant]' && pytest bench --benchmark-only",
    "python -c 'import torch' 2>/dev/null || python -m pip install torch==2.13.0; python -m pip "
    "install -e '.[dev,peers,plot,triton,models,quant,cluster,docs,diffusion]' -e "
    "examples/toy_plugin && pytest",
)
NO_MKDOCS = site_tools_missing()


def test_every_generated_block_is_current() -> None:
    stale = stale_blocks(ROOT, COMMANDS)
    where = [f"{s.path.relative_to(ROOT)}:{s.line} ({s.spec})" for s in stale]
    assert not stale, f"stale blocks, regenerate them with `lora-bench docs`: {where}"


def test_no_table_of_figures_is_typed_by_hand() -> None:
    """A table row outside a generated block holds no measured figure."""
    typed = []
    for path in documents(ROOT):
        text = BLOCK.sub("", path.read_text(encoding="utf-8"))
        for line in text.splitlines():
            if line.startswith("|") and FIGURE.search(re.sub(r"`[^`]*`", "", line)):
                typed.append(f"{path.relative_to(ROOT)}: {line[:80]}")
    assert not typed, f"tables of figures typed by hand; put them in a block: {typed}"


def test_every_block_names_its_run_and_machine() -> None:
    for path in documents(ROOT):
        for m in BLOCK.finditer(path.read_text(encoding="utf-8")):
            if m.group(2).split()[0] in ("run", "verdict"):
                run_file = m.group(2).split()[1]
                assert f"from `{run_file}`: " in m.group(3) and "last-level cache" in m.group(3)


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    assert [c for c in commands if c.startswith("python -c")] == list(SETUP)
    assert "(results/reference/xeon-480m/quick.html)" in text, "the HTML report is not linked"


def _checkout(tmp_path: Path, page: str) -> Path:
    root = tmp_path / "checkout"
    (root / "docs").mkdir(parents=True)
    (root / "README.md").write_text("# r\n")
    (root / "docs" / "page.md").write_text(page)
    run = ROOT / "results" / "reference" / "xeon-480m" / "quick.json"
    (root / "results").mkdir()
    (root / "results" / "run.json").write_bytes(run.read_bytes())
    return root


def test_docs_writes_stale_blocks_and_check_only_lists_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = "run results/run.json | Timer check"
    block = f"<!-- lora-bench docs: {spec} -->\nold\n<!-- /lora-bench docs -->\n"
    root = _checkout(tmp_path, "# p\n\n" + block)
    page = root / "docs" / "page.md"
    assert main(["docs", "--check", "--root", str(root)]) == 1
    assert "docs/page.md:3: stale: run results/run.json | Timer check" in capsys.readouterr().out
    assert "old" in page.read_text()
    assert main(["docs", "--root", str(root)]) == 0
    text = page.read_text()
    assert "### Timer check" in text and "old" not in text and "from `results/run.json`" in text
    assert main(["docs", "--check", "--root", str(root)]) == 0
    assert regenerate(text, root, COMMANDS) == text


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("graph results/run.json", "unknown kind 'graph'"),
        ("run results/none.json", "no run file 'results/none.json'"),
        ("run results/run.json | Nothing", "has no table 'Nothing'; it has: Throughput"),
        ("help nothing", "help of an unknown command 'nothing'"),
        (
            "impls extra",
            "impls takes a variant or nothing: one of conv, conv_dora, dora, lora, qlora, got",
        ),
        ("ab results/none.json", "no ab results file 'results/none.json'"),
        ("references nowhere", "references needs a folder of runs, got 'nowhere'"),
    ],
)
def test_a_block_that_cannot_be_generated_is_refused_naming_where(
    tmp_path: Path, capsys: pytest.CaptureFixture, spec: str, match: str
) -> None:
    good = "<!-- lora-bench docs: help plan -->\n<!-- /lora-bench docs -->\n"
    bad = f"<!-- lora-bench docs: {spec} -->\n<!-- /lora-bench docs -->\n"
    root = _checkout(tmp_path, good + "\n" + bad)
    before = (root / "docs" / "page.md").read_text()
    with pytest.raises(DocsError, match=re.escape(match)):
        regenerate(before, root, COMMANDS, "docs/page.md")
    assert main(["docs", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "docs/page.md:4: " in err and match in err, err
    assert (root / "docs" / "page.md").read_text() == before  # the good block is not written


def test_docs_outside_a_checkout_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["docs", "--root", str(tmp_path)]) == 2
    assert "is no lora-bench checkout" in capsys.readouterr().err


@pytest.mark.skipif(NO_MKDOCS is not None, reason=str(NO_MKDOCS))
def test_site_refuses_a_folder_of_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["docs", "--root", str(ROOT), "--check", "--site", str(mine)]) == 2
    assert "holds files that are not a built site" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NO_MKDOCS:
        pytest.skip(NO_MKDOCS)
    out = tmp_path_factory.mktemp("site") / "site"
    assert main(["docs", "--check", "--root", str(ROOT), "--site", str(out)]) == 0, (
        "mkdocs build --strict failed (its messages are above)"
    )
    return out


def pages() -> list[str]:
    """Every page of the site, as mkdocs.yml's nav lists it."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8").split("\nnav:\n", 1)[1]
    return re.findall(r":\s*(\S+\.md)\s*$", nav, re.M)


def test_the_site_builds_strict_with_every_page(site: Path) -> None:
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert sorted(on_disk) == sorted(pages()), "a page is missing from mkdocs.yml's nav"
    for page in pages():
        html = site / page.removesuffix(".md").removesuffix("index") / "index.html"
        assert html.is_file(), page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "lora_kernels.LoRALinear" in api and "from_peft" in api


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site over HTTP on this machine (its search does not load from file://)."""
    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()
    server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
@pytest.mark.parametrize("page", pages())
def test_site_pages_render_in_headless_chromium(
    served: str, site: Path, page: str, tmp_path: Path
) -> None:
    path = page.removesuffix(".md").removesuffix("index")
    path = f"{path}/" if path and not path.endswith("/") else path
    colours, dom, errors = render(served + path, tmp_path)
    assert colours > 8, "the screenshot is blank"
    assert errors == [], errors
    built = parsed((site / path / "index.html").read_text(encoding="utf-8"))
    assert set(built.headings) <= set(parsed(dom).headings)
