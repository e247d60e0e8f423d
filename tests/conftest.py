"""Shared fixtures: a seeded generator and the registered implementations."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator, fresh for each test."""
    return torch.Generator().manual_seed(1234)
