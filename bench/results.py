"""Result files: atomic writes, and loading a run's JSON with clear errors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

SCHEMA = 1  # version of the "lora_bench" section of a results JSON


class ResultError(ValueError):
    """A results file is missing, corrupt or not from lora-bench."""


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


def dump_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


def load_run(path: str | Path) -> dict:
    """Load a results JSON written by `pytest bench`; ResultError says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"{path}: no such results file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ResultError(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' list)")
    meta = data.get("lora_bench")
    if not isinstance(meta, dict) or "profile" not in meta or "device" not in meta:
        raise ResultError(f"{path}: not written by lora-bench (no 'lora_bench' section)")
    if meta.get("schema") != SCHEMA:
        raise ResultError(
            f"{path}: lora-bench results schema {meta.get('schema')!r}; this version reads {SCHEMA}"
        )
    for i, bench in enumerate(data["benchmarks"]):
        info = bench.get("extra_info") if isinstance(bench, dict) else None
        if not isinstance(info, dict) or "kind" not in info or "case" not in info:
            raise ResultError(f"{path}: benchmark {i} has no lora-bench extra_info")
    return data
