"""Deployment: the generator as an inference graph, ONNX export (standard operators only), onnxruntime runner.

- :class:`InferenceGraph`: generator + input encoding, ``(label, [inst], [feat]) -> image``.
- :func:`export_onnx`: writes it as ONNX (dynamic batch/height/width), checked by ``onnx.checker`` and
  onnxruntime; :func:`check_onnx_graph_ops` lists its operators and rejects custom domains.
- :class:`OnnxRuntimeGenerator`: runs an exported file on numpy arrays or torch CPU tensors.
- :func:`portable_ops`: run a module with standard PyTorch operators only (what the exporters see).
"""

from .graph import (
    InferenceGraph,
    generator_input_channels,
    generator_size_multiple,
    portable_instance_boundary,
    portable_one_hot,
    portable_ops,
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
from .runtime import OnnxRuntimeGenerator

__all__ = [
    "DEFAULT_OPSET",
    "InferenceGraph",
    "ONNXVerificationError",
    "OnnxRuntimeGenerator",
    "check_onnx_graph_ops",
    "example_inputs",
    "export_onnx",
    "generator_input_channels",
    "generator_size_multiple",
    "max_opset",
    "portable_instance_boundary",
    "portable_one_hot",
    "portable_ops",
    "verify_onnx",
]
