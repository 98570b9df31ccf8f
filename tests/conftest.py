"""Shared test fixtures: devices, fresh seeds (printed, reproducible with P2PHD_TEST_SEED), tiny synthetic data.

CUDA tests skip where there is no GPU, so a GPU run whose CUDA silently went missing (a driver too old for torch's
CUDA, a CPU-only build of the library) would still pass. ``P2PHD_REQUIRE_CUDA=1`` turns every skip of a CUDA test
into a failure; a CUDA test is one marked ``cuda`` (needs a GPU; the CPU case of a test parametrized over DEVICES
is not one) or ``cuda_build`` (needs the library's CUDA kernels, checked from its build record, no GPU needed).
"""

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


def require_cuda() -> bool:
    """Whether skips of CUDA tests fail (P2PHD_REQUIRE_CUDA=1); read per test, so a run can set it late."""
    return os.environ.get("P2PHD_REQUIRE_CUDA", "0") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line(
        "markers", "cuda_build: needs the library's CUDA kernels (skipped on a CPU-only build; no GPU needed)"
    )


def pytest_report_header(config):
    if require_cuda():
        return [f"P2PHD_REQUIRE_CUDA=1: skips of CUDA tests fail (torch.cuda.is_available() = {HAS_CUDA})"]
    return []


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


def _is_cuda_test(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cpu":
        return False  # the CPU case of a CUDA-marked test may skip by design ("CUDA only")
    return item.get_closest_marker("cuda") is not None or item.get_closest_marker("cuda_build") is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and require_cuda() and _is_cuda_test(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"P2PHD_REQUIRE_CUDA=1, but this CUDA test was skipped: {reason}"
    return report


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
    """4 train + 2 test synthetic street scenes of 32x64 (Cityscapes ids, instance maps with cars, photos)."""
    from pix2pixhd_fast.data import make_synthetic_dataset

    root = str(tmp_path_factory.mktemp("synthetic"))
    make_synthetic_dataset(root, n=4, size=(32, 64), seed=0, n_test=2)
    return root
