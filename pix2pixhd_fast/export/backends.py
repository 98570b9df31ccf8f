"""Inference backends of a trained Pix2PixHDModel, one adapter per backend, all called as
``backend(label, inst, image=None, feat=None) -> image`` with the raw label/instance ids:

- ``eager``: :meth:`Pix2PixHDModel.inference` (our fused operators, autocast per ``--amp``);
- ``compile``: the generator + input encoding through :func:`~pix2pixhd_fast.export.compile_generator` (inductor;
  CUDA graphs on the GPU);
- ``onnxruntime``: the ONNX export of the checkpoint (:func:`checkpoint_onnx`), run by
  :class:`~pix2pixhd_fast.export.OnnxRuntimeGenerator`;
- ``tensorrt``: a TensorRT engine built from that ONNX file (:mod:`pix2pixhd_fast.export.tensorrt`).
"""

from __future__ import annotations

import argparse
import copy
import os

import torch

from ..models.pix2pixhd import Pix2PixHDModel

__all__ = [
    "BACKENDS",
    "InferenceBackend",
    "EagerBackend",
    "CompileBackend",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "make_backend",
    "checkpoint_onnx",
    "precision_of",
]

BACKENDS = ("eager", "compile", "onnxruntime", "tensorrt")


def precision_of(amp: torch.dtype | None) -> str:
    """The deployment precision name of an autocast dtype: None -> 'fp32', bfloat16 -> 'bf16', float16 -> 'fp16'."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


class InferenceBackend:
    """A way to run a loaded model's generator: ``backend(label, inst, image, feat) -> Tensor[N, output_nc, H, W]``.

    Args of a call (as a test batch gives them, on the model's device):
        label: ``Tensor[N, 1, H, W]`` integer class ids (float ``[N, input_nc, H, W]`` with label_nc 0).
        inst: ``Tensor[N, 1, H, W]`` integer instance ids, or None (``--no_instance``).
        image: ``Tensor[N, output_nc, H, W]`` real image for the feature encoder (``--use_encoded_image``), or None.
        feat: ``Tensor[N, feat_num, H, W]`` precomputed features (``--load_features``), or None.
    Returns the generated image in [-1, 1], a float tensor on the model's device (CPU for onnxruntime).
    """

    name = "base"

    def __init__(self, model: Pix2PixHDModel, device: torch.device, amp: torch.dtype | None):
        self.model = model
        self.device = device
        self.amp = amp

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def features(
        self, label: torch.Tensor, inst: torch.Tensor | None, image: torch.Tensor | None, feat: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The generator's feature input, as :meth:`Pix2PixHDModel.inference` makes it: ``feat`` if given, else
        E(image) when the model has an encoder and an image is given, else zeros; None without features."""
        opt = self.model.opt
        if not opt.use_features:
            return None
        if feat is not None:
            return feat.float()
        if image is not None and self.model.netE is not None:
            with torch.no_grad(), self.autocast():
                return self.model.encode_features(image, inst, label).float()
        n, _, h, w = label.shape
        return torch.zeros(n, opt.feat_num, h, w, device=label.device)

    def __call__(
        self,
        label: torch.Tensor,
        inst: torch.Tensor | None,
        image: torch.Tensor | None = None,
        feat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device}, amp={self.amp})"


class EagerBackend(InferenceBackend):
    """``Pix2PixHDModel.inference`` under autocast (the reference path the other backends are compared with)."""

    name = "eager"

    def __call__(self, label, inst, image=None, feat=None):
        with self.autocast():
            return self.model.inference(
                label,
                inst,
                image,
                feat,
                dtype=self.amp or torch.float32,
                channels_last=bool(getattr(self.model.opt, "channels_last", False)),
            )


