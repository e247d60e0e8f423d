"""The git side of `lora-bench ab`: resolve a ref, tell whether the working tree is dirty, and
export one commit's `lora_kernels/` into a folder."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from bench.schema.io import ResultError

KERNELS = "lora_kernels"
PLUGIN_INTERFACE = f"{KERNELS}/plugins.py"  # the base must have it: the contract the sides use


def git_bytes(project: Path, *args: str) -> bytes:
    """Output of `git args` in `project`; ResultError with git's message when it fails."""
    try:
        proc = subprocess.run(["git", *args], cwd=project, capture_output=True, check=False)
    except FileNotFoundError:
        raise ResultError("lora-bench ab needs git, and git is not on PATH") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip() or f"exit {proc.returncode}"
        raise ResultError(f"git {' '.join(args)}: {message}")
    return proc.stdout


def git(project: Path, *args: str) -> str:
    """git's output as text, stripped."""
    return git_bytes(project, *args).decode().strip()


def resolve(project: Path, ref: str) -> str:
    """The commit `ref` names, as a full hash; ResultError when it names none."""
    if ref.startswith("-"):
        raise ResultError(f"{ref!r} is not a git ref")
    git(project, "rev-parse", "--is-inside-work-tree")
    try:
        return str(git(project, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"))
    except ResultError:
        raise ResultError(
            f"unknown git ref {ref!r}: name a commit, branch or tag of {project} (a shallow "
            "clone may lack older commits: fetch them first)"
        ) from None


def check_plugin_interface(project: Path, commit: str, ref: str) -> None:
    """ResultError unless the commit has the plugin interface the sides rely on."""
    try:
        git(project, "cat-file", "-e", f"{commit}:{PLUGIN_INTERFACE}")
    except ResultError:
        raise ResultError(
            f"{ref} ({commit[:10]}) predates the plugin interface ({PLUGIN_INTERFACE}); "
            "ab compares commits that have it"
        ) from None


def dirty_paths(project: Path) -> list[str]:
    """Paths with uncommitted changes, untracked files included (ignored ones not)."""
    lines = git_bytes(project, "status", "--porcelain").decode().splitlines()
    return [line[3:] for line in lines if line.strip()]


def export_kernels(project: Path, commit: str, dest: Path) -> Path:
    """Write the commit's lora_kernels/ under `dest`; returns `dest`, the tree to import from.
    Only that package is taken: the harness that times both sides is the working tree's."""
    data = git_bytes(project, "archive", "--format=tar", commit, KERNELS)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python without extraction filters; git archive writes no links out of the tree
            tar.extractall(dest)
    return dest
