"""A plugin that loads when pytest only collects and fails to load when it runs: the sweep's
check of its options up front passes, and then every shard fails, as a node whose install
differs from this machine's would (`--impl tests/shard_only_plugin.py:IMPLS`)."""

from __future__ import annotations

import sys

from lora_kernels import IMPLS as REGISTRY
from lora_kernels import Impl

if "--collect-only" not in sys.argv:
    raise ImportError("this test plugin loads only under --collect-only")

IMPLS = [Impl("shard_only_addmm", "test plugin: addmm, loaded only to collect",
              REGISTRY["addmm"].builder)]  # fmt: skip
