"""Plain-PyTorch definitions of every operator, with the reference pix2pixHD semantics.

These are the test oracle, the fallback when the compiled library is missing, and the baselines that
benchmarks/ measures the kernels against. They are written for clarity, not speed (except where a
baseline is meant to be PyTorch's best plain version, e.g. :func:`instance_avg_pool_scatter`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "instance_boundary",
    "encode_input",
    "instance_avg_pool",
    "instance_avg_pool_loop",
    "instance_avg_pool_scatter",
    "instance_norm_act",
    "instance_norm_act_pad",
    "get_edges",
]


def _ids4(inst: torch.Tensor) -> torch.Tensor:
    """[N,H,W] or [N,1,H,W] -> [N,1,H,W] (ids kept in their dtype: never through fp16)."""
    if inst.dim() == 3:
        inst = inst.unsqueeze(1)
    if inst.dim() != 4 or inst.size(1) != 1:
        raise ValueError(f"instance map must have shape [N,1,H,W] or [N,H,W], got {tuple(inst.shape)}")
    return inst


def get_edges(t: torch.Tensor) -> torch.Tensor:
    """The reference pix2pixHD ``get_edges``: [N,1,H,W] ids -> [N,1,H,W] float, 1 on both sides of a boundary."""
    edge = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    dx = t[:, :, :, 1:] != t[:, :, :, :-1]
    dy = t[:, :, 1:, :] != t[:, :, :-1, :]
    edge[:, :, :, 1:] |= dx
    edge[:, :, :, :-1] |= dx
    edge[:, :, 1:, :] |= dy
    edge[:, :, :-1, :] |= dy
    return edge.float()


def instance_boundary(inst: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boundary map of an instance map. inst: [N,1,H,W] or [N,H,W] ids -> [N,1,H,W] of ``dtype``."""
    return get_edges(_ids4(inst)).to(dtype)


def encode_input(
    label: torch.Tensor,
    inst: torch.Tensor | None,
    label_nc: int,
    feat: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """The reference input encoding: one-hot scatter of ``label`` + ``get_edges(inst)`` + ``feat``, by ``cat``.

    label: [N,1,H,W] or [N,H,W] ids in [0, label_nc); inst: like label or None; feat: [N,Cf,H,W] or None.
    Returns [N, label_nc + (inst is not None) + Cf, H, W] of ``dtype`` in ``memory_format``.
    """
    label = _ids4(label)
    n, _, h, w = label.shape
    one_hot = torch.zeros(n, label_nc, h, w, device=label.device, dtype=torch.float32)
    one_hot.scatter_(1, label.long(), 1.0)
    parts = [one_hot]
    if inst is not None:
        parts.append(get_edges(_ids4(inst)))
    if feat is not None:
        parts.append(feat.float())
    out = torch.cat(parts, dim=1) if len(parts) > 1 else one_hot
    return out.to(dtype).contiguous(memory_format=memory_format)


def instance_avg_pool_loop(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """The reference Encoder's pooling: a Python loop over images, ``np.unique`` ids and channels.

    feat: [N,C,H,W] float; inst: [N,1,H,W] or [N,H,W]. Cost grows with the number of instances and
    syncs the host on every id: this is the baseline the kernels are measured against.
    """
    inst = _ids4(inst)
    out = feat.clone()
    for b in range(feat.size(0)):
        ids = np.unique(inst[b].cpu().numpy())
        for i in ids:
            mask = inst[b, 0] == torch.as_tensor(i, dtype=inst.dtype, device=inst.device)
            for j in range(feat.size(1)):
                vals = feat[b, j][mask]
                out[b, j][mask] = vals.float().mean().to(feat.dtype)
    return out


def instance_avg_pool_scatter(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """Vectorised pooling with ``torch.unique`` + ``scatter_reduce(mean)``: PyTorch's best plain version.

    Accumulates in float32 (float64 for float64 input); returns ``feat``'s dtype.
    """
    inst = _ids4(inst)
    n, c, h, w = feat.shape
    acc = torch.float64 if feat.dtype == torch.float64 else torch.float32
    # Make ids unique across images, then compact them to 0..K-1.
    ids = inst.reshape(n, h * w)
    if ids.is_floating_point():
        ids = ids.double()
    uniq, inverse = torch.unique(ids, return_inverse=True)  # inverse: [N, HW] values in [0, K)
    k = uniq.numel()
    key = inverse + torch.arange(n, device=feat.device).unsqueeze(1) * k  # [N, HW]
    src = feat.reshape(n, c, h * w).to(acc).permute(1, 0, 2).reshape(c, n * h * w)
    index = key.reshape(1, -1).expand(c, -1)
    sums = torch.zeros(c, n * max(k, 1), dtype=acc, device=feat.device)
    means = sums.scatter_reduce(1, index, src, reduce="mean", include_self=False)
    out = means.gather(1, index).reshape(c, n, h * w).permute(1, 0, 2).reshape(n, c, h, w)
    return out.to(feat.dtype).contiguous(memory_format=output_memory_format(feat))


def instance_avg_pool(feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
    """Instance-wise average pooling + broadcast (the oracle: :func:`instance_avg_pool_scatter`)."""
    return instance_avg_pool_scatter(feat, inst)


def instance_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
) -> torch.Tensor:
    """``nn.InstanceNorm2d`` (no running stats) + optional affine + LeakyReLU(negative_slope).

    x: [N,C,H,W]; weight/bias: [C] or None. Computes in float32 (float64 for float64), returns x's dtype.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if weight is None and bias is not None:
        # Same maths with an explicit unit weight. F.instance_norm's bias-without-weight path on CUDA gives wrong
        # gradients in torch 2.11; the explicit weight keeps the oracle on its common path.
        weight = torch.ones_like(bias)
    y = F.instance_norm(
        x.to(acc),
        weight=None if weight is None else weight.to(acc),
        bias=None if bias is None else bias.to(acc),
        eps=eps,
    )
    if negative_slope != 1.0:
        y = F.leaky_relu(y, negative_slope)
    return y.to(x.dtype).contiguous(memory_format=output_memory_format(x))


def instance_norm_act_pad(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
    pad: int = 0,
) -> torch.Tensor:
    """``ReflectionPad2d(pad)(instance_norm_act(x, weight, bias, eps, negative_slope) + residual)``.

    x: [N,C,H,W]; residual: [N,C,H,W] of x's dtype or None. Returns [N,C,H+2*pad,W+2*pad] of x's dtype, in x's
    output memory format (the ResnetBlock's ``x + conv_block(x)`` followed by the next block's first pad).

    The norm is written out with ``var_mean`` rather than ``F.instance_norm``: torch 2.14.1's CPU instance norm
    backward returns wrong input gradients when the incoming gradient is channels-last, which the pad's backward
    hands it for channels-last x.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa = x.to(acc)
    var, mean = torch.var_mean(xa, dim=(2, 3), keepdim=True, correction=0)
    y = (xa - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(acc).view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.to(acc).view(1, -1, 1, 1)
    if negative_slope != 1.0:
        y = F.leaky_relu(y, negative_slope)
    y = y.to(x.dtype)
    if residual is not None:
        y = y + residual
    if pad:
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    return y.contiguous(memory_format=output_memory_format(x))


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The kernels' output-format rule (csrc/common/op_utils.h: wants_channels_last): channels-last when the
    channel dim of a 4-D tensor has unit stride and more than one channel, else NCHW."""
    if x.dim() == 4 and x.size(1) > 1 and x.stride(1) == 1:
        return torch.channels_last
    return torch.contiguous_format
