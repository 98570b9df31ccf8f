"""Our operators inside other people's models through both torch.onnx exporters, with no module swap.

Each exported graph must hold standard ONNX operators only and onnxruntime must reproduce eager PyTorch.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from pix2pixhd_fast import ops  # noqa: E402
from pix2pixhd_fast.export import check_onnx_graph_ops  # noqa: E402
from pix2pixhd_fast.nn import InstanceAvgPool, InstanceBoundary, InstanceNormAct, InstanceNormActPad  # noqa: E402
from pix2pixhd_fast.nn.convert import convert_model  # noqa: E402

pytestmark = pytest.mark.skipif(not ops.has_ops(), reason="needs the compiled operator library")

ATOL = 1e-4


class ThirdParty(nn.Module):
    """A generator as another repository writes it: plain nn modules, reflection pads, a residual block."""

    def __init__(self, c=8):
        super().__init__()
        self.head = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(4, c, 7), nn.InstanceNorm2d(c, affine=True), nn.ReLU(True)
        )
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c, affine=True),
        )
        self.down = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.InstanceNorm2d(c), nn.LeakyReLU(0.2))
        self.tail = nn.Sequential(
            nn.ConvTranspose2d(c, c, 4, 2, 1), nn.InstanceNorm2d(c), nn.Conv2d(c, 3, 1), nn.Tanh()
        )

    def forward(self, x):
        h = self.head(x)
        h = h + self.block(h)
        return self.tail(self.down(h))


def _randomise(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.3)
    return model


def _run_ort(path, inputs):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def _export(model, inputs, path, dynamo):
    kwargs = {"dynamo": True} if dynamo else {"dynamo": False, "opset_version": 17}
    torch.onnx.export(model, inputs, str(path), **kwargs)
    return check_onnx_graph_ops(str(path))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_converted_third_party_model_exports_with_standard_ops(tmp_path, seed, dynamo):
    plain = _randomise(ThirdParty()).eval()
    model = convert_model(copy.deepcopy(plain))
    fused = [m for m in model.modules() if isinstance(m, InstanceNormAct)]
    assert any(isinstance(m, InstanceNormActPad) for m in fused) and len(fused) >= 4  # our ops are really in it
    x = torch.randn(2, 4, 16, 20)
    with torch.no_grad():
        expected = plain(x)
        torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)
    op_types = _export(model, (x,), tmp_path / "m.onnx", dynamo)
    assert "InstanceNormalization" in op_types and "Pad" in op_types
    (out,) = _run_ort(tmp_path / "m.onnx", (x,))
    np.testing.assert_allclose(out, expected.numpy(), atol=ATOL, rtol=0)


class EveryOp(nn.Module):
    def __init__(self, c=4, label_nc=5, pool=True):
        super().__init__()
        self.use_pool = pool
        self.label_nc = label_nc
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.norm = InstanceNormAct(c, affine=True, negative_slope=0.2)
        self.norm_id = InstanceNormAct(c, negative_slope=1.0)
        self.norm_pad = InstanceNormActPad(c, affine=True, pad=2)
        self.boundary = InstanceBoundary(torch.float64)
        self.pool = InstanceAvgPool()

    def forward(self, x, inst, label):
        y = self.norm(self.conv(x))
        padded = self.norm_pad(self.norm_id(y), y)
        encoded = ops.encode_input(label, inst, self.label_nc, y)
        pooled = self.pool(y, inst) if self.use_pool else y
        return padded, self.boundary(inst), pooled, encoded


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_every_op_translation_matches_eager(tmp_path, seed, dynamo):
    # The TorchScript exporter has no instance_avg_pool translation (its shape inference crashes on the graph).
    model = _randomise(EveryOp(pool=dynamo)).eval()
    n, h, w = 2, 9, 11
    x = torch.randn(n, 3, h, w)
    # Sparse, negative and large ids: the translation compares ids exactly and pools per image.
    inst = torch.tensor([-7, 0, 3, 2**40 + 1, 2**40])[torch.randint(0, 5, (n, 1, h, w))]
    label = torch.randint(0, 5, (n, 1, h, w))
    with torch.no_grad():
        expected = model(x, inst, label)
    _export(model, (x, inst, label), tmp_path / "m.onnx", dynamo)
    outs = _run_ort(tmp_path / "m.onnx", (x, inst, label))
    assert len(outs) == 4
    for out, ref in zip(outs, expected, strict=True):
        assert out.shape == tuple(ref.shape) and out.dtype == ref.numpy().dtype
        np.testing.assert_allclose(out, ref.numpy(), atol=ATOL, rtol=0)


def test_plain_export_needs_no_registration_call(tmp_path):
    """The translations are found by a plain torch.onnx.export in a fresh process (no pix2pixhd_fast.export)."""
    import subprocess
    import sys

    code = (
        "import torch, pix2pixhd_fast.nn as pn\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), pn.InstanceNormAct(4)).eval()\n"
        f"torch.onnx.export(m, (torch.randn(1, 3, 8, 8),), {str(tmp_path / 'm.onnx')!r}, dynamo=True)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=600)
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert "InstanceNormalization" in check_onnx_graph_ops(model)
