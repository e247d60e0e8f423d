"""Shared fixtures, and the installed plugins loaded before collection, so that the tests
that iterate IMPLS check them like ours."""

from __future__ import annotations

import pytest
import torch

from lora_kernels import load_plugins


def pytest_configure(config: pytest.Config) -> None:
    load_plugins()  # a broken plugin stops the run here, with its name in the message


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator, fresh for each test."""
    return torch.Generator().manual_seed(1234)
