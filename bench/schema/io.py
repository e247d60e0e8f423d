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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    """Make `folder` if needed and prove a file can be written in it; ResultError naming the
    folder when not. Called before any measurement, so a run never ends unable to save."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".lora-bench-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ResultError(f"{folder}: cannot write results there ({err.strerror})") from None


def read_json(path: str | Path, what: str = "results file") -> object:
    """The JSON data of a file; ResultError when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"{path}: no such {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: not valid JSON ({err})") from None
