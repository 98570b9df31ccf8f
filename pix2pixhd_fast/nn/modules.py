"""Drop-in modules: fused instance norm + activation, instance pooling, instance boundaries."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops


class InstanceNormAct(nn.Module):
    """``nn.InstanceNorm2d`` (track_running_stats=False) + LeakyReLU(negative_slope), fused.

    Same parameters and state_dict keys as ``nn.InstanceNorm2d(num_features, eps, affine=affine)``
    (``weight``, ``bias`` when affine), so checkpoints load either way. ``negative_slope`` 0.0 is ReLU,
    1.0 no activation. Input/output: ``Tensor[N, C, H, W]`` (NCHW or channels-last, kept).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False, negative_slope: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.negative_slope = negative_slope
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            # TorchScript calls the registered op directly (the Python API below is not scriptable).
            op = torch.ops.pix2pixhd_fast.instance_norm_act
            return op(x, self.weight, self.bias, self.eps, self.negative_slope)[0]
        return self._eager_norm(x)

    @torch.jit.unused
    def _eager_norm(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() and ops.has_ops():
            # The TorchScript ONNX exporter traces with symbolic sizes, which the checks below cannot compare.
            op = torch.ops.pix2pixhd_fast.instance_norm_act
            return op(x, self.weight, self.bias, self.eps, self.negative_slope)[0]
        if x.dim() != 4 or x.size(1) != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects [N,{self.num_features},H,W], got {tuple(x.shape)}"
            )
        return ops.instance_norm_act(x, self.weight, self.bias, self.eps, self.negative_slope)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, negative_slope={self.negative_slope}"


class InstanceNormReLU(InstanceNormAct):
    """Fused ``InstanceNorm2d`` + ``ReLU`` (``negative_slope`` 0.0 by default; 0.2 gives the D's LeakyReLU)."""


class InstanceNormActPad(InstanceNormAct):
    """``InstanceNormAct`` + optional residual add + ``nn.ReflectionPad2d(pad)``, fused (``instance_norm_act_pad``).

    ``forward(x, residual=None)``: ``Tensor[N, C, H, W] -> Tensor[N, C, H + 2*pad, W + 2*pad]``, computing
    ``pad(act(norm(x)) + residual)`` in one pass, so the following convolution reads its padded input without a
    pad kernel. ``residual`` (``Tensor[N, C, H, W]``, x's dtype, any strides) is the ResnetBlock's skip input.
    Same parameters and state_dict keys as ``nn.InstanceNorm2d(num_features, eps, affine=affine)``; the pad has
    none. Needs ``pad < H`` and ``pad < W`` (as ReflectionPad2d).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = False,
        negative_slope: float = 0.0,
        pad: int = 0,
    ):
        super().__init__(num_features, eps=eps, affine=affine, negative_slope=negative_slope)
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"pad must be an int >= 0, got {pad!r}")
        self.pad = pad

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        if torch.jit.is_scripting():
            return torch.ops.pix2pixhd_fast.instance_norm_act_pad(
                x, self.weight, self.bias, residual, self.eps, self.negative_slope, self.pad
            )[0]
        return self._eager(x, residual)

    @torch.jit.unused
    def _eager(self, x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045
        # The Python API: argument checks with Python exceptions, and the reference when the library is missing.
        if torch.jit.is_tracing() and ops.has_ops():
            # The TorchScript ONNX exporter traces with symbolic sizes, which the checks below cannot compare.
            return torch.ops.pix2pixhd_fast.instance_norm_act_pad(
                x, self.weight, self.bias, residual, self.eps, self.negative_slope, self.pad
            )[0]
        if x.dim() != 4 or x.size(1) != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects [N,{self.num_features},H,W], got {tuple(x.shape)}"
            )
        return ops.instance_norm_act_pad(x, self.weight, self.bias, residual, self.eps, self.negative_slope, self.pad)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"


class InstanceAvgPool(nn.Module):
    """Instance-wise average pooling + broadcast: ``(feat [N,C,H,W], inst [N,1,H,W]) -> [N,C,H,W]``."""

    def forward(self, feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return torch.ops.pix2pixhd_fast.instance_avg_pool(feat, inst)
        return self._eager_pool(feat, inst)

    @torch.jit.unused
    def _eager_pool(self, feat: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        return ops.instance_avg_pool(feat, inst)


class InstanceBoundary(nn.Module):
    """Instance boundary map: ``inst [N,1,H,W] -> edge [N,1,H,W]`` of ``dtype`` (the reference get_edges)."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype

    def forward(self, inst: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return torch.ops.pix2pixhd_fast.instance_boundary(inst, self.dtype)
        return self._eager_boundary(inst)

    @torch.jit.unused
    def _eager_boundary(self, inst: torch.Tensor) -> torch.Tensor:
        return ops.instance_boundary(inst, self.dtype)
