"""ONNX translations of the custom operators, in standard ONNX operators, for both ``torch.onnx`` exporters.

============================  ==========================================================================
ours                          ONNX
============================  ==========================================================================
instance_norm_act             ``InstanceNormalization`` + ``Relu`` / ``LeakyRelu`` (slope 1.0: nothing)
instance_norm_act_pad         the same, ``Add`` of the residual, ``Pad`` (mode ``reflect``)
instance_boundary             ``Slice`` of neighbours, ``Equal`` + ``Not`` on the ids, ``Cast``, zero ``Pad``,
                              ``Max``
encode_input                  ``Equal`` of the labels against ``Range(label_nc)`` + ``Cast`` (one-hot), the
                              boundary above, ``Concat``
instance_avg_pool             ``Unique`` of the ids, ``ScatterElements(reduction="add")`` sums and counts,
                              ``Div``, ``GatherElements`` back to the pixels
============================  ==========================================================================

The norms' second and third outputs (mean, rstd ``[N, C]``) are computed too (``GlobalAveragePool`` +
``Flatten``), since the schema returns them; an inference graph never reads them and the exporter's optimizer
drops them.

Registration, so that a plain ``torch.onnx.export(model, args, dynamo=True)`` of any model holding our modules
works without swapping them out:

- ``dynamo=True``: the exporter builds its operator registry from torch's bundled library at every export; the
  translations are added to that library (:func:`register_onnx_translations`). Importing ``onnxscript`` costs
  seconds, so ``pix2pixhd_fast`` does not import it itself: :func:`install_onnx_hook` (called when the operator
  library loads) adds the translations at the moment the exporter imports its library. The same functions are
  also returned by :func:`onnx_translation_table`, for ``torch.onnx.export(..., custom_translation_table=...)``,
  the exporter's documented way, should the bundled-library layout change.
- ``dynamo=False`` (TorchScript exporter, deprecated by PyTorch): symbolic functions registered with
  ``torch.onnx.register_custom_op_symbolic`` (:func:`register_torchscript_symbolics`, also from the hook), all
  ops but ``instance_avg_pool``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "onnx_translation_table",
    "register_onnx_translations",
    "register_torchscript_symbolics",
    "install_onnx_hook",
]

_TORCHLIB_MODULE = "torch.onnx._internal.exporter._torchlib._torchlib_registry"
_SYMBOLIC_OPSET = 15  # CastLike and Shape(start, end); the registration holds for this opset and above
_INT64_MAX = 2**63 - 1


def _ops() -> Any:
    return torch.ops.pix2pixhd_fast


# ----------------------------------------------------------------------------------------------------
# dynamo=True: onnxscript functions (traced: Python branches on None inputs and attribute values)


def _onnx_dtype(dtype: Any) -> Any:
    """The exporter passes a ScalarType argument as a torch.dtype or as an ONNX data type int."""
    import onnx_ir as ir

    if isinstance(dtype, torch.dtype):
        from torch.onnx._internal.exporter import _type_casting

        return _type_casting.torch_dtype_to_onnx_dtype(dtype)
    return ir.DataType(int(dtype))


def _channel_mean(op: Any, x: Any) -> Any:
    """``[N, C, H, W] -> [N, C]`` mean over H and W."""
    return op.Flatten(op.GlobalAveragePool(x), axis=1)


def _norm_act(op: Any, x: Any, weight: Any, bias: Any, eps: float, negative_slope: float) -> tuple[Any, Any, Any]:
    c = _channels(x)

    def param(t: Any, fill: float) -> Any:
        if t is not None:
            return op.CastLike(t, x)
        if c is not None:  # a constant, so converters see a parameter (float16 conversion keeps it in fp32)
            return op.CastLike(op.Constant(value_floats=[fill] * c), x)
        return op.Expand(op.CastLike(fill, x), op.Shape(x, start=1, end=2))

    scale, shift = param(weight, 1.0), param(bias, 0.0)
    y = op.InstanceNormalization(x, scale, shift, epsilon=float(eps))
    if negative_slope == 0.0:
        y = op.Relu(y)
    elif negative_slope != 1.0:
        y = op.LeakyRelu(y, alpha=float(negative_slope))
    mean4 = op.GlobalAveragePool(x)
    centered = op.Sub(x, mean4)
    var = _channel_mean(op, op.Mul(centered, centered))
    rstd = op.Reciprocal(op.Sqrt(op.Add(var, op.CastLike(float(eps), var))))
    return y, op.Flatten(mean4, axis=1), rstd


def _rank(v: Any) -> int:
    if isinstance(v, torch._C.Value):
        return v.type().dim()
    return len(v.shape)


def _channels(v: Any) -> int | None:
    """The static channel count of a 4-D value, None when symbolic."""
    if isinstance(v, torch._C.Value):
        sizes = v.type().varyingSizes() if v.type().dim() == 4 else None
        return sizes[1] if sizes and isinstance(sizes[1], int) else None
    dim = v.shape[1] if v.shape is not None and len(v.shape) == 4 else None
    return dim if isinstance(dim, int) else None


def _is_double(v: Any) -> bool:
    if isinstance(v, torch._C.Value):
        return v.type().scalarType() == "Double"
    return int(v.dtype) == 11


def _ids4(op: Any, ids: Any) -> Any:
    """Ids as ``[N, 1, H, W]`` int64 (Equal is defined for every id dtype only after the cast)."""
    if _rank(ids) == 3:
        ids = op.Unsqueeze(ids, op.Constant(value_ints=[1]))
    return op.Cast(ids, to=7)  # INT64; integral float ids are compared exactly after the cast


def _pad_one(op: Any, t: Any, axis: int, end: bool) -> Any:
    """Zero-pad a 4-D tensor by one element before (or after, ``end``) ``axis``."""
    pads = [0] * 8  # ONNX order: the begin of every axis, then the end of every axis
    pads[axis + 4 * end] = 1
    return op.Pad(t, op.Constant(value_ints=pads), mode="constant")


def _boundary(op: Any, inst: Any, to: int) -> Any:
    """``[N, 1, H, W]`` int64 ids -> boundary map of ONNX type ``to``: a difference marks both neighbours."""
    edges = []
    for axis in (3, 2):
        axes = op.Constant(value_ints=[axis])
        hi = op.Slice(inst, op.Constant(value_ints=[1]), op.Constant(value_ints=[_INT64_MAX]), axes)
        lo = op.Slice(inst, op.Constant(value_ints=[0]), op.Constant(value_ints=[-1]), axes)
        # Pad of float, which every runtime supports (unlike Pad of bool).
        differ = op.Cast(op.Not(op.Equal(hi, lo)), to=1)  # FLOAT
        edges.append(op.Max(_pad_one(op, differ, axis, False), _pad_one(op, differ, axis, True)))
    return op.Cast(op.Max(edges[0], edges[1]), to=int(to))


def _one_hot(op: Any, label: Any, label_nc: int) -> Any:
    """``[N, 1, H, W]`` int64 labels -> ``[N, label_nc, H, W]`` float one-hot (all zeros out of range)."""
    classes = op.Constant(value_ints=list(range(label_nc)))
    classes = op.Reshape(classes, op.Constant(value_ints=[1, label_nc, 1, 1]))
    return op.Cast(op.Equal(label, classes), to=1)


def _norm_act_pad(
    op: Any, x: Any, weight: Any, bias: Any, residual: Any, eps: float, negative_slope: float, pad: int
) -> tuple[Any, Any, Any]:
    y, mean, rstd = _norm_act(op, x, weight, bias, eps, negative_slope)
    if residual is not None:
        y = op.Add(y, residual)
    if pad:
        p = int(pad)
        y = op.Pad(y, op.Constant(value_ints=[0, 0, p, p, 0, 0, p, p]), mode="reflect")
    return y, mean, rstd


def _encode(op: Any, label: Any, inst: Any, label_nc: int, feat: Any, to: int) -> Any:
    parts = [_one_hot(op, _ids4(op, label), int(label_nc))]
    if inst is not None:
        parts.append(_boundary(op, _ids4(op, inst), 1))
    if feat is not None:
        parts.append(op.Cast(feat, to=1))
    out = op.Concat(*parts, axis=1) if len(parts) > 1 else parts[0]
    return op.Cast(out, to=int(to))


def _avg_pool(op: Any, feat: Any, inst: Any) -> Any:
    """Per-image instance means of ``feat`` broadcast back to the pixels."""
    ids = _ids4(op, inst)
    shape = op.Shape(feat)
    n, c = op.Shape(feat, start=0, end=1), op.Shape(feat, start=1, end=2)
    flat = op.Reshape(ids, op.Constant(value_ints=[-1]))  # [N*H*W]
    # Unique's outputs: values, first indices, inverse indices, counts (onnxscript infers the count from the
    # schema; g.op needs it).
    unique = op.Unique(flat, sorted=1, outputs=4) if isinstance(op, _TorchScriptOps) else op.Unique(flat, sorted=1)
    inverse = unique[2]
    k = op.Add(op.ReduceMax(inverse, keepdims=1), op.Constant(value_ints=[1]))  # [1]: number of distinct ids
    # A key per (image, id): ids are made distinct across images by an offset of k per image.
    inverse = op.Reshape(inverse, op.Concat(n, op.Constant(value_ints=[-1]), axis=0))  # [N, HW]
    image = op.Unsqueeze(
        op.Range(op.Constant(value_int=0), op.Squeeze(n), op.Constant(value_int=1)), op.Constant(value_ints=[1])
    )  # [N, 1]
    key = op.Reshape(op.Add(inverse, op.Mul(image, k)), op.Constant(value_ints=[1, -1]))  # [1, N*HW]
    acc = op.Cast(feat, to=11 if _is_double(feat) else 1)  # accumulate in fp32 (fp64 for fp64)
    src = op.Reshape(
        op.Transpose(op.Reshape(acc, op.Concat(n, c, op.Constant(value_ints=[-1]), axis=0)), perm=[1, 0, 2]),
        op.Concat(c, op.Constant(value_ints=[-1]), axis=0),
    )  # [C, N*HW]
    slots = op.Mul(n, k)
    zeros = op.Expand(op.CastLike(0.0, src), op.Concat(c, slots, axis=0))
    sums = op.ScatterElements(zeros, op.Expand(key, op.Shape(src)), src, axis=1, reduction="add")
    ones = op.Expand(op.CastLike(1.0, src), op.Shape(key))
    counts = op.ScatterElements(
        op.Expand(op.CastLike(0.0, src), op.Concat(op.Constant(value_ints=[1]), slots, axis=0)),
        key,
        ones,
        axis=1,
        reduction="add",
    )
    means = op.Div(sums, op.Max(counts, op.CastLike(1.0, counts)))
    out = op.GatherElements(means, op.Expand(key, op.Shape(src)), axis=1)  # [C, N*HW]
    out = op.Transpose(op.Reshape(out, op.Concat(c, n, op.Constant(value_ints=[-1]), axis=0)), perm=[1, 0, 2])
    return op.CastLike(op.Reshape(out, shape), feat)


def instance_norm_act_onnx(
    x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5, negative_slope: float = 0.0
) -> tuple[Any, Any, Any]:
    """``pix2pixhd_fast::instance_norm_act`` -> (y, mean, rstd)."""
    from onnxscript import opset18 as op

    return _norm_act(op, x, weight, bias, eps, negative_slope)


def instance_norm_act_pad_onnx(
    x: Any,
    weight: Any = None,
    bias: Any = None,
    residual: Any = None,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
    pad: int = 0,
) -> tuple[Any, Any, Any]:
    """``pix2pixhd_fast::instance_norm_act_pad`` -> (y, mean, rstd)."""
    from onnxscript import opset18 as op

    return _norm_act_pad(op, x, weight, bias, residual, eps, negative_slope, pad)


def instance_boundary_onnx(inst: Any, dtype: Any = torch.float32) -> Any:
    """``pix2pixhd_fast::instance_boundary``."""
    from onnxscript import opset18 as op

    return _boundary(op, _ids4(op, inst), int(_onnx_dtype(dtype)))


def encode_input_onnx(label: Any, inst: Any, label_nc: int, feat: Any, dtype: Any, channels_last: bool = False) -> Any:
    """``pix2pixhd_fast::encode_input`` (the memory format has no meaning in ONNX)."""
    from onnxscript import opset18 as op

    return _encode(op, label, inst, label_nc, feat, int(_onnx_dtype(dtype)))


def instance_avg_pool_onnx(feat: Any, inst: Any) -> Any:
    """``pix2pixhd_fast::instance_avg_pool``."""
    from onnxscript import opset18 as op

    return _avg_pool(op, feat, inst)


def onnx_translation_table() -> dict[Any, Callable[..., Any]]:
    """``{torch.ops.pix2pixhd_fast.<op>.default: onnxscript function}``: ``custom_translation_table``'s form."""
    ops = _ops()
    return {
        ops.instance_norm_act.default: instance_norm_act_onnx,
        ops.instance_norm_act_pad.default: instance_norm_act_pad_onnx,
        ops.instance_boundary.default: instance_boundary_onnx,
        ops.encode_input.default: encode_input_onnx,
        ops.instance_avg_pool.default: instance_avg_pool_onnx,
    }


