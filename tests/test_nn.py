"""Drop-in modules: same state_dict as the PyTorch modules they replace, same outputs."""

import pytest
import torch
from torch import nn

from pix2pixhd_fast import reference
from pix2pixhd_fast.nn import InstanceAvgPool, InstanceBoundary, InstanceNormAct, InstanceNormReLU

from .conftest import DEVICES


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_instance_norm_relu_matches_torch(seed, device, affine, slope):
    torch_norm = nn.InstanceNorm2d(6, affine=affine).to(device)
    if affine:
        with torch.no_grad():
            torch_norm.weight.uniform_(0.5, 1.5)
            torch_norm.bias.uniform_(-0.5, 0.5)
    fused = InstanceNormReLU(6, affine=affine, negative_slope=slope).to(device)
    # state_dicts are interchangeable (strict) in both directions
    fused.load_state_dict(torch_norm.state_dict(), strict=True)
    nn.InstanceNorm2d(6, affine=affine).to(device).load_state_dict(fused.state_dict(), strict=True)
    assert list(fused.state_dict()) == list(torch_norm.state_dict())

    x = torch.randn(3, 6, 9, 13, device=device).to(memory_format=torch.channels_last)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1 = nn.functional.leaky_relu(torch_norm(x1), slope)
    y2 = fused(x2)
    torch.testing.assert_close(y2, y1, atol=1e-5, rtol=1e-5)
    assert y2.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-4, rtol=1e-4)
    if affine:
        torch.testing.assert_close(fused.weight.grad, torch_norm.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fused.bias.grad, torch_norm.bias.grad, atol=1e-4, rtol=1e-4)


def test_instance_norm_act_identity_slope_and_errors(seed):
    m = InstanceNormAct(4, negative_slope=1.0)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(m(x), nn.functional.instance_norm(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expects \[N,4,H,W\]"):
        m(torch.randn(2, 3, 5, 5))
    assert "negative_slope=1.0" in repr(m)


@pytest.mark.parametrize("device", DEVICES)
def test_instance_avg_pool_and_boundary_modules(seed, device):
    inst = torch.randint(-3, 3, (2, 1, 17, 10), device=device) * 70001
    feat = torch.randn(2, 3, 17, 10, device=device)
    torch.testing.assert_close(InstanceAvgPool()(feat, inst), reference.instance_avg_pool(feat, inst))
    torch.testing.assert_close(InstanceBoundary()(inst), reference.get_edges(inst))
    assert InstanceBoundary(torch.uint8)(inst).dtype == torch.uint8


def test_torch_export_through_the_ops(seed):
    """torch.export traces the custom ops (fake kernels) and the exported program matches eager."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(9, 8, 3, padding=1)
            self.norm = InstanceNormReLU(8, affine=True)

        def forward(self, label, inst):
            from pix2pixhd_fast import ops

            x = ops.encode_input(label, inst, 8)
            return ops.instance_avg_pool(self.norm(self.conv(x)), inst)

    net = Net()
    label = torch.randint(0, 8, (2, 1, 16, 24))
    inst = torch.randint(0, 5, (2, 1, 16, 24)) * 1000
    ep = torch.export.export(net, (label, inst))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("encode_input", "instance_norm_act", "instance_avg_pool"):
        assert f"pix2pixhd_fast.{op}.default" in targets, targets
    torch.testing.assert_close(ep.module()(label, inst), net(label, inst))
