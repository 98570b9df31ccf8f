"""Deployment: the generator as an inference graph, ONNX export (standard operators only), onnxruntime runner.

- :class:`InferenceGraph`: generator + input encoding, ``(label, [inst], [feat]) -> image``.
- :func:`export_onnx`: writes it as ONNX (dynamic batch/height/width), checked by ``onnx.checker`` and
  onnxruntime; :func:`check_onnx_graph_ops` lists its operators and rejects custom domains.
- :class:`OnnxRuntimeGenerator`: runs an exported file on numpy arrays or torch CPU tensors.
- :func:`compile_generator`: the graph through ``torch.compile`` (inductor; CUDA graphs on the GPU).
- :func:`mixed_precision_onnx`: the exported graph with fp16/bf16 convolutions and instance norm in fp32.
- :func:`build_engine` / :class:`TensorRTGenerator` (experimental): a TensorRT engine from the ONNX file and its
  runtime on torch CUDA tensors; ``tensorrt`` is imported only when used.
- :mod:`~pix2pixhd_fast.export.backends`: the inference backends of a trained model (eager, compile, onnxruntime,
  TensorRT), one adapter each.
- :func:`onnx_translation_table`: our operators' ONNX translations (registered with both ``torch.onnx`` exporters
  automatically; this is the form ``torch.onnx.export(..., custom_translation_table=...)`` takes).
"""

from ..onnx_ops import onnx_translation_table
from .compiled import COMPILE_MODES, CompiledGenerator, compile_generator
from .graph import (
    InferenceGraph,
    generator_input_channels,
    generator_size_multiple,
)
from .onnx import (
    DEFAULT_OPSET,
    ONNXVerificationError,
    check_onnx_graph_ops,
    example_inputs,
    export_onnx,
    max_opset,
    verify_onnx,
)
from .precision import PRECISIONS, mixed_precision_onnx
from .runtime import OnnxRuntimeGenerator
from .tensorrt import (
    EngineBuildError,
    ShapeProfile,
    TensorRTGenerator,
    TensorRTUnavailableError,
    build_engine,
    parse_sizes,
    profiles_for_sizes,
    read_sidecar,
    tensorrt_status,
)

__all__ = [
    "COMPILE_MODES",
    "CompiledGenerator",
    "DEFAULT_OPSET",
    "EngineBuildError",
    "PRECISIONS",
    "ShapeProfile",
    "TensorRTGenerator",
    "TensorRTUnavailableError",
    "build_engine",
    "compile_generator",
    "mixed_precision_onnx",
    "parse_sizes",
    "profiles_for_sizes",
    "read_sidecar",
    "tensorrt_status",
    "InferenceGraph",
    "ONNXVerificationError",
    "OnnxRuntimeGenerator",
    "check_onnx_graph_ops",
    "example_inputs",
    "export_onnx",
    "generator_input_channels",
    "generator_size_multiple",
    "max_opset",
    "onnx_translation_table",
    "verify_onnx",
]