class CompileBackend(InferenceBackend):
    """The generator with its input encoding (:class:`~pix2pixhd_fast.export.InferenceGraph`) compiled by
    :func:`~pix2pixhd_fast.export.compile_generator` (inductor, ``fullgraph``; CUDA graphs on the GPU), under
    autocast. Compiles on the first call and once per new image size."""

    name = "compile"

    def __init__(self, model, device, amp, *, mode: str = "default", cuda_graphs: bool = True):
        super().__init__(model, device, amp)
        from . import InferenceGraph, compile_generator

        self.graph = InferenceGraph.from_model(model, check=False)
        self.compiled = compile_generator(self.graph, mode=mode, cuda_graphs=cuda_graphs)

    def __call__(self, label, inst, image=None, feat=None):
        feat_map = self.features(label, inst, image, feat)
        args = [label] + ([inst] if self.graph.use_instance else []) + ([feat_map] if self.graph.feat_num else [])
        with self.autocast():
            return self.compiled(*args)


def _onnx_matches(path: str, model: Pix2PixHDModel) -> bool:
    """Whether the ONNX file at ``path`` encodes its input as ``model`` does (label_nc, instance map, features)."""
    import onnx

    from .graph import model_encoding
    from .onnx import onnx_metadata

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # unreadable (e.g. truncated by a crash in someone else's writer): export again
        return False
    meta = onnx_metadata(proto)
    label_nc, use_instance, feat_num = model_encoding(model)
    want = {
        "label_nc": str(label_nc),
        "use_instance": str(int(use_instance)),
        "feat_num": str(feat_num),
        "id_dtype": "int32",
    }
    return all(meta.get(k) == v for k, v in want.items())


def checkpoint_onnx(model: Pix2PixHDModel, opt: argparse.Namespace) -> str:
    """``<checkpoints_dir>/<name>/<which_epoch>_net_G.onnx`` for the loaded ``model``: reused when it is at least as
    new as ``<which_epoch>_net_G.pth`` and encodes the same inputs, else exported now (fp32, int32 ids, dynamic
    sizes, checked with onnxruntime). Returns its path."""
    from . import InferenceGraph, export_onnx
    from .graph import model_encoding

    folder = os.path.join(opt.checkpoints_dir, opt.name)
    pth = os.path.join(folder, f"{opt.which_epoch}_net_G.pth")
    path = os.path.join(folder, f"{opt.which_epoch}_net_G.onnx")
    if (
        os.path.isfile(path)
        and (not os.path.exists(pth) or os.path.getmtime(path) >= os.path.getmtime(pth))
        and _onnx_matches(path, model)
    ):
        return path
    # Export a CPU fp32 copy: the verification compares with onnxruntime on the CPU, where the model's own device
    # (TF32 convolutions on a GPU) would add its own rounding. int32 ids: the data pipeline's instance-id dtype, and
    # one every TensorRT layer takes (labels are range-checked, so int32 is exact for them too).
    netG = copy.deepcopy(model.netG).float().cpu().to(memory_format=torch.contiguous_format).eval()
    export_onnx(InferenceGraph(netG, *model_encoding(model)), path, id_dtype=torch.int32)
    return path


class OnnxRuntimeBackend(InferenceBackend):
    """The checkpoint's ONNX export (:func:`checkpoint_onnx`) run by onnxruntime; fp32. Runs on the CPU unless the
    device is a GPU and onnxruntime's CUDA provider is installed. Returns CPU tensors."""

    name = "onnxruntime"

    def __init__(self, model, device, amp, *, onnx_path: str, num_threads: int | None = None):
        super().__init__(model, device, amp)
        import onnxruntime as ort

        from . import OnnxRuntimeGenerator

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.onnx_path = onnx_path
        self.runner = OnnxRuntimeGenerator(onnx_path, providers=providers, num_threads=num_threads)

    def __call__(self, label, inst, image=None, feat=None):
        feat_map = self.features(label, inst, image, feat)
        return self.runner(
            label.cpu(),
            inst.cpu() if self.runner.use_instance else None,
            feat_map.cpu() if feat_map is not None else None,
        )


