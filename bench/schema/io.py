"""Files of results: the one atomic writer and the JSON reader, with the error every reader
raises for a file it cannot use."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path


class ResultError(ValueError):
    """A results file is missing, corrupt, of another schema, or not from lora-bench."""


TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")  # .NAME.PID.RANDOM.tmp


def _temporary(path: Path) -> tuple[Path, int]:
    """A file written in full beside `path`, named for it and for this process (so that a
    later run can tell a temporary its killed writer left from one being written)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")  # fmt: skip
    except OSError as err:
        raise ResultError(f"{path}: cannot write it ({err.strerror})") from None
    return Path(tmp), fd


def _fill(fd: int, tmp: Path, data: str | bytes) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and os.replace, so a
    reader never sees a half-written file and a failed write leaves the old one intact."""
    write_together({Path(path): data})


def write_together(files: dict[Path, str | bytes]) -> None:
    """Write several files that belong together (a run's JSON and its .md): each in full to
    a temporary beside it first, then each renamed into place, in the order given. A kill
    leaves every file either old or new, whole; only a kill between two renames leaves an
    old file beside a new one, which the files must let a reader tell (the .md names its
    run). A failed write leaves every old file as it was."""
    for folder in {path.parent for path in files}:
        clean_stale(folder)
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            tmp, fd = _temporary(path)
            written.append((tmp, path))
            _fill(fd, tmp, data)
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise


def clean_stale(folder: Path) -> list[Path]:
    """Remove the temporaries that writers killed mid-write left in `folder` (those of a
    process that no longer runs); the ones removed. Run before a writer starts there."""
    removed: list[Path] = []
    try:
        names = [p for p in Path(folder).iterdir() if TEMP.match(p.name)]
    except OSError:
        return removed
    for tmp in names:
        pid = int(TEMP.match(tmp.name).group("pid"))  # type: ignore[union-attr]
        if pid != os.getpid() and not _alive(pid):
            try:
                if tmp.is_dir():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                removed.append(tmp)
            except OSError:
                continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


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
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".lora-bench-probe.{os.getpid()}.",
                                     suffix=".tmp")  # fmt: skip
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
