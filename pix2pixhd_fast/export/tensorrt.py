"""TensorRT engines from the exported ONNX generator: a builder and a runtime on torch CUDA tensors.

Written against the current TensorRT Python API (10.x and 11.x), imported lazily: without the ``tensorrt`` package
or a CUDA GPU every entry point raises :class:`TensorRTUnavailableError` saying what to install
(``pip install tensorrt``, or ``pip install 'pix2pixhd_fast[tensorrt]'``).

Precision: a strongly typed network with the precision in the ONNX graph
--------------------------------------------------------------------------
TensorRT 10 offered two ways to build reduced precision:

- *weak typing*: ``BuilderFlag.FP16`` / ``BuilderFlag.BF16`` let the builder pick lower-precision kernels wherever it
  likes; per-layer ``layer.precision`` / ``layer.set_output_type`` plus ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``
  pin chosen layers (e.g. the normalisations) to FP32. Deprecated since TensorRT 10.12 and **removed in 11.x** (the
  flags, ``OBEY_PRECISION_CONSTRAINTS`` and layer precisions are gone).
- *strong typing* (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` in 10.x, always on in 11.x, where the flag is
  accepted and ignored): every tensor's type follows from the network's input types, its ``Cast`` layers and the
  weights' types; the builder never changes a type.

Only the second works on both majors, and it states the precision exactly, so the builder uses it:
:func:`mixed_precision_onnx` converts the fp32 export into a mixed-precision graph with onnxconverter-common:
convolution weights, activations, one-hot and boundary maps in fp16/bf16; every ``InstanceNormalization`` runs in
**fp32** between two ``Cast`` nodes (on the converter's block list). Instance norm reduces over H*W (up to 2M
pixels at 2048x1024): its mean/variance lose accuracy (and the sum of squares overflows fp16's 65504) in half
precision, while the convolutions around it are as accurate in
fp16/bf16 with fp32 accumulation, which TensorRT's tensor-core kernels use. The graph's interface stays as in fp32:
``feat`` goes in as float32 and the image comes out as float32 (one cast of 3 channels at the end). bf16 convolutions
need ONNX opset 22 (earlier opsets do not list bfloat16 for Conv), so a bf16 graph is converted to opset 22 first:
its parser needs TensorRT >= 10.x with opset-22 support (11.x parses opsets up to 25).

Profiles, cache, files
----------------------
One optimization profile per size the user names (batch ``1..max_batch``, H and W fixed: the fastest kernels per
resolution), or one profile spanning them (``dynamic=True``); the same N/H/W applies to ``label``, ``inst`` and
``feat``. A timing cache file is loaded when it exists and saved after the build, so rebuilding (another size, another
precision) skips kernel timing already done on this GPU. The serialized engine is written atomically, then a JSON
sidecar (``<engine>.json``, see :func:`read_sidecar`) describing the inputs/outputs (names, dtypes, shapes), the
profiles, the precision, the TensorRT version, the GPU and the generator's encoding (label_nc, feat_num, ...); the
runtime checks its inputs against it.

Runtime
-------
:class:`TensorRTGenerator` deserializes the engine and runs it on torch CUDA tensors on the current CUDA stream:
input shapes with ``IExecutionContext.set_input_shape``, tensors bound by address (``set_tensor_address`` with
``data_ptr()``: no copies), the output allocated by torch, ``execute_async_v3(stream)``; no host synchronisation
(unless ``check=True`` verifies label values).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from ..utils.files import atomic_write_bytes
from .onnx import METADATA_PREFIX, check_output_path

__all__ = [
    "PRECISIONS",
    "INSTALL_HINT",
    "SIDECAR_FORMAT",
    "TensorRTUnavailableError",
    "EngineBuildError",
    "ShapeProfile",
    "import_tensorrt",
    "tensorrt_status",
    "parse_sizes",
    "profiles_for_sizes",
    "mixed_precision_onnx",
    "build_engine",
    "sidecar_path",
    "write_sidecar",
    "read_sidecar",
    "TensorRTGenerator",
]

PRECISIONS = ("fp32", "fp16", "bf16")
INSTALL_HINT = (
    "install TensorRT with `pip install tensorrt` (or `pip install 'pix2pixhd_fast[tensorrt]'`); it needs an NVIDIA "
    "GPU with its driver"
)
SIDECAR_FORMAT = 1
BF16_MIN_OPSET = 22  # first ONNX opset whose Conv/ConvTranspose/AveragePool/InstanceNormalization accept bfloat16
_MIN_TRT_MAJOR = 10


class TensorRTUnavailableError(RuntimeError):
    """TensorRT (the ``tensorrt`` package, version >= 10) or a CUDA GPU is missing; the message says what to install."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX model or build the engine (the message carries TensorRT's errors)."""


