"""ONNX export of the generator as one inference graph (label/instance ids in, image out), standard operators only.

The graph is exported by the ``torch.export``-based exporter (``dynamo=True``) with symbolic batch and H/W as
multiples of the generator's size multiple. Our operators reach the exporter as they are and become standard operators
through their registered translations (:mod:`pix2pixhd_fast.onnx_ops`):

============================  ==========================================================================
ours                          ONNX
============================  ==========================================================================
one-hot of the labels         ``Equal`` (label against the constant class ids) + ``Cast``
instance boundary             ``Slice`` of neighbours, ``Equal`` + ``Not`` in the id dtype (int64/int32,
                              exact for large ids), ``Cast``, zero ``Pad``, ``Max``
instance_norm_act             ``InstanceNormalization`` + ``Relu`` / ``LeakyRelu`` (slope 1.0: nothing)
ReflectionPad2d               ``Pad`` (mode ``reflect``)
============================  ==========================================================================

:func:`export_onnx` writes the model atomically, records what a runtime needs in the model's metadata
(``pix2pixhd_fast.*`` keys: label_nc, use_instance, feat_num, size_multiple, ...), checks it with
``onnx.checker``, asserts that only standard-domain operators appear (:func:`check_onnx_graph_ops`) and, by
default, compares onnxruntime's output with PyTorch's on the example input.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import onnx_ops
from ..utils.files import replace_with, temp_path_beside
from .graph import InferenceGraph, model_encoding

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "METADATA_PREFIX",
    "onnx_metadata",
    "STANDARD_DOMAINS",
    "ONNXVerificationError",
    "max_opset",
    "export_onnx",
    "check_onnx_graph_ops",
    "example_inputs",
    "verify_onnx",
]

DEFAULT_OPSET = 18  # the torch.export-based exporter's own opset; TensorRT 10 parses it
MIN_OPSET = 18  # lower opsets would need the exporter's version conversion, which is not guaranteed to succeed
METADATA_PREFIX = "pix2pixhd_fast."
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
_ID_DTYPES = {torch.int64: "int64", torch.int32: "int32"}


def onnx_metadata(source: Any) -> dict[str, str]:
    """The ``pix2pixhd_fast.*`` entries :func:`export_onnx` writes (label_nc, feat_num, size_multiple, ...), without
    the prefix, from an ``onnx.ModelProto`` or a ``{key: value}`` map (onnxruntime's ``custom_metadata_map``)."""
    items = source.items() if isinstance(source, Mapping) else ((p.key, p.value) for p in source.metadata_props)
    return {k[len(METADATA_PREFIX) :]: v for k, v in items if k.startswith(METADATA_PREFIX)}


class ONNXVerificationError(RuntimeError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


def max_opset() -> int:
    """The highest opset the installed ``onnx`` supports (the exporter converts its graph up to it)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


# ----------------------------------------------------------------------------------------------------
# Argument handling


def _resolve_graph(
    model_or_netG: nn.Module, label_nc: int | None, use_instance: bool | None, feat_num: int | None
) -> InferenceGraph:
    """An InferenceGraph from a graph, a Pix2PixHDModel (options from its opt) or a bare generator."""
    if isinstance(model_or_netG, InferenceGraph):
        have = (model_or_netG.label_nc, model_or_netG.use_instance, model_or_netG.feat_num)
        source = "the InferenceGraph"
    elif hasattr(model_or_netG, "netG") and hasattr(model_or_netG, "opt"):
        have = model_encoding(model_or_netG)
        source = "the model's options"
    elif isinstance(model_or_netG, nn.Module):
        if label_nc is None or use_instance is None:
            raise ValueError("export_onnx: a bare generator needs label_nc= and use_instance= (and feat_num= if any)")
        return InferenceGraph(model_or_netG, label_nc, use_instance, 0 if feat_num is None else feat_num)
    else:
        raise TypeError(
            f"export_onnx: expected an nn.Module (generator, Pix2PixHDModel or InferenceGraph), "
            f"got {type(model_or_netG).__name__}"
        )
    for name, given, value in zip(
        ("label_nc", "use_instance", "feat_num"), (label_nc, use_instance, feat_num), have, strict=True
    ):
        if given is not None and given != value:
            raise ValueError(f"export_onnx: {name}={given!r} contradicts {source} ({name}={value!r})")
    if isinstance(model_or_netG, InferenceGraph):
        return model_or_netG
    return InferenceGraph.from_model(model_or_netG)


def check_output_path(path: object, *, name: str = "path", example: str = "model.onnx", prefix: str = "") -> str:
    """Validate a file path about to be written (by the ONNX export and the TensorRT builder): a non-empty
    str/PathLike, not a directory, in an existing folder this process can write into. Errors start with
    ``prefix`` and call the argument ``name``; returns the path as a str."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{prefix}{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{prefix}{name} is empty")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{prefix}{path!r} is a directory; give a file name such as {example}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{prefix}the folder {parent!r} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{prefix}cannot write into {parent!r} (no write permission)")
    return path


def _check_size(example_size: Sequence[int] | None, multiple: int) -> tuple[int, int]:
    if example_size is None:
        # Large enough for the 7x7 reflection pads of any generator, small enough to trace quickly.
        return max(2 * multiple, 32), max(4 * multiple, 64)
    if (
        not isinstance(example_size, Sequence)
        or len(example_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in example_size)
    ):
        raise ValueError(f"export_onnx: example_size must be (H, W), two positive ints, got {example_size!r}")
    h, w = example_size
    if h % multiple or w % multiple:
        raise ValueError(
            f"export_onnx: example_size {h}x{w}: H and W must be multiples of {multiple} for this generator"
        )
    return h, w


def example_inputs(
    graph: InferenceGraph,
    size: tuple[int, int],
    batch_size: int = 1,
    id_dtype: torch.dtype = torch.int64,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random valid inputs for ``graph``, in :attr:`InferenceGraph.input_names` order, seeded by ``seed``.

    Returns:
        ``label``: ``Tensor[N, 1, H, W]`` of ``id_dtype`` in ``[0, label_nc)`` (float ``[N, C, H, W]`` when
        label_nc is 0); ``inst`` (when used): ``Tensor[N, 1, H, W]`` of ``id_dtype``, 4x4-pixel blocks of random
        ids so the boundary map is not trivial; ``feat`` (when used): ``Tensor[N, feat_num, H, W]`` float32.
        On ``device`` (default: the graph's parameters' device).
    """
    if device is None:
        p = next(graph.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    n = batch_size
    if graph.label_nc > 0:
        label = torch.randint(0, graph.label_nc, (n, 1, h, w), generator=gen).to(id_dtype)
    else:
        label = torch.randn(n, graph.label_channels, h, w, generator=gen)
    out = [label]
    if graph.use_instance:
        blocks = torch.randint(0, 1000, (n, 1, (h + 3) // 4, (w + 3) // 4), generator=gen)
        inst = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, :, :h, :w]
        out.append(inst.to(id_dtype).contiguous())
    if graph.feat_num:
        out.append(torch.randn(n, graph.feat_num, h, w, generator=gen))
    return tuple(t.to(device) for t in out)


class _Positional(nn.Module):
    """Calls the graph with positional inputs named by ``names`` (the exporter passes positional arguments)."""

    def __init__(self, graph: InferenceGraph):
        super().__init__()
        self.inference = graph
        self.names = graph.input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inference(**dict(zip(self.names, inputs, strict=True)))


# ----------------------------------------------------------------------------------------------------
# Export


def export_onnx(
    model_or_netG: nn.Module,
    path: str | os.PathLike,
    *,
    label_nc: int | None = None,
    use_instance: bool | None = None,
    feat_num: int | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    example_size: Sequence[int] | None = None,
    batch_size: int = 1,
    id_dtype: torch.dtype = torch.int64,
    verify: bool = True,
    atol: float = 1e-3,
) -> str:
    """Export a generator as an ONNX inference graph ``(label, [inst], [feat]) -> image``.

    Args:
        model_or_netG: a :class:`~pix2pixhd_fast.models.Pix2PixHDModel` (label_nc, instance use and feat_num come
            from its options), an :class:`InferenceGraph`, or a bare generator (GlobalGenerator, LocalEnhancer):
            then ``label_nc`` and ``use_instance`` are required. Parameters must be float32 (TensorRT and other
            runtimes build reduced precision from the fp32 graph).
        path: the ``.onnx`` file to write (its folder must exist); written atomically.
        label_nc, use_instance, feat_num: the input encoding (see :class:`InferenceGraph`); when taken from a
            model, values given here must agree with it.
        opset: ONNX opset, ``MIN_OPSET`` .. :func:`max_opset` (default 18).
        dynamic: symbolic batch, height and width on every input and the output (else the example's shape).
        example_size: ``(H, W)`` traced (multiples of the generator's size multiple); default a small valid size.
        batch_size: batch of the example input.
        id_dtype: ``torch.int64`` (default) or ``torch.int32``: the dtype of the ``label`` / ``inst`` inputs.
        verify: run the file with onnxruntime (CPU) on the example input and compare with PyTorch.
        atol: largest max-abs difference ``verify`` accepts.

    Inputs of the exported graph: ``label`` ``[N,1,H,W]`` id_dtype (float ``[N,C,H,W]`` with label_nc 0),
    ``inst`` ``[N,1,H,W]`` id_dtype (when use_instance), ``feat`` ``[N,feat_num,H,W]`` float32 (when feat_num > 0);
    output ``image`` ``[N,output_nc,H,W]`` float32 in [-1, 1]. Labels outside ``[0, label_nc)`` give an all-zero
    one-hot in the graph (it cannot raise): :class:`~pix2pixhd_fast.export.OnnxRuntimeGenerator` checks them.

    Returns:
        ``path`` (as a str).

    Raises:
        TypeError / ValueError: bad arguments (unknown model type, contradicting or missing options, channel
            mismatch, bad opset/size/dtype). FileNotFoundError / PermissionError / IsADirectoryError: ``path``
            cannot be written. ONNXVerificationError: onnxruntime and PyTorch disagree beyond ``atol``.
    """
    import onnx

    graph = _resolve_graph(model_or_netG, label_nc, use_instance, feat_num)
    path = check_output_path(path, prefix="export_onnx: ")
    hi = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= hi:
        raise ValueError(f"export_onnx: opset must be an int in [{MIN_OPSET}, {hi}], got {opset!r}")
    if id_dtype not in _ID_DTYPES:
        raise TypeError(f"export_onnx: id_dtype must be torch.int64 or torch.int32, got {id_dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"export_onnx: batch_size must be a positive int, got {batch_size!r}")
    bad = sorted({p.dtype for p in graph.parameters() if p.dtype != torch.float32}, key=str)
    if bad:
        raise ValueError(f"export_onnx: the generator's parameters must be float32 (call .float()), found {bad}")
    size = _check_size(example_size, graph.size_multiple)

    inputs = example_inputs(graph, size, batch_size, id_dtype)
    graph._validate(**dict(zip(graph.input_names, inputs, strict=True)))  # not checked while tracing
    names = graph.input_names
    dynamic_shapes = None
    if dynamic:
        # H and W are multiples of the size multiple; at least two multiples (or the example's one), so that every
        # reflection pad of the generator stays narrower than the feature map it pads.
        m = graph.size_multiple
        batch = torch.export.Dim("batch", min=1)
        height = torch.export.Dim("height_blocks", min=min(2, size[0] // m))
        width = torch.export.Dim("width_blocks", min=min(2, size[1] // m))
        dims = {0: batch, 2: m * height, 3: m * width}
        dynamic_shapes = (tuple(dims for _ in names),)  # one entry: _Positional's *inputs
    # Written beside the target, then renamed: no half-written model at ``path``.
    tmp = temp_path_beside(path, suffix=".tmp.onnx")
    try:
        positional = _Positional(graph)
        # Restore each module's own mode afterwards (a fresh InferenceGraph is in training mode while the
        # generator it wraps may not be: graph.train(was_training) would flip the generator).
        modes = [(m, m.training) for m in graph.modules()]
        positional.eval()
        try:
            with torch.no_grad():
                onnx_ops.register_onnx_translations()
                with warnings.catch_warnings():
                    # label/inst/feat share the batch, height and width dims; the exporter notes that it names each
                    # once.
                    warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
                    program = torch.onnx.export(
                        positional,
                        inputs,
                        dynamo=True,
                        opset_version=opset,
                        input_names=names,
                        output_names=["image"],
                        dynamic_shapes=dynamic_shapes,
                        verbose=False,
                    )
                expected = positional(*inputs) if verify else None
        finally:
            for m, mode in modes:
                m.training = mode
        # The exporter has run onnxscript's optimizer (constant folding, dead nodes); constants also become
        # initializers, which converters such as the float16 one treat as parameters.
        from onnx_ir.passes.common import LiftConstantsToInitializersPass

        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(program.model)
        proto = program.model_proto
        output_nc = proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        meta = {
            "format": "1",
            "label_nc": graph.label_nc,
            "label_channels": graph.label_channels,
            "use_instance": int(graph.use_instance),
            "feat_num": graph.feat_num,
            "output_nc": output_nc,
            "size_multiple": graph.size_multiple,
            "id_dtype": _ID_DTYPES[id_dtype],
            "input_names": ",".join(names),
            "example_size": f"{size[0]}x{size[1]}",
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = METADATA_PREFIX + key, str(value)
        proto.producer_name = "pix2pixhd_fast"
        proto.doc_string = "pix2pixHD generator: (label, [inst], [feat]) -> image in [-1, 1]"
        onnx.save(proto, tmp)
        check_onnx_graph_ops(tmp)
        if verify:
            diff = verify_onnx(tmp, inputs, expected)
            if not diff <= atol:  # also catches NaN
                raise ONNXVerificationError(
                    f"export_onnx: onnxruntime output differs from PyTorch by {diff:.3g} (> atol={atol:g})"
                )
        replace_with(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------------------------------
# Checks


def _iter_nodes(graph: Any) -> Iterator[Any]:
    """Every node of an ONNX GraphProto, including those in subgraphs (If/Loop/Scan bodies)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_nodes(g)


def check_onnx_graph_ops(path_or_model: str | os.PathLike | Any) -> set[str]:
    """Check an ONNX model with ``onnx.checker`` and assert it uses standard-domain operators only.

    Args:
        path_or_model: a ``.onnx`` path or a loaded ``onnx.ModelProto``.

    Returns:
        The set of operator types in the graph (subgraphs included), e.g. ``{"Conv", "InstanceNormalization"}``.

    Raises:
        ValueError: a node, an opset import or a local function belongs to a non-standard domain (e.g.
            ``pix2pixhd_fast``): another runtime could not run it.
        onnx.checker.ValidationError: the model is not valid ONNX.
    """
    import onnx

    if isinstance(path_or_model, (str, os.PathLike)):
        if not os.path.isfile(path_or_model):
            raise FileNotFoundError(f"check_onnx_graph_ops: no file {os.fspath(path_or_model)!r}")
        model = onnx.load(os.fspath(path_or_model))
    elif isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    else:
        raise TypeError(f"check_onnx_graph_ops: expected a path or onnx.ModelProto, got {type(path_or_model).__name__}")
    onnx.checker.check_model(model)
    problems = [f"opset import of domain {o.domain!r}" for o in model.opset_import if o.domain not in STANDARD_DOMAINS]
    problems += [f"local function {f.domain}::{f.name}" for f in model.functions]
    op_types = set()
    for node in _iter_nodes(model.graph):
        op_types.add(node.op_type)
        if node.domain not in STANDARD_DOMAINS:
            problems.append(f"node {node.name or '?'} ({node.domain}::{node.op_type})")
    if problems:
        raise ValueError("ONNX graph uses non-standard operators: " + "; ".join(sorted(set(problems))))
    return op_types


def verify_onnx(
    path: str | os.PathLike,
    inputs: Sequence[torch.Tensor],
    expected: torch.Tensor,
) -> float:
    """Max abs difference between onnxruntime's (CPU) output on ``inputs`` and ``expected`` (PyTorch's).

    Args:
        path: the ``.onnx`` file.
        inputs: the graph inputs in order (torch tensors, any device: copied to the CPU).
        expected: ``Tensor[N, C, H, W]``, the reference output.
    """
    from .runtime import OnnxRuntimeGenerator

    runner = OnnxRuntimeGenerator(path, check=False)
    out = runner(**dict(zip(runner.input_names, (t.detach().cpu() for t in inputs), strict=True)))
    ref = expected.detach().float().cpu()
    if out.shape != ref.shape:
        raise ONNXVerificationError(f"onnxruntime output shape {tuple(out.shape)} != PyTorch's {tuple(ref.shape)}")
    return float((out - ref).abs().max()) if ref.numel() else 0.0
