"""Public functional API of the custom operators (namespace ``torch.ops.pix2pixhd_fast``).

Each function runs the compiled CPU/CUDA kernel; the pure-PyTorch reference (:mod:`pix2pixhd_fast.reference`)
runs instead only where it was requested (P2PHD_DISABLE_EXT=1 or P2PHD_ALLOW_FALLBACK=1, see ``_lib``): without
the library the package does not import. Fake (meta) kernels are registered here
with ``torch.library``, so the ops trace under ``torch.compile(fullgraph=True)`` and ``torch.export``; the
autograd kernels are C++ (csrc/autograd/autograd.cpp: a Python autograd formula added 35-45 us per call), so
the ops differentiate like built-in ops. The references differentiate through plain PyTorch.

Value checks that need to look at the data (label range, fractional float ids) happen inside the CPU
kernels; for CUDA tensors they run here, behind ``check=True`` (one host sync), because a kernel must never
sync or raise a device-side assert. CUDA-graph users pass ``check=False`` (then out-of-range labels give an
all-zero one-hot for that pixel). Under torch.compile the data checks are skipped on CUDA.
"""

from __future__ import annotations

import warnings

import torch

from . import _lib, reference

__all__ = [
    "instance_boundary",
    "encode_input",
    "instance_avg_pool",
    "instance_norm_act",
    "instance_norm_relu",
    "instance_norm_act_pad",
    "has_ops",
]

_ID_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.bool)


def has_ops() -> bool:
    """True when the compiled kernels are loaded; False where the references were requested instead."""
    return _lib.load()


# The fake kernels' output-format rule is the kernels' one (csrc/common/op_utils.h: wants_channels_last).
_fmt = reference.output_memory_format


# ----------------------------------------------------------------------------------------------------
# Input validation shared by the Python API and the fake kernels (shape/dtype/device: no data access).


def _check_ids(t: torch.Tensor, name: str) -> tuple[int, int, int]:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not (t.dim() == 3 or (t.dim() == 4 and t.size(1) == 1)):
        raise ValueError(f"{name} must have shape [N,1,H,W] or [N,H,W], got {tuple(t.shape)}")
    if t.dtype not in _ID_DTYPES:
        raise TypeError(f"{name} must hold integer ids (uint8/int8/int16/int32/int64, or float), got {t.dtype}")
    return t.size(0), t.size(-2), t.size(-1)


