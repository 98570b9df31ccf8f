"""P2PHD_REQUIRE_CUDA=1 (tests/conftest.py): every skip of a CUDA test fails, other skips stay skips.

A small test file runs in a pytest subprocess with this suite's conftest. Its tests skip in their bodies whatever
the machine has, so the outcomes are the same with and without a GPU.
"""

import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INNER = """
import pytest

from tests.conftest import DEVICES


@pytest.mark.cuda
def test_cuda_marked():
    pytest.skip("needs a CUDA GPU")


@pytest.mark.parametrize("device", DEVICES)
def test_over_devices(device):
    pytest.skip(f"skipped on {device}")


@pytest.mark.cuda
@pytest.mark.parametrize("device", DEVICES)
def test_cuda_only_body(device):
    pytest.skip("CUDA only")


@pytest.mark.cuda_build
def test_cuda_build():
    pytest.skip("CPU-only build")


@pytest.mark.skipif(True, reason="needs a CUDA GPU")
@pytest.mark.cuda
def test_cuda_skipif():
    pass


def test_other_skip():
    pytest.skip("optional package missing")


@pytest.mark.cuda_build
@pytest.mark.xfail(reason="known", strict=True)
def test_cuda_build_xfail():
    raise AssertionError


def test_passes():
    pass
"""

CUDA_TESTS = {
    "test_cuda_marked",
    "test_over_devices[cuda]",
    "test_cuda_only_body[cuda]",
    "test_cuda_build",
    "test_cuda_skipif",
}
OTHER_SKIPS = {"test_over_devices[cpu]", "test_cuda_only_body[cpu]", "test_other_skip"}


def _outcomes(tmp_path, require: str) -> dict[str, str]:
    """Run the inner file; {test name: PASSED/FAILED/ERROR/SKIPPED/XFAIL} from pytest's -rA summary."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER))
    env = dict(os.environ, P2PHD_REQUIRE_CUDA=require, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
           "test_inner.py"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL)\b.*?test_inner\.py(?:::|:\d+: )?(\S+)?", line)
        if m and m.group(2):
            out[m.group(2)] = m.group(1)
    return out, r


def _skipped_names(r) -> set[str]:
    # -rA lists skips as "SKIPPED [1] test_inner.py:12: reason" (no test name): count them by reason instead.
    return {line for line in r.stdout.splitlines() if line.startswith("SKIPPED")}


def test_without_the_switch_cuda_skips_stay_skips(tmp_path):
    out, r = _outcomes(tmp_path, "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 skipped" in r.stdout and "1 passed" in r.stdout and "1 xfailed" in r.stdout, r.stdout


def test_require_cuda_fails_every_cuda_skip_only(tmp_path):
    out, r = _outcomes(tmp_path, "1")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = {name for name, outcome in out.items() if outcome in ("FAILED", "ERROR")}
    assert failed == CUDA_TESTS, r.stdout
    assert "3 skipped" in r.stdout and "1 passed" in r.stdout and "1 xfailed" in r.stdout, r.stdout
    assert "P2PHD_REQUIRE_CUDA=1, but this CUDA test was skipped: needs a CUDA GPU" in r.stdout
    assert "P2PHD_REQUIRE_CUDA=1, but this CUDA test was skipped: CPU-only build" in r.stdout
    assert len(_skipped_names(r)) == len(OTHER_SKIPS)