# ----------------------------------------------------------------------------------------------------
# Availability


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module (major version >= 10), imported on first use.

    Raises:
        TensorRTUnavailableError: not installed, not importable (e.g. no CUDA libraries), or older than 10.
    """
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailableError(f"TensorRT is not installed ({e}): {INSTALL_HINT}") from e
    except OSError as e:  # the wheel is there but its CUDA libraries cannot be loaded
        raise TensorRTUnavailableError(f"TensorRT is installed but cannot load ({e}): {INSTALL_HINT}") from e
    version = str(getattr(trt, "__version__", "0"))
    major = int(re.match(r"\d*", version).group() or 0)
    if major < _MIN_TRT_MAJOR:
        raise TensorRTUnavailableError(
            f"TensorRT {version} is too old: this builder uses the TensorRT >= 10 API; "
            f"`pip install -U 'tensorrt>={_MIN_TRT_MAJOR}'`"
        )
    return trt


def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise TensorRTUnavailableError(
            f"{what} needs a CUDA GPU, and torch sees none (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}): run on a machine with an NVIDIA GPU and driver, and a CUDA build of torch"
        )


def tensorrt_status() -> tuple[bool, str]:
    """``(True, "TensorRT <version>")`` when engines can be built and run here, else ``(False, reason)``."""
    try:
        trt = import_tensorrt()
        _require_cuda("TensorRT")
    except TensorRTUnavailableError as e:
        return False, str(e)
    return True, f"TensorRT {trt.__version__}"


def _device_info(device: torch.device | None = None) -> dict[str, str]:
    """Name and compute capability of the GPU an engine is built for (engines only run on the same kind)."""
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}


# ----------------------------------------------------------------------------------------------------
# Sizes and optimization profiles


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimization profile: ``(N, H, W)`` minimum, optimum and maximum, shared by all inputs.

    Every input (``label [N,1,H,W]``, ``inst [N,1,H,W]``, ``feat [N,feat_num,H,W]``) gets these N, H, W with its own
    (fixed) channel count. ``min <= opt <= max`` element-wise.
    """

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 3 or not all(_positive_int(v) for v in value):
                raise ValueError(f"ShapeProfile: {name} must be (N, H, W), three positive ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(
                f"ShapeProfile: need min <= opt <= max element-wise, got {self.min}, {self.opt}, {self.max}"
            )

    @classmethod
    def fixed(cls, height: int, width: int, max_batch: int = 1) -> ShapeProfile:
        """H x W exactly, batch ``1..max_batch`` (optimised for ``max_batch``)."""
        return cls((1, height, width), (max_batch, height, width), (max_batch, height, width))

    def contains(self, n: int, h: int, w: int) -> bool:
        """Whether an ``N x H x W`` input lies inside this profile."""
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (n, h, w), self.max, strict=True))

    def input_shapes(self, channels: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(min, opt, max)`` as 4-D shapes ``(N, channels, H, W)`` of one input."""
        return tuple((s[0], channels, s[1], s[2]) for s in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShapeProfile:
        try:
            return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"ShapeProfile: expected {{'min', 'opt', 'max'}} lists, got {data!r}") from e


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"512x1024,1024x2048"`` -> ``[(512, 1024), (1024, 2048)]``: comma-separated ``HEIGHTxWIDTH`` sizes.

    Heights come first, as in tensor shapes ``[N, C, H, W]`` (Cityscapes at pix2pixHD's "1024x512" is ``512x1024``).

    Raises:
        ValueError: an empty list or an entry that is not two positive integers joined by ``x``.
    """
    if not isinstance(text, str):
        raise TypeError(f"sizes must be a string such as '512x1024,1024x2048', got {type(text).__name__}")
    sizes = []
    for item in (s.strip() for s in text.split(",")):
        m = re.fullmatch(r"(\d+)\s*[xX]\s*(\d+)", item)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise ValueError(f"size {item!r}: expected HEIGHTxWIDTH with positive integers, e.g. 512x1024")
        sizes.append((int(m.group(1)), int(m.group(2))))
    return sizes


def profiles_for_sizes(
    sizes: Sequence[tuple[int, int]], *, max_batch: int = 1, dynamic: bool = False
) -> list[ShapeProfile]:
    """Optimization profiles for ``(H, W)`` sizes.

    Args:
        sizes: one or more ``(H, W)``.
        max_batch: largest batch the engine accepts (the profiles are tuned for it).
        dynamic: one profile spanning every size (min/max element-wise, tuned for the first size) instead of one
            fixed-size profile per size.

    Raises:
        ValueError: no sizes, a non-positive size or batch.
    """
    if not _positive_int(max_batch):
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    sizes = [tuple(s) for s in sizes]
    if not sizes:
        raise ValueError("name at least one size (H, W) for the engine's optimization profiles")
    for s in sizes:
        if len(s) != 2 or not all(_positive_int(v) for v in s):
            raise ValueError(f"size {s!r}: expected (H, W), two positive ints")
    if not dynamic:
        unique = list(dict.fromkeys(sizes))
        return [ShapeProfile.fixed(h, w, max_batch) for h, w in unique]
    lo = (1, min(h for h, _ in sizes), min(w for _, w in sizes))
    hi = (max_batch, max(h for h, _ in sizes), max(w for _, w in sizes))
    return [ShapeProfile(lo, (max_batch, *sizes[0]), hi)]


# ----------------------------------------------------------------------------------------------------
# ONNX inspection and the mixed-precision rewrite


@dataclass(frozen=True)
class _OnnxInput:
    name: str
    elem_type: int  # onnx.TensorProto data type
    dims: tuple[int | None, ...]  # None: symbolic


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


def _onnx_inputs(model: Any) -> list[_OnnxInput]:
    init = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in init:  # old-style models list weights as inputs
            continue
        t = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        out.append(_OnnxInput(vi.name, t.elem_type, dims))
    return out


def _onnx_metadata(model: Any) -> dict[str, str]:
    return {p.key[len(METADATA_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


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


# ----------------------------------------------------------------------------------------------------
# Sidecar


def sidecar_path(engine_path: str | os.PathLike) -> str:
    """Where the JSON description of an engine lives: ``<engine_path>.json``."""
    return os.fspath(engine_path) + ".json"


_TENSOR_KEYS = {"name", "dtype", "shape"}
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def write_sidecar(engine_path: str | os.PathLike, info: Mapping[str, Any]) -> str:
    """Write ``info`` (validated as :func:`read_sidecar` would) as ``<engine_path>.json``, atomically; returns it."""
    info = _validate_sidecar(dict(info), sidecar_path(engine_path))
    path = sidecar_path(engine_path)
    atomic_write_bytes(path, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """The description written beside an engine by :func:`build_engine`.

    Keys: ``format`` (1), ``engine`` (file name), ``engine_sha256``, ``tensorrt_version``, ``precision``,
    ``inputs`` / ``outputs`` (lists of ``{"name", "dtype", "shape"}``, -1 for dynamic dimensions, dtype a torch
    dtype name such as ``"int64"``), ``profiles`` (list of ``{"min", "opt", "max"}`` ``(N, H, W)`` triples shared by
    all inputs), ``channels`` (``{input name: C}``), ``metadata`` (the ONNX model's ``pix2pixhd_fast.*`` entries:
    label_nc, use_instance, feat_num, size_multiple, ...), and informational ``device``, ``onnx``,
    ``workspace_bytes``, ``tf32``, ``created``.

    Raises:
        FileNotFoundError: no sidecar. ValueError: not JSON, or a key missing / of the wrong type.
    """
    path = sidecar_path(engine_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no engine description {path!r}: engines are described by the JSON file build_engine writes beside them"
        )
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r} is not valid JSON: {e}") from e
    return _validate_sidecar(info, path)


def _validate_sidecar(info: Any, path: str) -> dict[str, Any]:
    def bad(msg: str) -> ValueError:
        return ValueError(f"engine description {path!r}: {msg}")

    if not isinstance(info, dict):
        raise bad("expected a JSON object")
    if info.get("format") != SIDECAR_FORMAT:
        raise bad(f"unsupported format {info.get('format')!r} (expected {SIDECAR_FORMAT})")
    for key, kind in (("tensorrt_version", str), ("precision", str), ("engine", str), ("metadata", dict)):
        if not isinstance(info.get(key), kind):
            raise bad(f"'{key}' missing or not a {kind.__name__}")
    if info["precision"] not in PRECISIONS:
        raise bad(f"unknown precision {info['precision']!r}")
    for key in ("inputs", "outputs"):
        tensors = info.get(key)
        if not isinstance(tensors, list) or not tensors:
            raise bad(f"'{key}' must be a non-empty list")
        for t in tensors:
            if not isinstance(t, dict) or not _TENSOR_KEYS <= set(t):
                raise bad(f"each of '{key}' needs name, dtype and shape, got {t!r}")
            if t["dtype"] not in _TORCH_DTYPES:
                raise bad(f"tensor {t['name']!r} has unsupported dtype {t['dtype']!r}")
            if not isinstance(t["shape"], list) or not all(isinstance(d, int) and d >= -1 for d in t["shape"]):
                raise bad(f"tensor {t['name']!r} has a bad shape {t['shape']!r}")
    profiles = info.get("profiles")
    if not isinstance(profiles, list) or not profiles:
        raise bad("'profiles' must be a non-empty list")
    try:
        [ShapeProfile.from_json(p) for p in profiles]
    except ValueError as e:
        raise bad(str(e)) from None
    channels = info.get("channels")
    names = [t["name"] for t in info["inputs"]]
    if (
        not isinstance(channels, dict)
        or set(channels) != set(names)
        or not all(_positive_int(c) for c in channels.values())
    ):
        raise bad(f"'channels' must give a positive channel count for each input {names}, got {channels!r}")
    return info


# ----------------------------------------------------------------------------------------------------
# Builder


def _check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unsupported precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


_ONNX_TO_TORCH = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 9: "bool"}


def _input_channels(inputs: Sequence[_OnnxInput]) -> dict[str, int]:
    channels = {}
    for i in inputs:
        if len(i.dims) != 4:
            raise ValueError(f"ONNX input {i.name!r} has rank {len(i.dims)}; the generator's inputs are [N, C, H, W]")
        if i.dims[1] is None:
            raise ValueError(f"ONNX input {i.name!r} has a dynamic channel dimension; it must be fixed")
        if i.elem_type not in _ONNX_TO_TORCH:
            raise ValueError(f"ONNX input {i.name!r} has an unsupported element type {i.elem_type}")
        channels[i.name] = i.dims[1]
    return channels


def _check_profiles_fit(profiles: Sequence[ShapeProfile], inputs: Sequence[_OnnxInput], multiple: int) -> None:
    for p in profiles:
        for shape in (p.min, p.opt, p.max):
            if shape[1] % multiple or shape[2] % multiple:
                raise ValueError(
                    f"profile size {shape[1]}x{shape[2]}: H and W must be multiples of {multiple} for this generator"
                )
        for i in inputs:  # a static export only accepts its own shape
            for axis, value in ((0, "N"), (2, "H"), (3, "W")):
                fixed = i.dims[axis]
                k = {0: 0, 2: 1, 3: 2}[axis]
                if fixed is not None and not p.min[k] == p.max[k] == fixed:
                    raise ValueError(
                        f"the ONNX input {i.name!r} has a fixed {value}={fixed}, but a profile spans "
                        f"{p.min[k]}..{p.max[k]}: export with dynamic sizes or name that size"
                    )


def _strongly_typed_flags(trt: ModuleType) -> int:
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    # 10.x: opt in; 11.x: strong typing is always on and the flag (where it still exists) is ignored.
    return 0 if flag is None else 1 << int(flag)


def _trt_dtype_name(trt: ModuleType, dtype: Any) -> str:
    table = {
        "FLOAT": "float32",
        "HALF": "float16",
        "BF16": "bfloat16",
        "INT64": "int64",
        "INT32": "int32",
        "INT8": "int8",
        "UINT8": "uint8",
        "BOOL": "bool",
    }
    for attr, name in table.items():
        if hasattr(trt.DataType, attr) and dtype == getattr(trt.DataType, attr):
            return name
    raise ValueError(f"unsupported TensorRT data type {dtype}")


def _describe_engine(trt: ModuleType, engine: Any) -> tuple[list[dict], list[dict]]:
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = {
            "name": name,
            "dtype": _trt_dtype_name(trt, engine.get_tensor_dtype(name)),
            "shape": [int(d) for d in engine.get_tensor_shape(name)],
        }
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(entry)
    return inputs, outputs


@contextlib.contextmanager
def _timing_cache(trt: ModuleType, config: Any, path: str | None) -> Iterator[None]:
    """Load the timing cache at ``path`` (if any) into ``config``; after a successful build, save it back."""
    if path is None:
        yield
        return
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        # A cache from another GPU/TensorRT is rejected with ignore_mismatch=False: start a fresh one.
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    yield
    atomic_write_bytes(path, bytes(memoryview(config.get_timing_cache().serialize())))


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str = "fp16",
    sizes: Sequence[tuple[int, int]] | None = None,
    profiles: Sequence[ShapeProfile] | None = None,
    max_batch: int = 1,
    dynamic: bool = False,
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    tf32: bool = True,
    optimization_level: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Build a TensorRT engine from an exported generator (``export_onnx``'s file) and describe it in a sidecar.

    Args:
        onnx_path: the fp32 ONNX file (dynamic sizes unless the sizes named match its static ones).
        engine_path: the engine file to write (its folder must exist); ``<engine_path>.json`` gets the description.
        precision: ``"fp32"`` (TF32 convolutions unless ``tf32=False``), ``"fp16"`` or ``"bf16"``: the convolutions'
            precision; instance normalisation always runs in fp32 (see the module docstring).
        sizes: ``(H, W)`` sizes the engine must run, e.g. ``[(512, 1024), (1024, 2048)]`` (see
            :func:`profiles_for_sizes`, with ``max_batch`` and ``dynamic``); or give ``profiles`` instead.
        profiles: explicit :class:`ShapeProfile` list (instead of ``sizes``).
        max_batch, dynamic: see :func:`profiles_for_sizes`.
        workspace_gb: limit of TensorRT's scratch memory (``MemoryPoolType.WORKSPACE``), in GiB.
        timing_cache: a timing cache file, loaded when it exists and saved after the build (reused across builds
            on the same GPU and TensorRT version).
        tf32: allow TF32 tensor cores for fp32 layers (TensorRT's default, as PyTorch's for convolutions).
        optimization_level: ``builder_optimization_level`` 0..5 (TensorRT's default 3; higher builds longer).
        verbose: TensorRT's verbose log.

    Returns:
        The sidecar dict (see :func:`read_sidecar`).

    Raises:
        FileNotFoundError: no ONNX file, or the engine's folder does not exist.
        ValueError: unsupported precision; no sizes; sizes that are not multiples of the generator's size multiple,
            that contradict a static ONNX input, or a bad batch/workspace/level.
        TensorRTUnavailableError: TensorRT or a CUDA GPU is missing (raised after the arguments are checked).
        EngineBuildError: TensorRT rejected the model or the build failed.
    """
    precision = _check_precision(precision)
    model = _load_onnx(onnx_path)
    onnx_path = os.path.abspath(os.fspath(onnx_path))
    engine_path = check_output_path(engine_path, name="engine_path", example="model.engine")
    if os.path.abspath(engine_path) == onnx_path:
        raise ValueError("engine_path must differ from onnx_path")
    inputs = _onnx_inputs(model)
    if not inputs:
        raise ValueError(f"{onnx_path!r} has no inputs")
    channels = _input_channels(inputs)
    metadata = _onnx_metadata(model)
    multiple = int(metadata.get("size_multiple", 1))
    if profiles is None:
        if sizes is None:
            raise ValueError("name the sizes the engine must run (sizes=[(H, W), ...]) or give profiles=")
        profiles = profiles_for_sizes(sizes, max_batch=max_batch, dynamic=dynamic)
    else:
        if sizes is not None:
            raise ValueError("give sizes= or profiles=, not both")
        profiles = list(profiles)
        if not profiles or not all(isinstance(p, ShapeProfile) for p in profiles):
            raise ValueError("profiles must be a non-empty list of ShapeProfile")
    _check_profiles_fit(profiles, inputs, multiple)
    if isinstance(workspace_gb, bool) or not isinstance(workspace_gb, (int, float)) or not 0 < workspace_gb < math.inf:
        raise ValueError(f"workspace_gb must be a positive number, got {workspace_gb!r}")
    if optimization_level is not None and not _int_in(optimization_level, 0, 5):
        raise ValueError(f"optimization_level must be an int in 0..5, got {optimization_level!r}")
    if timing_cache is not None:
        timing_cache = os.fspath(timing_cache)
        if not os.path.isdir(os.path.dirname(os.path.abspath(timing_cache))):
            raise FileNotFoundError(f"the folder of the timing cache {timing_cache!r} does not exist")
    # The precision rewrite is plain ONNX work: do it (and fail on a bad graph) before needing TensorRT.
    network_model = mixed_precision_onnx(model, precision) if precision != "fp32" else model

    trt = import_tensorrt()
    _require_cuda("building a TensorRT engine")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    native_norm = getattr(getattr(trt, "OnnxParserFlag", None), "NATIVE_INSTANCENORM", None)
    if native_norm is not None:
        # INormalizationLayer (not the legacy plugin): a layer whose fp32 type the strongly typed network keeps.
        parser.set_flag(native_norm)
    # The path lets the parser find external weight files next to the original model.
    if not parser.parse(network_model.SerializeToString(), onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise EngineBuildError(f"TensorRT could not parse {onnx_path!r} ({precision}): {errors}")
    config = builder.create_builder_config()
    workspace_bytes = int(workspace_gb * (1 << 30))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, ch in channels.items():
            profile.set_shape(name, *p.input_shapes(ch))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"TensorRT rejected the optimization profile {p}")
    with _timing_cache(trt, config, timing_cache):
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineBuildError(
                f"TensorRT could not build an engine from {onnx_path!r} ({precision}); see its log above "
                f"(e.g. not enough workspace: workspace_gb={workspace_gb})"
            )
    data = bytes(memoryview(serialized))
    # Describe the engine as TensorRT built it (I/O dtypes follow type inference in a strongly typed network).
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise EngineBuildError("TensorRT built an engine it cannot deserialize")
    engine_inputs, engine_outputs = _describe_engine(trt, engine)
    del engine
    info = {
        "format": SIDECAR_FORMAT,
        "engine": os.path.basename(engine_path),
        "engine_sha256": hashlib.sha256(data).hexdigest(),
        "tensorrt_version": str(trt.__version__),
        "precision": precision,
        "strongly_typed": True,
        "tf32": bool(tf32),
        "workspace_bytes": workspace_bytes,
        "onnx": onnx_path,
        "inputs": engine_inputs,
        "outputs": engine_outputs,
        "channels": {name: channels[name] for name in (t["name"] for t in engine_inputs)},
        "profiles": [p.to_json() for p in profiles],
        "metadata": metadata,
        "device": _device_info(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _validate_sidecar(info, sidecar_path(engine_path))
    # Engine first, then its description: a description never names an engine that is not there.
    atomic_write_bytes(engine_path, data)
    write_sidecar(engine_path, info)
    return info


# ----------------------------------------------------------------------------------------------------
# Runtime


class TensorRTGenerator:
    """A generator engine (:func:`build_engine`) run on torch CUDA tensors, on the current CUDA stream.

    Args:
        engine_path: the serialized engine; its sidecar ``<engine_path>.json`` must be beside it.
        device: the CUDA device to run on (default: the current one).
        check: verify label values lie in ``[0, label_nc)`` (one host sync per call; the engine cannot raise and
            would give an all-zero one-hot). Turn off for throughput.

    Call: ``gen(label, inst=None, feat=None, *, out=None)`` with CUDA tensors on ``device``, in the engine's input
    dtypes (``read_sidecar(...)["inputs"]``: int64 or int32 ids, float32 features; nothing is converted for you):
        label: ``Tensor[N, 1, H, W]`` or ``[N, H, W]`` class ids (float ``[N, C, H, W]`` for a label_nc=0 model).
        inst: ``Tensor[N, 1, H, W]`` or ``[N, H, W]`` instance ids, when the engine takes them.
        feat: ``Tensor[N, feat_num, H, W]``, when the engine takes them.
        out: optional preallocated output (contiguous, the output dtype and shape).
    ``N x H x W`` must lie within one of the engine's profiles. Non-contiguous inputs are made contiguous (the only
    copy made). Returns ``Tensor[N, output_nc, H, W]`` (float32 for engines from :func:`build_engine`), written
    asynchronously on the current stream. One call at a time per object (one execution context).

    Raises:
        TensorRTUnavailableError: no TensorRT or no CUDA GPU. FileNotFoundError: no engine or sidecar.
        ValueError: the engine was built by another TensorRT version, or does not match its sidecar.
    """

    def __init__(
        self, engine_path: str | os.PathLike, *, device: torch.device | str | int | None = None, check: bool = True
    ):
        if not isinstance(engine_path, (str, os.PathLike)):
            raise TypeError(f"TensorRTGenerator: engine_path must be a path, got {type(engine_path).__name__}")
        self.path = os.fspath(engine_path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"TensorRTGenerator: no engine file {self.path!r}")
        self.info = read_sidecar(self.path)
        trt = import_tensorrt()
        _require_cuda("TensorRTGenerator")
        if str(trt.__version__) != self.info["tensorrt_version"]:
            raise ValueError(
                f"TensorRTGenerator: {self.path!r} was built with TensorRT {self.info['tensorrt_version']}, this is "
                f"{trt.__version__}: engines only load in the version that built them; rebuild it"
            )
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TensorRTGenerator: device must be a CUDA device, got {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.check = check
        with open(self.path, "rb") as f:
            data = f.read()
        expected_sha = self.info.get("engine_sha256")
        if expected_sha is not None and hashlib.sha256(data).hexdigest() != expected_sha:
            raise ValueError(
                f"TensorRTGenerator: {self.path!r} is not the engine its sidecar describes (sha256 differs)"
            )
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise ValueError(f"TensorRTGenerator: TensorRT could not deserialize {self.path!r} (see its log)")
            self.context = self.engine.create_execution_context()
        inputs, outputs = _describe_engine(trt, self.engine)
        if [t["name"] for t in inputs] != [t["name"] for t in self.info["inputs"]] or len(outputs) != 1:
            raise ValueError(f"TensorRTGenerator: {self.path!r} does not match its sidecar's inputs/outputs")
        self.input_names = [t["name"] for t in inputs]
        self.input_dtypes = {t["name"]: _TORCH_DTYPES[t["dtype"]] for t in inputs}
        self.output_name = outputs[0]["name"]
        self.output_dtype = _TORCH_DTYPES[outputs[0]["dtype"]]
        self.channels = dict(self.info["channels"])
        self.profiles = [ShapeProfile.from_json(p) for p in self.info["profiles"]]
        meta = self.info["metadata"]
        self.label_nc = int(meta["label_nc"]) if "label_nc" in meta else None
        self.size_multiple = int(meta.get("size_multiple", 1))
        self.use_instance = "inst" in self.input_names
        self.feat_num = self.channels.get("feat", 0)
        self.precision = self.info["precision"]
        self._profile = 0  # a fresh context uses profile 0

    def select_profile(self, n: int, h: int, w: int) -> int:
        """Index of the first profile containing ``N x H x W``.

        Raises:
            ValueError: no profile contains it (the message lists the engine's profiles).
        """
        for i, p in enumerate(self.profiles):
            if p.contains(n, h, w):
                return i
        ranges = ", ".join(
            f"N {p.min[0]}..{p.max[0]} H {p.min[1]}..{p.max[1]} W {p.min[2]}..{p.max[2]}" for p in self.profiles
        )
        raise ValueError(
            f"TensorRTGenerator: input N={n} H={h} W={w} lies outside the engine's profiles ({ranges}); rebuild the "
            f"engine with this size (pix2pixhd-fast export --format tensorrt --sizes {h}x{w})"
        )

    def _tensor(self, t: Any, name: str) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"TensorRTGenerator: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != self.device:
            raise ValueError(f"TensorRTGenerator: {name} is on {t.device}, the engine runs on {self.device}")
        want = self.input_dtypes[name]
        if t.dtype != want:
            raise TypeError(
                f"TensorRTGenerator: {name} must be {want} (the engine's input dtype), got {t.dtype}: convert it "
                f"with .to({want})"
            )
        if name in ("label", "inst") and t.dim() == 3 and not want.is_floating_point:
            t = t.unsqueeze(1)
        ch = self.channels[name]
        if t.dim() != 4 or t.size(1) != ch:
            raise ValueError(f"TensorRTGenerator: {name} must have shape [N, {ch}, H, W], got {tuple(t.shape)}")
        return t if t.is_contiguous() else t.contiguous()

    def __call__(
        self,
        label: torch.Tensor,
        inst: torch.Tensor | None = None,
        feat: torch.Tensor | None = None,
        *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {"label": label, "inst": inst, "feat": feat}
        tensors = {}
        for name, value in given.items():
            if name in self.input_names:
                if value is None:
                    raise ValueError(f"TensorRTGenerator: this engine takes {name!r}: pass it")
                tensors[name] = self._tensor(value, name)
            elif value is not None:
                raise ValueError(f"TensorRTGenerator: this engine takes no {name!r} (inputs {self.input_names})")
        ref = tensors["label"]
        n, h, w = ref.size(0), ref.size(2), ref.size(3)
        for name, t in tensors.items():
            if (t.size(0), t.size(2), t.size(3)) != (n, h, w):
                raise ValueError(f"TensorRTGenerator: {name} {tuple(t.shape)} does not match label {tuple(ref.shape)}")
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"TensorRTGenerator: H and W must be multiples of {m} for this generator, got {h}x{w}")
        if self.check and self.label_nc and not ref.is_floating_point() and ref.numel():
            lo, hi = (int(v) for v in torch.aminmax(ref))
            if lo < 0 or hi >= self.label_nc:
                raise ValueError(
                    f"TensorRTGenerator: label values must lie in [0, label_nc={self.label_nc}), "
                    f"got min {lo} and max {hi}"
                )
        index = self.select_profile(n, h, w)
        stream = torch.cuda.current_stream(self.device)
        handle = stream.cuda_stream
        with torch.cuda.device(self.device):
            if index != self._profile:
                if not self.context.set_optimization_profile_async(index, handle):
                    raise RuntimeError(f"TensorRTGenerator: could not switch to optimization profile {index}")
                self._profile = index
            for name, t in tensors.items():
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise ValueError(f"TensorRTGenerator: the engine rejected shape {tuple(t.shape)} for {name!r}")
                self.context.set_tensor_address(name, t.data_ptr())
            shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
            if out is None:
                out = torch.empty(shape, dtype=self.output_dtype, device=self.device)
            elif tuple(out.shape) != shape or out.dtype != self.output_dtype or out.device != self.device:
                raise ValueError(
                    f"TensorRTGenerator: out must be {self.output_dtype} of shape {shape} on {self.device}, got "
                    f"{out.dtype} {tuple(out.shape)} on {out.device}"
                )
            elif not out.is_contiguous():
                raise ValueError("TensorRTGenerator: out must be contiguous")
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(handle):
                raise RuntimeError("TensorRTGenerator: TensorRT failed to enqueue the engine (see its log)")
        return out

    def __repr__(self) -> str:
        return (
            f"TensorRTGenerator({self.path!r}, precision={self.precision}, inputs={self.input_names}, "
            f"profiles={len(self.profiles)}, device={self.device})"
        )
