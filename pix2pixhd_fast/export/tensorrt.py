"""TensorRT engines from the exported ONNX generator: a builder and a runtime on torch CUDA tensors (experimental).

Written against TensorRT's Python API (>= 10), imported lazily: without the ``tensorrt`` package or a CUDA GPU
every entry point raises :class:`TensorRTUnavailableError` saying what to install (``pip install tensorrt``, or
``pip install 'pix2pixhd_fast[tensorrt]'``).

Precision lives in the ONNX graph (:func:`~pix2pixhd_fast.export.precision.mixed_precision_onnx`: convolutions in
fp16/bf16, instance norms in fp32) and the network is *strongly typed*, so TensorRT keeps exactly those types. The
weak-typing alternative (``BuilderFlag.FP16``/``BF16`` plus per-layer precisions under
``OBEY_PRECISION_CONSTRAINTS``) is deprecated in TensorRT 10 and removed in 11, where strong typing is always on.
bf16 graphs are opset 22, which TensorRT's parser reads from 10.x on.

Profiles: one per size the user names (batch ``1..max_batch``, H and W fixed: the fastest kernels per resolution), or
one spanning them (``dynamic=True``), shared by ``label``, ``inst`` and ``feat``. A timing cache file is loaded when
it exists and saved after the build, so a rebuild on the same GPU skips kernel timing already done. The engine is
written atomically, then a JSON sidecar (``<engine>.json``, :func:`read_sidecar`) with the inputs/outputs, profiles,
precision, TensorRT version, GPU and the generator's encoding (label_nc, feat_num, ...), which the runtime checks
its inputs against.

:class:`TensorRTGenerator` binds torch CUDA tensors by address (``set_tensor_address``: no copies), allocates the
output with torch and enqueues with ``execute_async_v3`` on the current CUDA stream; no host synchronisation unless
``check=True`` verifies label values.
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
from .onnx import check_output_path, onnx_metadata
from .precision import PRECISIONS, _check_precision, _load_onnx, mixed_precision_onnx

__all__ = [
    "INSTALL_HINT",
    "SIDECAR_FORMAT",
    "TensorRTUnavailableError",
    "EngineBuildError",
    "ShapeProfile",
    "import_tensorrt",
    "tensorrt_status",
    "parse_sizes",
    "profiles_for_sizes",
    "build_engine",
    "sidecar_path",
    "write_sidecar",
    "read_sidecar",
    "TensorRTGenerator",
]

INSTALL_HINT = (
    "install TensorRT with `pip install tensorrt` (or `pip install 'pix2pixhd_fast[tensorrt]'`); it needs an NVIDIA "
    "GPU with its driver"
)
SIDECAR_FORMAT = 1
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
    from ..data.synthetic import parse_size

    if not isinstance(text, str):
        raise TypeError(f"sizes must be a string such as '512x1024,1024x2048', got {type(text).__name__}")
    return [parse_size(item) for item in text.split(",")]


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
# What the builder reads from the ONNX graph


def _input_channels(model: Any) -> dict[str, int]:
    """``{input name: C}`` of the graph's ``[N, C, H, W]`` inputs: the profiles give N, H and W per input; TensorRT
    checks the rest (dtypes when parsing, static dimensions against the profiles when adding them or building)."""
    weights = {i.name for i in model.graph.initializer}  # old-style models list weights as inputs
    channels = {}
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != 4 or not dims[1].HasField("dim_value"):
            raise ValueError(f"ONNX input {vi.name!r} is not [N, C, H, W] with a fixed C, as the generator's are")
        channels[vi.name] = dims[1].dim_value
    if not channels:
        raise ValueError("the ONNX graph has no inputs")
    return channels


# ----------------------------------------------------------------------------------------------------
# Sidecar


def sidecar_path(engine_path: str | os.PathLike) -> str:
    """Where the JSON description of an engine lives: ``<engine_path>.json``."""
    return os.fspath(engine_path) + ".json"


_TENSOR_KEYS = {"name", "dtype", "shape"}
# TensorRT's DataType members -> the torch dtype names the sidecar records.
_TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
_TORCH_DTYPES = {name: getattr(torch, name) for name in _TRT_DTYPES.values()}


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


def _check_profiles_fit(profiles: Sequence[ShapeProfile], multiple: int) -> None:
    for p in profiles:
        for shape in (p.min, p.opt, p.max):
            if shape[1] % multiple or shape[2] % multiple:
                raise ValueError(
                    f"profile size {shape[1]}x{shape[2]}: H and W must be multiples of {multiple} for this generator"
                )


def _trt_dtype_name(trt: ModuleType, dtype: Any) -> str:
    for attr, name in _TRT_DTYPES.items():
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
        ValueError: unsupported precision; no sizes; sizes that are not multiples of the generator's size multiple;
            a bad batch/workspace/level.
        TensorRTUnavailableError: TensorRT or a CUDA GPU is missing (raised after the arguments are checked).
        EngineBuildError: TensorRT rejected the model or a profile (e.g. one that contradicts a static ONNX input),
            or the build failed.
    """
    precision = _check_precision(precision)
    model = _load_onnx(onnx_path)
    onnx_path = os.path.abspath(os.fspath(onnx_path))
    engine_path = check_output_path(engine_path, name="engine_path", example="model.engine")
    if os.path.abspath(engine_path) == onnx_path:
        raise ValueError("engine_path must differ from onnx_path")
    channels = _input_channels(model)
    metadata = onnx_metadata(model)
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
    _check_profiles_fit(profiles, multiple)
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
    # Strongly typed: opted into in 10.x, always on (the flag accepted and ignored) in 11.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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