def _check_float(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def _check_same_device(a: torch.Tensor, an: str, b: torch.Tensor, bn: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{an} and {bn} must be on the same device, got {a.device} and {b.device}")


def _data_checks_here(t: torch.Tensor, check: bool) -> bool:
    """Whether this wrapper must check values itself (the CPU kernels check inside, without a sync)."""
    if not check or torch.compiler.is_compiling():
        return False
    return t.device.type != "cpu" or not _lib.load()


def _check_integral(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and t.numel() and bool((t != torch.trunc(t)).any()):
        raise ValueError(f"{name} holds fractional values; ids must be integers (use an integer dtype)")


def _check_labels(label: torch.Tensor, label_nc: int) -> None:
    _check_integral(label, "label")
    if label.numel():
        lo, hi = label.min(), label.max()
        if bool(lo < 0) or bool(hi >= label_nc):
            raise ValueError(
                f"label values must lie in [0, label_nc={label_nc}), got min {lo.item()} and max {hi.item()}"
            )


# ----------------------------------------------------------------------------------------------------
# Public API


def instance_boundary(inst: torch.Tensor, dtype: torch.dtype = torch.float32, check: bool = True) -> torch.Tensor:
    """Instance boundary map (the reference ``get_edges``), in one pass.

    Args:
        inst: ``Tensor[N, 1, H, W]`` or ``Tensor[N, H, W]`` of instance ids (any integer dtype, or float
            holding integral values). Ids are compared as integers, never through fp16.
        dtype: output dtype (float32, float16, bfloat16, float64, uint8 or bool).
        check: on CUDA, verify float ids are integral (one host sync).

    Returns:
        ``Tensor[N, 1, H, W]`` of ``dtype``: 1 where a pixel's id differs from any existing 4-neighbour.
    """
    _check_ids(inst, "inst")
    if dtype not in _OUT_DTYPES:
        raise TypeError(f"instance_boundary: unsupported output dtype {dtype}")
    if _data_checks_here(inst, check):
        _check_integral(inst, "inst")
    if not _lib.load():
        return reference.instance_boundary(inst, dtype)
    return torch.ops.pix2pixhd_fast.instance_boundary(inst, dtype)


def encode_input(
    label: torch.Tensor,
    inst: torch.Tensor | None,
    label_nc: int,
    feat: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
    check: bool = True,
) -> torch.Tensor:
    """Fused generator/discriminator input: one-hot(label) ++ boundary(inst) ++ feat, written in one pass.

    Args:
        label: ``Tensor[N, 1, H, W]`` or ``Tensor[N, H, W]`` semantic ids in ``[0, label_nc)``.
        inst: instance ids shaped like ``label``, or None (``--no_instance``).
        label_nc: number of semantic classes.
        feat: optional ``Tensor[N, Cf, H, W]`` float features (instance feature embedding); differentiable.
        dtype: output float dtype.
        memory_format: ``torch.contiguous_format`` or ``torch.channels_last``.
        check: verify label range / integral ids (on CUDA this syncs once; the CPU kernel always checks).

    Returns:
        ``Tensor[N, label_nc + (inst is not None) + Cf, H, W]`` of ``dtype`` in ``memory_format``.
    """
    n, h, w = _check_ids(label, "label")
    if not isinstance(label_nc, int) or label_nc <= 0:
        raise ValueError(f"label_nc must be a positive int, got {label_nc!r}")
    if inst is not None:
        if _check_ids(inst, "inst") != (n, h, w):
            raise ValueError(f"inst shape {tuple(inst.shape)} does not match label shape {tuple(label.shape)}")
        _check_same_device(label, "label", inst, "inst")
    if feat is not None:
        _check_float(feat, "feat")
        if feat.dim() != 4 or (feat.size(0), feat.size(2), feat.size(3)) != (n, h, w):
            raise ValueError(f"feat must have shape [N,Cf,H,W] = [{n},Cf,{h},{w}], got {tuple(feat.shape)}")
        _check_same_device(label, "label", feat, "feat")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"encode_input: output dtype must be a float dtype, got {dtype}")
    if memory_format not in (torch.contiguous_format, torch.channels_last):
        raise ValueError(f"encode_input: memory_format must be contiguous_format or channels_last, got {memory_format}")
    if _data_checks_here(label, check):
        _check_labels(label, label_nc)
        if inst is not None:
            _check_integral(inst, "inst")
    if not _lib.load():
        return reference.encode_input(label, inst, label_nc, feat, dtype, memory_format)
    return torch.ops.pix2pixhd_fast.encode_input(
        label, inst, label_nc, feat, dtype, memory_format == torch.channels_last
    )


def instance_avg_pool(feat: torch.Tensor, inst: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Instance-wise average pooling, broadcast back to every pixel of the instance.

    Args:
        feat: ``Tensor[N, C, H, W]`` float (fp32/fp16/bf16/fp64; accumulation in fp32, fp64 for fp64).
        inst: ``Tensor[N, 1, H, W]`` or ``Tensor[N, H, W]`` ids: arbitrary (negative, > 65535, sparse).
        check: on CUDA, verify float ids are integral (one host sync).

    Returns:
        ``Tensor[N, C, H, W]`` like ``feat``: ``out[n, c, p]`` = mean of ``feat[n, c, q]`` over the pixels q
        of image n with ``inst[n, q] == inst[n, p]``. Differentiable in ``feat``.
    """
    _check_float(feat, "feat")
    n, h, w = _check_ids(inst, "inst")
    if feat.dim() != 4 or (feat.size(0), feat.size(2), feat.size(3)) != (n, h, w):
        raise ValueError(f"feat {tuple(feat.shape)} and inst {tuple(inst.shape)} must share N, H and W")
    _check_same_device(feat, "feat", inst, "inst")
    if _data_checks_here(inst, check):
        _check_integral(inst, "inst")
    if not _lib.load():
        return reference.instance_avg_pool(feat, inst)
    return torch.ops.pix2pixhd_fast.instance_avg_pool(feat, inst)


def instance_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
) -> torch.Tensor:
    """Fused instance norm + optional affine + LeakyReLU.

    Args:
        x: ``Tensor[N, C, H, W]`` fp32/fp16/bf16/fp64, NCHW or channels-last (kept in the output).
        weight, bias: optional ``Tensor[C]`` (any float dtype; fp32 under autocast is fine).
        eps: added to the biased variance over H*W (``nn.InstanceNorm2d`` semantics, no running stats).
        negative_slope: 0.0 = ReLU, 0.2 = the discriminator's LeakyReLU, 1.0 = no activation.

    Returns:
        ``Tensor[N, C, H, W]`` of x's dtype. Differentiable in x, weight and bias.
    """
    _check_float(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must have shape [N,C,H,W], got {tuple(x.shape)}")
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None:
            _check_float(t, name)
            if t.shape != (x.size(1),):
                raise ValueError(f"{name} must have shape [C] = [{x.size(1)}], got {tuple(t.shape)}")
            _check_same_device(x, "x", t, name)
    if not _lib.load():
        return reference.instance_norm_act(x, weight, bias, eps, negative_slope)
    return torch.ops.pix2pixhd_fast.instance_norm_act(x, weight, bias, float(eps), float(negative_slope))[0]


def instance_norm_relu(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """``instance_norm_act`` with ReLU (negative_slope 0): ``Tensor[N,C,H,W] -> Tensor[N,C,H,W]``."""
    return instance_norm_act(x, weight, bias, eps, 0.0)


def instance_norm_act_pad(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
    pad: int = 0,
) -> torch.Tensor:
    """Fused instance norm + optional affine + LeakyReLU + residual add + ReflectionPad2d, in one pass.

    ``y = ReflectionPad2d(pad)(instance_norm_act(x, weight, bias, eps, negative_slope) + residual)``: the norm
    writes straight into the padded buffer that a following unpadded convolution reads, and the backward folds
    the padded gradient's border back onto the interior in the same pass as the norm backward.

    Args:
        x: ``Tensor[N, C, H, W]`` fp32/fp16/bf16/fp64, NCHW or channels-last (kept in the output).
        weight, bias: optional ``Tensor[C]``.
        residual: optional ``Tensor[N, C, H, W]`` of x's dtype, any strides (e.g. ``y_prev[:, :, p:-p, p:-p]``,
            the interior of the previous block's padded output: read in place, not copied).
        eps: added to the biased variance over H*W.
        negative_slope: 0.0 = ReLU, 0.2 = LeakyReLU(0.2), 1.0 = no activation.
        pad: reflection padding on every side, ``0 <= pad < H`` and ``pad < W``.

    Returns:
        ``Tensor[N, C, H + 2*pad, W + 2*pad]`` of x's dtype. Differentiable in x, weight, bias and residual.
    """
    _check_float(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must have shape [N,C,H,W], got {tuple(x.shape)}")
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is not None:
            _check_float(t, name)
            if t.shape != (x.size(1),):
                raise ValueError(f"{name} must have shape [C] = [{x.size(1)}], got {tuple(t.shape)}")
            _check_same_device(x, "x", t, name)
    _check_pad_args(x, residual, pad)
    if not _lib.load():
        return reference.instance_norm_act_pad(x, weight, bias, residual, eps, negative_slope, pad)
    return torch.ops.pix2pixhd_fast.instance_norm_act_pad(
        x, weight, bias, residual, float(eps), float(negative_slope), int(pad)
    )[0]


def _check_pad_args(x: torch.Tensor, residual: torch.Tensor | None, pad: int) -> None:
    """The kernels' pad/residual rules (csrc/common/instance_norm_act_pad_host.h), for the API and the fake."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad > 0 and (pad >= x.size(2) or pad >= x.size(3)):
        raise ValueError(f"reflection padding needs pad < H and pad < W, got pad {pad} for x of shape {tuple(x.shape)}")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} must equal x shape {tuple(x.shape)}")
        if residual.dtype != x.dtype:
            raise ValueError(f"residual dtype {residual.dtype} must equal x dtype {x.dtype}")
        _check_same_device(x, "x", residual, "residual")


# ----------------------------------------------------------------------------------------------------
# Fake kernels (registered once the library is loaded; autograd is registered by the library itself).


def _register() -> None:
    lib = "pix2pixhd_fast::"

    @torch.library.register_fake(lib + "instance_boundary")
    def _(inst, dtype):
        n, h, w = _check_ids(inst, "inst")
        return inst.new_empty((n, 1, h, w), dtype=dtype)

    @torch.library.register_fake(lib + "encode_input")
    def _(label, inst, label_nc, feat, dtype, channels_last):
        n, h, w = _check_ids(label, "label")
        c = label_nc + (inst is not None) + (feat.size(1) if feat is not None else 0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty((n, c, h, w), dtype=dtype, device=label.device, memory_format=fmt)

    @torch.library.register_fake(lib + "instance_avg_pool")
    def _(feat, inst):
        return torch.empty(feat.shape, dtype=feat.dtype, device=feat.device, memory_format=_fmt(feat))

    @torch.library.register_fake(lib + "instance_norm_act")
    def _(x, weight, bias, eps, negative_slope):
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_fmt(x))
        # mean/rstd in the accumulation dtype: float32, float64 for float64 x (exact fp64 gradients).
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        stats = x.new_empty((x.size(0), x.size(1)), dtype=acc)
        return y, stats, stats.clone()

    @torch.library.register_fake(lib + "instance_norm_act_backward")
    def _(grad_y, x, mean, rstd, weight, bias, negative_slope, output_mask):
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_fmt(x))
        gw = torch.empty_like(weight) if weight is not None and output_mask[1] else x.new_empty((0,))
        gb = torch.empty_like(bias) if bias is not None and output_mask[2] else x.new_empty((0,))
        return gx, gw, gb

    @torch.library.register_fake(lib + "instance_norm_act_pad")
    def _(x, weight, bias, residual, eps, negative_slope, pad):
        _check_pad_args(x, residual, pad)
        n, c, h, w = x.shape
        y = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype, device=x.device, memory_format=_fmt(x))
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        stats = x.new_empty((n, c), dtype=acc)
        return y, stats, stats.clone()

    @torch.library.register_fake(lib + "instance_norm_act_pad_backward")
    def _(grad_y, x, mean, rstd, weight, bias, negative_slope, pad, output_mask):
        gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_fmt(x))
        gw = torch.empty_like(weight) if weight is not None and output_mask[1] else x.new_empty((0,))
        gb = torch.empty_like(bias) if bias is not None and output_mask[2] else x.new_empty((0,))
        gr = torch.empty_like(gx) if output_mask[3] else x.new_empty((0,))
        return gx, gw, gb, gr


if _lib.load():
    _register()
    # ONNX translations for both torch.onnx exporters (onnxscript is imported only when an export needs it). A
    # torch whose exporter internals differ must not stop the operators from loading: ONNX export then says why.
    try:
        from .onnx_ops import install_onnx_hook

        install_onnx_hook()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"pix2pixhd_fast: ONNX translations not registered ({e})", stacklevel=2)
    if not torch._C._dispatch_has_kernel_for_dispatch_key("pix2pixhd_fast::instance_norm_act", "Autograd"):
        # A library built before csrc/autograd/autograd.cpp: its ops would run, but gradients through them
        # would be silently dropped (autograd's fallback only warns in backward).
        warnings.warn(
            "pix2pixhd_fast: the loaded operator library has no autograd kernels (built from older sources); "
            "rebuild it (`make install`): gradients through its ops are not computed",
            stacklevel=2,
        )
