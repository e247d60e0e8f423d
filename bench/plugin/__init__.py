"""The lora-bench pytest plugin (bench.plugin.hooks). Importing the package asks for huge
pages for a benchmark session's large tensors, before anything imports torch
(bench.harness.pages)."""

import sys

from bench.harness import pages

pages.ask(sys.argv)
