"""The build: compiled ops loaded, CUDA kernels as the build record says, the references only on request."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import pix2pixhd_fast
from pix2pixhd_fast import ops

from .conftest import DEVICES

OPS = (
    "instance_boundary",
    "encode_input",
    "instance_avg_pool",
    "instance_norm_act",
    "instance_norm_act_backward",
    "instance_norm_act_pad",
    "instance_norm_act_pad_backward",
)


def test_compiled_ops_loaded():
    info = pix2pixhd_fast.build_info()
    assert info["ops_loaded"], f"the compiled library did not load: {info['error']}"
    assert ops.has_ops()
    for name in OPS:
        assert hasattr(torch.ops.pix2pixhd_fast, name), name


def _cuda_build() -> dict:
    """build_info() of a library whose build record says it holds CUDA kernels; skips on a CPU-only build."""
    info = pix2pixhd_fast.build_info()
    if not info["cuda_kernels"]:
        pytest.skip("CPU-only build: the library's build record lists no CUDA kernels")
    return info


@pytest.mark.cuda_build
def test_cuda_build_records_archs_and_versions():
    info = _cuda_build()
    assert info["cuda_archs"], "CUDA build without recorded archs"
    assert info["built_cuda_version"]
    assert info["built_torch_version"] and torch.__version__.startswith(info["built_torch_version"])


@pytest.mark.cuda_build
def test_cuda_kernels_registered_for_cuda_dispatch_key():
    _cuda_build()
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pix2pixhd_fast::{name}", "CUDA"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pix2pixhd_fast::{name}", "CPU"), name


def _package_without_library(tmp_path) -> str:
    """A copy of the package's Python files without the compiled library; returns the folder to put on PYTHONPATH."""
    here = os.path.dirname(os.path.abspath(pix2pixhd_fast.__file__))
    ignore = shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__")
    shutil.copytree(here, tmp_path / "pkg" / "pix2pixhd_fast", ignore=ignore)
    return str(tmp_path / "pkg")


def _run(code: str, pythonpath: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("P2PHD_LIB", "P2PHD_DISABLE_EXT", "P2PHD_ALLOW_FALLBACK")}
    clean.update(env, PYTHONPATH=pythonpath)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=pythonpath, env=clean, capture_output=True, text=True, timeout=300
    )


# The copy is the package imported (PYTHONPATH comes before the installed one); an op runs, checked against the
# reference it must have fallen back to.
_FALLBACK_CODE = """
import os, torch, pix2pixhd_fast as p
assert p.__file__.startswith(os.getcwd()), p.__file__
assert not p.ops.has_ops() and not p.build_info()["ops_loaded"]
inst = torch.randint(0, 3, (1, 1, 5, 7))
assert torch.equal(p.ops.instance_boundary(inst), p.reference.instance_boundary(inst))
print("fallback ok")
"""


def test_missing_library_raises_import_error_saying_how_to_build(tmp_path):
    path = _package_without_library(tmp_path)
    r = _run("import pix2pixhd_fast", path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: pix2pixhd_fast: the compiled operator library (_C*.so) is not in"), r.stderr
    assert "make install" in last and "pip install --no-build-isolation -e ." in last
    assert "P2PHD_ALLOW_FALLBACK=1" in last


def test_library_that_fails_to_load_raises_import_error(tmp_path):
    bad = tmp_path / "_C.so"
    bad.write_bytes(b"not a shared library")
    for lib, message in ((str(bad), f"could not load {bad}"), (str(tmp_path / "none.so"), "is not a file")):
        r = _run("import pix2pixhd_fast", str(tmp_path), P2PHD_LIB=lib)
        assert r.returncode != 0 and "ImportError: pix2pixhd_fast: " in r.stderr and message in r.stderr, r.stderr


def test_references_on_request(tmp_path):
    path = _package_without_library(tmp_path)
    # P2PHD_ALLOW_FALLBACK=1: the references, with a warning that names the cause and the cost.
    r = _run(_FALLBACK_CODE, path, P2PHD_ALLOW_FALLBACK="1")
    assert r.returncode == 0 and "fallback ok" in r.stdout, r.stderr
    assert "UserWarning" in r.stderr and "is not in" in r.stderr and "10-100x slower" in r.stderr
    # P2PHD_DISABLE_EXT=1: the references on purpose, without a warning.
    r = _run(_FALLBACK_CODE, path, P2PHD_DISABLE_EXT="1")
    assert r.returncode == 0 and "fallback ok" in r.stdout, r.stderr
    assert "Warning" not in r.stderr


def test_reference_fallback_without_extension():
    """With the library disabled every op still works (pure PyTorch) and gives the same results."""
    code = r"""
import torch, pix2pixhd_fast as p
assert not p.ops.has_ops()
torch.manual_seed(0)
inst = torch.randint(0, 4, (2, 1, 9, 11)); x = torch.randn(2, 5, 9, 11, requires_grad=True)
e = p.ops.encode_input(inst, inst, 4, x)
y = p.ops.instance_norm_relu(p.ops.instance_avg_pool(x, inst))
y.sum().backward()
torch.save({"e": e, "y": y.detach(), "g": x.grad, "b": p.ops.instance_boundary(inst)}, "OUT")
"""
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"p2phd_fallback_{os.getpid()}.pt")
    env = dict(os.environ, P2PHD_DISABLE_EXT="1")
    subprocess.run([sys.executable, "-c", code.replace("OUT", out)], check=True, env=env)
    ref = torch.load(out)
    os.remove(out)
    torch.manual_seed(0)
    inst = torch.randint(0, 4, (2, 1, 9, 11))
    x = torch.randn(2, 5, 9, 11, requires_grad=True)
    e = ops.encode_input(inst, inst, 4, x)
    y = ops.instance_norm_relu(ops.instance_avg_pool(x, inst))
    y.sum().backward()
    torch.testing.assert_close(e, ref["e"])
    torch.testing.assert_close(y, ref["y"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, ref["g"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ops.instance_boundary(inst), ref["b"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype,name", [(torch.uint16, "UInt16"), (torch.uint32, "UInt32"), (torch.uint64, "UInt64"), (torch.bool, "Bool")]
)
def test_every_id_op_rejects_unsupported_id_dtypes(device, dtype, name):
    """The kernels' own check (what a direct torch.ops call hits) names the dtype, for every id-taking op."""
    ids = torch.zeros(1, 1, 3, 4, dtype=dtype, device=device)
    feat = torch.randn(1, 2, 3, 4, device=device)
    calls = [
        lambda: torch.ops.pix2pixhd_fast.instance_boundary(ids, torch.float32),
        lambda: torch.ops.pix2pixhd_fast.instance_avg_pool(feat, ids),
        lambda: torch.ops.pix2pixhd_fast.encode_input(ids, None, 3, None, torch.float32, False),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match=f"must hold integer ids .*got {name}"):
            call()
