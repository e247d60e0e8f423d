"""What a library prints to the process's stderr that says nothing to a user, kept off
lora-bench's output. kineto writes a `USDT` line at each profiler start and stop (and a
`STAGE` line at some log levels) from C++, past Python's logging, and with profile_memory the
allocator a line for each block freed under the profiler that was allocated before it (a whole
model's generation frees many): while a profile is taken,
the process's stderr goes to a file, and then every line but those is written back, so a
real error still shows, only later."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

KINETO = re.compile(
    r"^(USDT|STAGE):\S+ \S+ \d+:\d+ \S+\.cpp:\d+\] "
    # profile_memory's notice of a block freed under the profiler but allocated before it
    r"|^\[W\d+ [\d:.]+ CPUAllocator\.cpp:\d+\] Memory block of unknown size was allocated "
    r"before the profiling started"
)


@contextlib.contextmanager
def without_kineto_lines() -> Iterator[None]:
    """Run the block with fd 2 in a file; then write back to stderr every line that is not
    kineto's notice of a profiler's start, stop or stage."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(True)
                    if not KINETO.match(line)]  # fmt: skip
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