class TensorRTBackend(InferenceBackend):
    """A TensorRT engine of the checkpoint's ONNX export (:func:`checkpoint_onnx`), precision from ``amp``.

    The engine (``<which_epoch>_net_G.<precision>.engine`` beside the ONNX file, with its ``.json`` sidecar and a
    shared timing cache ``tensorrt_timing.cache``) is reused while it is newer than the ONNX file, was built by this
    TensorRT on this kind of GPU and has a profile for the image size; otherwise it is (re)built with one fixed-size
    profile per size met so far. Needs TensorRT and a CUDA GPU (checked first, with what to install).
    """

    name = "tensorrt"

    def __init__(self, model, device, amp, *, onnx_path: str):
        super().__init__(model, device, amp)
        from .tensorrt import _require_cuda, import_tensorrt

        self._trt = import_tensorrt()
        _require_cuda("the tensorrt backend")
        if device.type != "cuda":
            raise ValueError(f"--backend tensorrt runs on a GPU, but the device is {device}: use --device cuda")
        self.onnx_path = onnx_path
        self.precision = precision_of(amp)
        base = os.path.splitext(onnx_path)[0]
        self.engine_path = f"{base}.{self.precision}.engine"
        self.timing_cache = os.path.join(os.path.dirname(onnx_path), "tensorrt_timing.cache")
        self.runner = None

    def _engine_sizes(self) -> list[tuple[int, int]]:
        """Sizes of the existing engine's profiles when it can be reused here, else []."""
        from .tensorrt import ShapeProfile, _device_info, read_sidecar

        if not os.path.isfile(self.engine_path) or os.path.getmtime(self.engine_path) < os.path.getmtime(
            self.onnx_path
        ):
            return []
        try:
            info = read_sidecar(self.engine_path)
        except (OSError, ValueError):
            return []
        if info["tensorrt_version"] != str(self._trt.__version__) or info.get("device") != _device_info(self.device):
            return []
        return [(p.max[1], p.max[2]) for p in map(ShapeProfile.from_json, info["profiles"])]

    def _runner_for(self, n: int, h: int, w: int):
        from . import TensorRTGenerator, build_engine

        if self.runner is not None and any(p.contains(n, h, w) for p in self.runner.profiles):
            return self.runner
        sizes = self._engine_sizes()
        if (h, w) not in sizes:
            sizes = sorted(set(sizes) | {(h, w)})
            with torch.cuda.device(self.device):
                build_engine(
                    self.onnx_path,
                    self.engine_path,
                    precision=self.precision,
                    sizes=sizes,
                    max_batch=max(n, 1),
                    timing_cache=self.timing_cache,
                )
        self.runner = TensorRTGenerator(self.engine_path, device=self.device, check=False)
        return self.runner

    def __call__(self, label, inst, image=None, feat=None):
        feat_map = self.features(label, inst, image, feat)
        runner = self._runner_for(label.shape[0], label.shape[-2], label.shape[-1])
        dt = runner.input_dtypes
        args = {"label": label.to(self.device, dt["label"])}
        if runner.use_instance:
            args["inst"] = inst.to(self.device, dt["inst"])
        if runner.feat_num:
            args["feat"] = feat_map.to(self.device, dt["feat"])
        return runner(**args)


def make_backend(
    name: str,
    model: Pix2PixHDModel,
    opt: argparse.Namespace,
    device: torch.device,
    amp: torch.dtype | None,
    *,
    compile_mode: str = "default",
) -> InferenceBackend:
    """The backend ``name`` (one of :data:`BACKENDS`) for a model loaded by :func:`load_model`.

    onnxruntime and tensorrt export the checkpoint first (:func:`checkpoint_onnx`; needs ``opt.checkpoints_dir``,
    ``opt.name``, ``opt.which_epoch``).

    Raises:
        ValueError: unknown backend. TensorRTUnavailableError: tensorrt without TensorRT or a GPU.
    """
    if name == "eager":
        return EagerBackend(model, device, amp)
    if name == "compile":
        return CompileBackend(model, device, amp, mode=compile_mode)
    if name == "onnxruntime":
        threads = opt.num_threads if getattr(opt, "num_threads", 0) > 0 else None
        return OnnxRuntimeBackend(model, device, amp, onnx_path=checkpoint_onnx(model, opt), num_threads=threads)
    if name == "tensorrt":
        from .tensorrt import _require_cuda, import_tensorrt

        import_tensorrt()  # fail before exporting anything
        _require_cuda("the tensorrt backend")
        return TensorRTBackend(model, device, amp, onnx_path=checkpoint_onnx(model, opt))
    raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
