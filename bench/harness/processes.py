"""Child processes that die with their parent. A `lora-bench run` killed with SIGKILL cannot
stop the pytest it started, nor pytest the memory probe; on Linux the kernel can, when each
child asks for it (prctl PR_SET_PDEATHSIG) as it starts. Elsewhere nothing is asked and
nothing changes. Torch-free, and free of lora_kernels (ab's sides import another commit's);
lora_kernels.tp.launch asks the same for the tensor-parallel ranks."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the process (thread) that started it
    ends; if it has ended already, end now. Call it first thing in a child, or pass it as
    subprocess's preexec_fn. A no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request: it will not come
        os._exit(1)
