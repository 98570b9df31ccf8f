"""Shared test fixtures: devices, fresh seeds (printed, reproducible with P2PHD_TEST_SEED)."""

import os
import random

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# Parametrize a test over these; CUDA cases are marked and skipped without a GPU.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture
def seed(request):
    """A fresh seed per test (or P2PHD_TEST_SEED), seeding torch/random; printed so failures reproduce."""
    s = int(os.environ.get("P2PHD_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(s)
    random.seed(s)
    print(f"[seed] {request.node.nodeid}: P2PHD_TEST_SEED={s}")
    return s