_registered = {"dynamo": False, "torchscript": False}


def register_onnx_translations() -> bool:
    """Add the translations to the ``dynamo=True`` exporter's bundled operator library (once).

    Returns False (with a warning) when that library's layout is not the one this was written against; then
    pass :func:`onnx_translation_table` as ``custom_translation_table`` instead.
    """
    if _registered["dynamo"]:
        return True
    try:
        from torch.onnx._internal.exporter import _registration
        from torch.onnx._internal.exporter._torchlib import _torchlib_registry

        entries = [
            _registration.OnnxDecompMeta(onnx_function=fn, fx_target=target, signature=None, is_custom=True)
            for target, fn in onnx_translation_table().items()
        ]
        _torchlib_registry._registry.extend(entries)
    except (ImportError, AttributeError, TypeError) as e:
        warnings.warn(
            f"pix2pixhd_fast: could not register the ONNX translations with torch.onnx ({e}); pass "
            "custom_translation_table=pix2pixhd_fast.onnx_ops.onnx_translation_table() to torch.onnx.export",
            stacklevel=2,
        )
        return False
    _registered["dynamo"] = True
    return True


# ----------------------------------------------------------------------------------------------------
# dynamo=False: TorchScript symbolic functions, built by the same code through a g.op adapter

# torch ScalarType index -> ONNX TensorProto data type, for the output dtypes the ops accept.
_SCALAR_TO_ONNX = {0: 2, 5: 10, 6: 1, 7: 11, 11: 9, 15: 16}


