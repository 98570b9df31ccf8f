"""Double backward through the fused norms: gradgradcheck in fp64 and an R1 penalty through a discriminator."""

import copy

import pytest
import torch
from torch import nn

from pix2pixhd_fast import ops, reference
from pix2pixhd_fast.nn.convert import convert_model

from .conftest import DEVICES

pytestmark = pytest.mark.skipif(not ops.has_ops(), reason="needs the compiled operator library")


def _params(device, affine, bias_only=False):
    if not affine:
        return None, None
    w = None if bias_only else torch.rand(3, dtype=torch.float64, device=device).add_(0.5).requires_grad_()
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    return w, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine,bias_only", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("slope", [0.0, 0.2, 1.0])
def test_instance_norm_act_gradgradcheck(device, affine, bias_only, slope, seed):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    w, b = _params(device, affine, bias_only)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def f(*args):
        it = iter(args)
        xx = next(it)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        return torch.ops.pix2pixhd_fast.instance_norm_act(xx, ww, bb, 1e-5, slope)[0]

    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pad,residual", [(0, True), (2, False), (2, True)])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_instance_norm_act_pad_gradgradcheck(device, pad, residual, slope, seed):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    w, b = _params(device, True)
    r = torch.randn(2, 3, 5, 4, dtype=torch.float64, device=device, requires_grad=True) if residual else None
    inputs = tuple(t for t in (x, w, b, r) if t is not None)

    def f(*args):
        rr = args[3] if residual else None
        return torch.ops.pix2pixhd_fast.instance_norm_act_pad(args[0], args[1], args[2], rr, 1e-5, slope, pad)[0]

    assert torch.autograd.gradgradcheck(f, inputs)


def _discriminator():
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=2, padding=2),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(8, 16, 4, stride=2, padding=2),
        nn.InstanceNorm2d(16, affine=True),
        nn.LeakyReLU(0.2, True),
        nn.ReflectionPad2d(1),
        nn.Conv2d(16, 16, 3),
        nn.InstanceNorm2d(16),
        nn.LeakyReLU(0.2, True),
        nn.Conv2d(16, 1, 3, padding=1),
    )


def _r1(model, real):
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(real).sum(), real, create_graph=True)
    penalty = grad.pow(2).flatten(1).sum(1).mean()
    params = [p for p in model.parameters()]
    return penalty, torch.autograd.grad(penalty, params, materialize_grads=True)


@pytest.mark.parametrize("device", DEVICES)
def test_r1_penalty_through_converted_discriminator(device, seed):
    plain = _discriminator().double().to(device)
    with torch.no_grad():
        plain[3].weight.uniform_(0.5, 1.5)
        plain[3].bias.normal_()
    fused = convert_model(copy.deepcopy(plain))
    names = {type(m).__name__ for m in fused.modules()}
    assert {"InstanceNormAct", "InstanceNormActPad"} <= names
    real = torch.randn(2, 3, 16, 16, dtype=torch.float64, device=device)
    p_ref, g_ref = _r1(plain, real)
    p_ours, g_ours = _r1(fused, real)
    torch.testing.assert_close(p_ours, p_ref, atol=1e-9, rtol=1e-7)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_first_order_gradients_unchanged(seed):
    """Without create_graph the fused backward runs; it must still agree with the reference."""
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    w, b = _params("cpu", True)
    g = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    ours = torch.autograd.grad(ops.instance_norm_act(x, w, b, 1e-5, 0.2), (x, w, b), g)
    ref = torch.autograd.grad(reference.instance_norm_act(x, w, b, 1e-5, 0.2), (x, w, b), g)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r)
