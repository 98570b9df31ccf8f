"""Shared test fixtures: devices, fresh seeds (printed, reproducible with P2PHD_TEST_SEED), tiny synthetic data."""

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


@pytest.fixture
def restore_threads():
    """Training/inference code sets torch's thread count from --num_threads; give the rest of the session its own
    back. Modules that run such code use it with ``pytestmark = pytest.mark.usefixtures("restore_threads")``."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """4 train + 2 test synthetic street scenes of 64x32 (Cityscapes ids, instance maps with cars, photos)."""
    from pix2pixhd_fast.data import make_synthetic_dataset

    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_dataset(root, n=4, size=(64, 32), seed=0, n_test=2)
    return root
