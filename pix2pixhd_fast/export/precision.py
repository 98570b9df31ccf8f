"""The exported generator in reduced precision: fp16 or bf16 convolutions, every instance norm in fp32.

Instance norm reduces over H*W (up to 2M pixels at 2048x1024): its mean/variance lose accuracy (and the sum of
squares overflows fp16's 65504) in half precision, while the convolutions around it are as accurate in fp16/bf16
with fp32 accumulation. :func:`mixed_precision_onnx` states that split in the graph itself, so that a consumer which
keeps the graph's types (onnxruntime, a strongly typed TensorRT network) runs exactly it.
"""

from __future__ import annotations

import os
from typing import Any

from .onnx import METADATA_PREFIX

__all__ = ["PRECISIONS", "BF16_MIN_OPSET", "mixed_precision_onnx"]

PRECISIONS = ("fp32", "fp16", "bf16")
BF16_MIN_OPSET = 22  # first ONNX opset whose Conv/ConvTranspose/AveragePool/InstanceNormalization accept bfloat16


def _load_onnx(model_or_path: Any) -> Any:
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(f"expected an ONNX path or onnx.ModelProto, got {type(model_or_path).__name__}")
    path = os.fspath(model_or_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX file {path!r} (export one with `pix2pixhd-fast export --format onnx`)")
    try:
        return onnx.load(path)
    except Exception as e:  # protobuf DecodeError and friends: not a model file
        raise ValueError(f"{path!r} is not a readable ONNX model: {e}") from e


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unsupported precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def mixed_precision_onnx(model_or_path: Any, precision: str) -> Any:
    """The generator graph in fp16 or bf16 with every ``InstanceNormalization`` kept in fp32 (a new ModelProto).

    fp16 is onnxconverter-common's ``convert_float_to_float16`` with ``InstanceNormalization`` on its block list
    (the converter casts the norm's input to fp32 and its output back) and ``keep_io_types`` (``feat`` goes in and
    the image comes out as float32). bf16 is that graph with its float16 tensors retyped to bfloat16 (the converter
    has no bf16 target), after raising the opset to 22, the first that allows bfloat16 convolutions. The result
    passes ``onnx.checker`` with full type inference. Integer tensors (ids, shapes) are untouched.

    Args:
        model_or_path: an fp32 ``onnx.ModelProto`` or a path to one (as written by
            :func:`~pix2pixhd_fast.export.export_onnx`); not modified.
        precision: ``"fp16"`` or ``"bf16"`` (``"fp32"`` returns an unchanged copy).

    Raises:
        ValueError: unknown precision, or float16/bfloat16 already present.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxconverter_common import float16

    precision = _check_precision(precision)
    src = _load_onnx(model_or_path)
    model = onnx.ModelProto()
    model.CopyFrom(src)
    if precision == "fp32":
        return model
    half_types = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    graph = model.graph
    if any(i.data_type in half_types for i in graph.initializer) or any(
        vi.type.tensor_type.elem_type in half_types for vi in [*graph.input, *graph.output]
    ):
        raise ValueError("mixed_precision_onnx: the model already holds float16/bfloat16 tensors; pass the fp32 export")
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | {"InstanceNormalization"})
    model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    # The norms' scale/bias stay the fp32 originals: the converter rounds parameters it reaches through a Cast to
    # float16 and casts them back, which would lose precision for nothing.
    fp32_params = {i.name: i for i in src.graph.initializer if i.data_type == TensorProto.FLOAT}
    producers = {o: n for n in model.graph.node for o in n.output}
    dropped = set()
    for node in model.graph.node:
        if node.op_type != "InstanceNormalization":
            continue
        for k in (1, 2):
            cast = producers.get(node.input[k])
            if cast is not None and cast.op_type == "Cast" and cast.input[0] in fp32_params:
                name = cast.input[0] + "_fp32"
                if name not in {i.name for i in model.graph.initializer}:
                    kept = onnx.TensorProto()
                    kept.CopyFrom(fp32_params[cast.input[0]])
                    kept.name = name
                    model.graph.initializer.append(kept)
                node.input[k] = name
                dropped.add(id(cast))
    used = {i for n in model.graph.node if id(n) not in dropped for i in n.input}
    keep = [n for n in model.graph.node if id(n) not in dropped or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    # The converter types the outputs of the graph's own Cast(to=FLOAT) nodes (one-hot, boundary) as float16 but
    # leaves their target type: make the casts agree.
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type == "Cast" and types.get(node.output[0]) == TensorProto.FLOAT16:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    if precision == "bf16":
        if _opset(model) < BF16_MIN_OPSET:
            from onnx import version_converter

            model = version_converter.convert_version(model, BF16_MIN_OPSET)
        bf16_np = helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)

        def retype(t: Any) -> None:
            if t.data_type == TensorProto.FLOAT16:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32").astype(bf16_np), t.name))

        for init in model.graph.initializer:
            retype(init)
        for node in model.graph.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                    attr.i = TensorProto.BFLOAT16
                elif attr.type == onnx.AttributeProto.TENSOR:
                    retype(attr.t)
        for vi in model.graph.value_info:
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
                vi.type.tensor_type.elem_type = TensorProto.BFLOAT16
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_PREFIX + "precision", precision
    onnx.checker.check_model(model, full_check=True)
    return model
