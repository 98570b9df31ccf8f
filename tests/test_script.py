"""torch.jit.script of our modules and of a converted model: outputs equal eager."""

import copy

import pytest
import torch
from torch import nn

from pix2pixhd_fast import ops
from pix2pixhd_fast.nn import InstanceAvgPool, InstanceBoundary, InstanceNormAct, InstanceNormActPad
from pix2pixhd_fast.nn.convert import convert_model

from .conftest import DEVICES

pytestmark = pytest.mark.skipif(not ops.has_ops(), reason="needs the compiled operator library")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.2, 1.0])
def test_instance_norm_act_scripts(device, affine, slope, seed):
    m = InstanceNormAct(5, affine=affine, negative_slope=slope).to(device)
    if affine:
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
    x = torch.randn(2, 5, 7, 6, device=device)
    s = torch.jit.script(m)
    torch.testing.assert_close(s(x), m(x), atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_pad_pool_boundary_script(device, seed):
    pad = InstanceNormActPad(4, affine=True, negative_slope=0.2, pad=2).to(device)
    x, r = torch.randn(2, 4, 6, 7, device=device), torch.randn(2, 4, 6, 7, device=device)
    torch.testing.assert_close(torch.jit.script(pad)(x, r), pad(x, r), atol=0, rtol=0)
    inst = torch.randint(0, 3, (2, 1, 6, 7), device=device)
    pool = InstanceAvgPool()
    torch.testing.assert_close(torch.jit.script(pool)(x, inst), pool(x, inst), atol=0, rtol=0)
    for dtype in (torch.float32, torch.uint8):
        b = InstanceBoundary(dtype)
        out = torch.jit.script(b)(inst)
        assert out.dtype == dtype
        torch.testing.assert_close(out, b(inst), atol=0, rtol=0)


def test_converted_model_scripts(seed):
    plain = nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(3, 6, 3),
        nn.InstanceNorm2d(6, affine=True),
        nn.ReLU(True),
        nn.ReflectionPad2d(1),
        nn.Conv2d(6, 6, 3),
        nn.InstanceNorm2d(6),
        nn.LeakyReLU(0.2),
        nn.Conv2d(6, 3, 1),
    ).eval()
    with torch.no_grad():
        plain[2].weight.uniform_(0.5, 1.5)
        plain[2].bias.normal_()
    model = convert_model(copy.deepcopy(plain))
    assert any(isinstance(m, InstanceNormActPad) for m in model.modules())
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 10, 9)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=0, rtol=0)
        torch.testing.assert_close(scripted(x), plain(x), atol=1e-5, rtol=1e-5)
