"""A module whose import kills the process with SIGSEGV where CRASH_ON_IMPORT is set: the test
imports it first, then sets it, so the ranks it starts crash while they unpickle their
function, before run_ranks' code runs. CRASH_ON_IMPORT=always crashes every time; a file's path
crashes only while that file is not there (the crash makes it), so a second group forms."""

from __future__ import annotations

import os
import signal
from pathlib import Path

_how = os.environ.get("CRASH_ON_IMPORT")
if _how == "always" or (_how and not Path(_how).exists()):
    if _how != "always":
        Path(_how).touch()
    os.kill(os.getpid(), signal.SIGSEGV)


def rank_of(index: int, world: int) -> int:
    return index
