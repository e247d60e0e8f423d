"""Files of results: the one atomic writer and the JSON reader, with the error every reader
raises for a file it cannot use."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class ResultError(ValueError):
    """A results file is missing, corrupt, of another schema, or not from lora-bench."""


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and os.replace, so a
    reader never sees a half-written file and a failed write leaves the old one intact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ResultError(f"{path}: cannot write it ({err.strerror})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(folder: Path) -> None:
    """Prove that files can be written in `folder`, or in the folder it would be made in,
    without making anything (a command that then refuses leaves nothing behind); ResultError
    naming the folder when not. Called before any measurement, so a run never ends unable to
    save; the writer makes the folder."""
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ResultError(f"{folder}: cannot write results there ({existing} is not a folder)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".lora-bench-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ResultError(f"{folder}: cannot write results there ({err.strerror})") from None


def check_output(path: Path, inputs: list[Path], option: str) -> None:
    """Before any work: `path` (what `option` names) must not be one of the inputs, nor a
    folder, and its folder must take a file. ResultError naming the path when not."""
    path = Path(path)
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise ResultError(f"{option} {path}: that is an input of this command; write elsewhere")
    if path.is_dir():
        raise ResultError(f"{option} {path}: is a folder; give a file name")
    try:
        check_writable(path.parent)
    except ResultError:
        raise ResultError(f"{option} {path}: its folder cannot be written") from None


def read_json(path: str | Path, what: str = "results file") -> object:
    """The JSON data of a file; ResultError when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: not valid JSON ({err})") from None
