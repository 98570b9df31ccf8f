"""The build: compiled ops loaded, CUDA kernels compiled where the toolkit exists, the reference fallback."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import pix2pixhd_fast
from pix2pixhd_fast import ops

from .conftest import DEVICES


def _nvcc_present() -> bool:
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    return shutil.which("nvcc") is not None or os.path.exists(os.path.join(home, "bin", "nvcc"))


def test_compiled_ops_loaded():
    info = pix2pixhd_fast.build_info()
    assert info["ops_loaded"], f"the compiled library did not load: {info['error']}"
    assert ops.has_ops()
    for name in ("instance_boundary", "encode_input", "instance_avg_pool", "instance_norm_act"):
        assert hasattr(torch.ops.pix2pixhd_fast, name)


def test_cuda_kernels_compiled_when_toolkit_present():
    info = pix2pixhd_fast.build_info()
    if torch.version.cuda is None or not _nvcc_present() or os.environ.get("P2PHD_NO_CUDA") == "1":
        pytest.skip("no CUDA toolkit or CPU-only torch: a CPU-only build is expected")
    assert info["cuda_kernels"], "nvcc and a CUDA torch exist, but the CUDA kernels were not compiled"
    assert info["cuda_archs"], "CUDA build without recorded archs"
    assert info["built_cuda_version"]
    assert info["built_torch_version"] and torch.__version__.startswith(info["built_torch_version"])


def test_cuda_kernels_registered_for_cuda_dispatch_key():
    info = pix2pixhd_fast.build_info()
    if not info["cuda_kernels"]:
        return
    for name in (
        "instance_boundary",
        "encode_input",
        "instance_avg_pool",
        "instance_norm_act",
        "instance_norm_act_backward",
        "instance_norm_act_pad",
        "instance_norm_act_pad_backward",
    ):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pix2pixhd_fast::{name}", "CUDA"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pix2pixhd_fast::{name}", "CPU"), name


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
