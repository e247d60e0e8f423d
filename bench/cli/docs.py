"""`lora-bench docs`: the figures of the README and the docs site generated anew from the
committed runs, between their markers (bench/cli/docs_blocks.py); with --check, the stale
blocks listed and nothing written; with --site DIR, the site built there too (MkDocs,
strict: a broken link or reference fails it)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.cli.docs_blocks import documents, regenerate, stale_blocks
from bench.schema.io import ResultError, check_writable, write_atomic

SITE_MARKS = ("sitemap.xml", "404.html")  # what tells a folder mkdocs built from any other


def cmd_docs(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not (root / "README.md").is_file() or not (root / "docs").is_dir():
        raise ResultError(f"{root} is no lora-bench checkout (no README.md and docs/ there); "
                          "run it at the checkout's root or give --root")  # fmt: skip
    if args.site is not None:
        _check_site(Path(args.site), root)
    if args.check:
        stale = stale_blocks(root, args.commands)
        for s in stale:
            print(f"{s.path.relative_to(root)}:{s.line}: stale: {s.spec}")
        print(f"{len(stale)} stale block(s); `lora-bench docs` writes them" if stale else
              "every generated block is current", file=sys.stderr)  # fmt: skip
        if stale or args.site is None:
            return 1 if stale else 0
        return _build(root, Path(args.site))
    made = {}
    for path in documents(root):  # every block generated before any file is written
        text = path.read_text(encoding="utf-8")
        new = regenerate(text, root, args.commands, str(path.relative_to(root)))
        if new != text:
            check_writable(path.parent)
            made[path] = new
    for path, text in made.items():
        write_atomic(path, text)
        print(f"wrote {path.relative_to(root)}", file=sys.stderr)
    if not made:
        print("every generated block was current; nothing written", file=sys.stderr)
    return 0 if args.site is None else _build(root, Path(args.site))


def site_tools_missing() -> str | None:
    """Why the site cannot be built here (a package of the `docs` extra not installed), or
    None."""
    import importlib.util

    for module in ("mkdocs", "material", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            return (f"building the site needs MkDocs, Material and mkdocstrings ({module} is "
                    "not installed): pip install 'lora-bench[docs]'")  # fmt: skip
    return None


def _check_site(site: Path, root: Path) -> None:
    """Refuse, before anything is written: no MkDocs, or a site folder that would take the
    place of something else (mkdocs empties the folder it builds into)."""
    missing = site_tools_missing()
    if missing:
        raise ResultError(f"--site: {missing}")
    if site.exists() and not site.is_dir():
        raise ResultError(f"--site {site} is a file; give a folder for the site")
    if site.is_dir() and any(site.iterdir()) and not any((site / m).exists() for m in SITE_MARKS):
        raise ResultError(f"--site {site} holds files that are not a built site; give a new or "
                          "empty folder (mkdocs empties the one it builds into)")  # fmt: skip
    inside = site.resolve()
    if inside == root.resolve() or (root / "docs").resolve() in [inside, *inside.parents]:
        raise ResultError(f"--site {site} would build over the checkout or its docs/")
    check_writable(site if site.is_dir() else site.parent)


def _build(root: Path, site: Path) -> int:
    """`mkdocs build --strict` of the checkout into `site`; its exit status."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
               "-f", str(root / "mkdocs.yml"), "-d", str(site.resolve())]  # fmt: skip
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(command, env=env, check=False)
    if done.returncode == 0:
        print(f"built the site in {site}", file=sys.stderr)
    return 0 if done.returncode == 0 else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("docs", help="generate the README's and the docs' figures from the "
                       "committed runs (--check: list the stale ones)")  # fmt: skip
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a block is stale")  # fmt: skip
    p.add_argument("--root", default=".", metavar="DIR",
                   help="the checkout's root (default: the current folder)")  # fmt: skip
    p.add_argument("--site", metavar="DIR",
                   help="build the site there too (mkdocs build --strict)")  # fmt: skip
    p.set_defaults(func=cmd_docs, commands=sub.choices)  # every command's parser, for `help`