class _TorchScriptOps:
    """``op.Name(*inputs, attr=value)`` as ``g.op("Name", ..., attr_<type>=value)`` (Python numbers as inputs
    become constants), so the builders above serve the TorchScript exporter too."""

    def __init__(self, g: Any):
        self.g = g

    def _const(self, value: Any) -> Any:
        return self.g.op("Constant", value_t=torch.tensor(value))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def build(*inputs: Any, outputs: int = 1, **attrs: Any) -> Any:
            if name == "Constant":
                if "value_floats" in attrs:
                    return self._const(attrs["value_floats"])
                return self._const(attrs["value_ints"] if "value_ints" in attrs else attrs["value_int"])
            values = [self._const(i) if isinstance(i, (int, float)) else i for i in inputs]
            kw = {}
            for key, value in attrs.items():
                suffix = {float: "f", int: "i", str: "s", list: "i"}[type(value)]
                kw[f"{key}_{suffix}"] = value
            return self.g.op(name, *values, outputs=outputs, **kw)

        return build


def _opt(v: Any) -> Any:
    from torch.onnx import symbolic_helper

    return None if symbolic_helper._is_none(v) else v


def register_torchscript_symbolics() -> None:
    """Register symbolic functions with the TorchScript exporter (opset 15 and above: ``CastLike`` and
    ``Shape(start, end)``), once, for every operator but ``instance_avg_pool``: the TorchScript exporter's shape
    inference crashes (torch 2.14.1) on its ``Unique``/``ScatterElements`` graph; export it with ``dynamo=True``."""
    if _registered["torchscript"]:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "v", "f", "f")
    def norm(g, x, weight, bias, eps, negative_slope):
        return _norm_act(_TorchScriptOps(g), x, _opt(weight), _opt(bias), eps, negative_slope)

    @parse_args("v", "v", "v", "v", "f", "f", "i")
    def norm_pad(g, x, weight, bias, residual, eps, negative_slope, pad):
        return _norm_act_pad(_TorchScriptOps(g), x, _opt(weight), _opt(bias), _opt(residual), eps, negative_slope, pad)

    @parse_args("v", "i")
    def boundary(g, inst, dtype):
        op = _TorchScriptOps(g)
        return _boundary(op, _ids4(op, inst), _SCALAR_TO_ONNX[dtype])

    @parse_args("v", "v", "i", "v", "i", "b")
    def encode(g, label, inst, label_nc, feat, dtype, channels_last):
        return _encode(_TorchScriptOps(g), label, _opt(inst), label_nc, _opt(feat), _SCALAR_TO_ONNX[dtype])

    for name, fn in (
        ("instance_norm_act", norm),
        ("instance_norm_act_pad", norm_pad),
        ("instance_boundary", boundary),
        ("encode_input", encode),
    ):
        register_custom_op_symbolic(f"pix2pixhd_fast::{name}", fn, _SYMBOLIC_OPSET)
    _registered["torchscript"] = True


# ----------------------------------------------------------------------------------------------------
# Registration when an exporter is first used


class _ExporterHook(importlib.abc.MetaPathFinder):
    """Registers the translations right after the dynamo exporter imports its operator library, so that
    ``import pix2pixhd_fast`` does not pay for importing onnxscript."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TORCHLIB_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            # The exporter's registration module is itself still importing at this point (it imports this
            # one): register when the exporter first asks for the operator list instead.
            get_ops = module.get_torchlib_ops

            def get_ops_with_ours() -> Any:
                register_onnx_translations()
                return get_ops()

            module.get_torchlib_ops = get_ops_with_ours

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def install_onnx_hook() -> None:
    """Make both exporters translate our operators (called once the operator library is loaded)."""
    register_torchscript_symbolics()
    if _TORCHLIB_MODULE in sys.modules:
        register_onnx_translations()
    elif not any(isinstance(f, _ExporterHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _ExporterHook())
