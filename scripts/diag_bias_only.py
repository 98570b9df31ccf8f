"""Diagnose bias-without-weight gradients on CUDA: ours vs F.instance_norm (weight=None) vs unit weight vs CPU."""

import torch
import torch.nn.functional as F

from pix2pixhd_fast import ops

torch.manual_seed(0)
x = (torch.randn(2, 3, 4, 5, dtype=torch.float64) * 2 + 1).cuda().requires_grad_()
b = torch.randn(3, dtype=torch.float64).cuda().requires_grad_()
gy = torch.randn_like(x)


def grads(fn):
    return [g.cpu() for g in torch.autograd.grad(fn(), (x, b), gy)]


ours = grads(lambda: ops.instance_norm_act(x, None, b, 1e-5, 0.2))
none_w = grads(lambda: F.leaky_relu(F.instance_norm(x, weight=None, bias=b, eps=1e-5), 0.2))
unit_w = grads(lambda: F.leaky_relu(F.instance_norm(x, weight=torch.ones_like(b), bias=b, eps=1e-5), 0.2))
xc, bc = x.detach().cpu().requires_grad_(), b.detach().cpu().requires_grad_()
y_cpu = F.leaky_relu(F.instance_norm(xc, weight=None, bias=bc, eps=1e-5), 0.2)
cpu = list(torch.autograd.grad(y_cpu, (xc, bc), gy.cpu()))
for name, g in (("ours", ours), ("F weight=None cuda", none_w), ("F unit weight cuda", unit_w)):
    dx, db = (g[0] - cpu[0]).abs().max(), (g[1] - cpu[1]).abs().max()
    print(f"{name:>20}: max|gx - cpu| {dx:.3e}  max|gb - cpu| {db:.3e}")
