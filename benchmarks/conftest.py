"""pytest-benchmark suite configuration (``pytest benchmarks --benchmark-only``; not part of ``pytest``).

Environment:
    P2PHD_BENCH_DEVICE  cpu (default) or cuda
    P2PHD_BENCH_SIZES   cpu | gpu | tiny (default: cpu on CPU, gpu on CUDA)
"""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (ROOT, HERE):  # import pix2pixhd_fast from the checkout, and cases.py beside this file
    if _p not in sys.path:
        sys.path.insert(0, _p)

BENCH_DEVICE = os.environ.get("P2PHD_BENCH_DEVICE", "cpu")
BENCH_SIZES = os.environ.get("P2PHD_BENCH_SIZES", "gpu" if BENCH_DEVICE == "cuda" else "cpu")


def pytest_report_header(config):
    import pix2pixhd_fast

    info = pix2pixhd_fast.build_info()
    return [
        f"pix2pixhd_fast benchmarks: device={BENCH_DEVICE} sizes={BENCH_SIZES} threads={torch.get_num_threads()}",
        f"library: ops_loaded={info['ops_loaded']} cuda_kernels={info['cuda_kernels']}"
        + (f" ({info['error']})" if info["error"] else ""),
    ]


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what benchmarks/report.py needs beside pytest-benchmark's own machine_info: the device, torch and
    CUDA versions, the GPU, the thread count, the build and the load average (a shared machine skews CPU times)."""
    import pix2pixhd_fast

    info = {
        "device": BENCH_DEVICE,
        "sizes": BENCH_SIZES,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "build_info": pix2pixhd_fast.build_info(),
    }
    try:
        info["loadavg_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        info["loadavg_start"] = None
    if BENCH_DEVICE == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    machine_info["pix2pixhd_fast"] = info


@pytest.fixture(scope="session")
def input_sets():
    """Input sets per case id, made once per session (fast and baselines see the same data)."""
    cache: dict[str, list] = {}

    def get(case, n: int = 2, seed: int = 1234):
        if case.id not in cache:
            cache.clear()  # keep one case's inputs alive at a time
            cache[case.id] = [case.make_set(seed + 1009 * k) for k in range(n)]
        return cache[case.id]

    if BENCH_DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("P2PHD_BENCH_DEVICE=cuda but no CUDA GPU is visible")
    return get
