"""Shared pytest set-up: GPU/slow marks and per-test random inputs.

* ``@pytest.mark.gpu``: needs a CUDA device; skipped where torch.cuda.is_available() is false.
* ``@pytest.mark.slow``: large sizes; runs where a GPU is present or with ARKERNELS_SLOW_TESTS=1.
* ``rng``: a torch.Generator seeded from the test's node id, so every test draws its own fresh inputs
  and a failure reproduces by rerunning that one test.
"""
from __future__ import annotations

import os

import pytest
import torch

from arkernels.testing import inputs

HAS_CUDA = torch.cuda.is_available()
SLOW_ENABLED = HAS_CUDA or os.environ.get("ARKERNELS_SLOW_TESTS", "0") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    skip_slow = pytest.mark.skip(reason="slow: runs where a GPU is present or with ARKERNELS_SLOW_TESTS=1")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not HAS_CUDA:
            item.add_marker(skip_gpu)
        elif item.get_closest_marker("slow") is not None and not SLOW_ENABLED:
            item.add_marker(skip_slow)


@pytest.fixture
def seed(request) -> int:
    return inputs.seed_from(request.node.nodeid)


@pytest.fixture
def rng(seed) -> torch.Generator:
    """CPU generator seeded per test (inputs are drawn on the CPU, then cast and moved)."""
    torch.manual_seed(seed)  # also the global generators, for anything that does not take a generator
    return inputs.generator(seed)
