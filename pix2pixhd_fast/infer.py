"""Inference with a trained model: the reference ``test.py`` (result images + HTML page) plus PSNR metrics.

``run_test(opt)`` writes ``<results_dir>/<name>/<phase>_<which_epoch>/index.html`` and ``images/`` with, per test
item, the colourised input label, the synthesized image and (when the dataset has real images) the real one, and
``metrics.json`` with the PSNR of synthesized vs real images.

The generator runs through one of four backends (``--backend``, see :func:`make_backend`), all fed the same raw
label/instance ids and giving the same images within the precision's tolerance:

- ``eager``: :meth:`Pix2PixHDModel.inference` (our fused operators, autocast per ``--amp``);
- ``compile``: the generator + input encoding through ``torch.compile`` (inductor; CUDA graphs on the GPU);
- ``onnxruntime``: the ONNX export of the checkpoint (``<checkpoints_dir>/<name>/<which_epoch>_net_G.onnx``, written
  on first use and reused while it is newer than the ``.pth``), run by onnxruntime (CPU, or CUDA when its CUDA
  provider is installed and the device is a GPU);
- ``tensorrt``: a TensorRT engine built from that ONNX file (``<which_epoch>_net_G.<precision>.engine`` beside it,
  precision from ``--amp``: off -> fp32, bf16, fp16), for the image sizes met, reused while newer than the ONNX file.

Instance features (``--instance_feat``/``--label_feat``) are computed in PyTorch for every backend, then passed to the
generator as its ``feat`` input: a cluster centre per instance sampled from the clusters that ``encode-features``
wrote (seeded by ``--seed``; ``--feat_edit`` picks centres or vectors per instance id; see
:mod:`pix2pixhd_fast.features`), or E(real image) with ``--use_encoded_image``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch

from .data import Pix2PixHDDataset, colorize_label, make_dataloader, to_uint8_image
from .models.checkpoint import load_pix2pixhd_checkpoint
from .models.pix2pixhd import Pix2PixHDModel
from .train.trainer import resolve_amp, resolve_device
from .train.visualizer import save_image, write_html_page

__all__ = [
    "BACKENDS",
    "psnr",
    "load_model",
    "run_test",
    "InferenceBackend",
    "EagerBackend",
    "CompileBackend",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "make_backend",
    "checkpoint_onnx",
    "precision_of",
    "benchmark_backends",
    "benchmark_markdown",
]

BACKENDS = ("eager", "compile", "onnxruntime", "tensorrt")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two uint8 images of the same shape (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def load_model(opt: argparse.Namespace, device: torch.device) -> Pix2PixHDModel:
    """Build the inference model from the options and load ``<which_epoch>_net_G.pth`` (and ``_net_E.pth`` when
    features are encoded from real images) from ``<checkpoints_dir>/<name>``."""
    model = Pix2PixHDModel(opt, is_train=False)
    folder = os.path.join(opt.checkpoints_dir, opt.name)
    nets = [("G", model.netG)]
    if model.netE is not None and getattr(opt, "use_encoded_image", False):
        nets.append(("E", model.netE))
    for which, net in nets:
        path = os.path.join(folder, f"{opt.which_epoch}_net_{which}.pth")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint {path} (check --checkpoints_dir, --name and --which_epoch)")
        load_pix2pixhd_checkpoint(path, net)
    model.eval().to(device)
    if not opt.no_channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Backends


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
        from .export import InferenceGraph, compile_generator

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

    from .export.graph import model_encoding
    from .export.onnx import METADATA_PREFIX

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # unreadable (e.g. truncated by a crash in someone else's writer): export again
        return False
    meta = {p.key[len(METADATA_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)}
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
    from .export import InferenceGraph, export_onnx
    from .export.graph import model_encoding

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

        from .export import OnnxRuntimeGenerator

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
        from .export.tensorrt import _require_cuda, import_tensorrt

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
        from .export.tensorrt import ShapeProfile, _device_info, read_sidecar

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
        from .export import TensorRTGenerator, build_engine

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
        from .export.tensorrt import _require_cuda, import_tensorrt

        import_tensorrt()  # fail before exporting anything
        _require_cuda("the tensorrt backend")
        return TensorRTBackend(model, device, amp, onnx_path=checkpoint_onnx(model, opt))
    raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def run_test(opt: argparse.Namespace, extra_rows: list[tuple[str, list[tuple[str, str]]]] | None = None) -> dict:
    """Generate ``--how_many`` test images with ``--backend``; returns a summary with the page path and PSNR.

    Models with instance features (``--instance_feat``/``--label_feat``, not ``--load_features``) get, per image,
    a cluster centre per instance sampled from the clusters file (seeded by ``--seed`` and the image index; see
    :func:`pix2pixhd_fast.features.find_clusters_file`), or E(real image) with ``--use_encoded_image``; ``--feat_edit``
    sets chosen instances. ``extra_rows`` (``[(header, [(caption, path relative to the page)])]``) go on top of the
    page (the demo's styles section).
    """
    from .features import inference_features

    if getattr(opt, "num_threads", 0) > 0:
        torch.set_num_threads(opt.num_threads)
    device = resolve_device(opt)
    amp = resolve_amp(opt.amp, device)
    backend_name = getattr(opt, "backend", "eager")
    if backend_name == "eager" and getattr(opt, "compile", False):  # the base option --compile means the same
        backend_name = "compile"
    model = load_model(opt, device)
    backend = make_backend(backend_name, model, opt, device, amp)
    feature_source = inference_features(opt)  # before any work: a missing clusters file fails fast
    dataset = Pix2PixHDDataset.from_options(opt)
    loader = make_dataloader(dataset, batch_size=1, shuffle=False, num_workers=min(opt.nThreads, 1), seed=opt.seed)
    out_dir = os.path.join(opt.results_dir, opt.name, f"{opt.phase}_{opt.which_epoch}")
    img_dir = os.path.join(out_dir, "images")
    os.makedirs(img_dir, exist_ok=True)
    rows, scores = [], []
    limit = min(opt.how_many, opt.ntest)
    t0 = time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= limit:
            break
        label = batch["label"].to(device)
        inst = batch.get("inst")
        inst = inst.to(device) if inst is not None and not opt.no_instance else None
        image = batch.get("image")
        feat = batch.get("feat")
        real = image.to(device) if (image is not None and opt.use_encoded_image) else None
        feat = feat.to(device) if feat is not None else None
        if feature_source is not None:
            encoded = backend.features(label, inst, real, None) if opt.use_encoded_image else None
            feat, real = feature_source(i, label, inst, encoded), None
        fake = backend(label, inst, real, feat)
        stem = os.path.splitext(os.path.basename(str(batch["path"][0])))[0]
        lab = (
            to_uint8_image(batch["label"][0])
            if opt.label_nc == 0
            else colorize_label(batch["label"][0, 0], opt.label_nc)
        )
        visuals = {"input_label": lab, "synthesized_image": to_uint8_image(fake[0].float().cpu())}
        if image is not None:
            visuals["real_image"] = to_uint8_image(image[0].float())
            scores.append(psnr(visuals["synthesized_image"], visuals["real_image"]))
        imgs = []
        for k, arr in visuals.items():
            rel = os.path.join("images", f"{stem}_{k}.png")
            save_image(arr, os.path.join(out_dir, rel))
            imgs.append((k, rel))
        rows.append((stem, imgs))
    elapsed = time.perf_counter() - t0
    write_html_page(
        os.path.join(out_dir, "index.html"),
        f"Experiment = {opt.name}, Phase = {opt.phase}, Epoch = {opt.which_epoch}",
        list(extra_rows or []) + rows,
        width=min(opt.display_winsize, 512),
    )
    summary = {
        "name": opt.name,
        "phase": opt.phase,
        "which_epoch": opt.which_epoch,
        "backend": backend.name,
        "images": len(rows),
        "psnr_mean": float(np.mean(scores)) if scores else None,
        "psnr_per_image": scores,
        "seconds": elapsed,
        "device": str(device),
        "page": os.path.join(out_dir, "index.html"),
    }
    if feature_source is not None:
        summary.update(feature_source.describe())
        if feature_source.unmatched:
            print(f"warning: --feat_edit ids found in no test image: {feature_source.unmatched}", file=sys.stderr)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Side-by-side timing of the backends


def _random_batch(
    model: Pix2PixHDModel, batch: int, h: int, w: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Seeded random inputs: labels, instance ids in 8x8-pixel blocks (boundaries on a grid), features."""
    opt = model.opt
    g = torch.Generator().manual_seed(seed)
    if opt.label_nc > 0:
        # The data pipeline's dtypes (uint8 labels, int32 instance ids): what `test` feeds the backends.
        label_dtype = torch.uint8 if opt.label_nc <= 256 else torch.int32
        label = torch.randint(0, opt.label_nc, (batch, 1, h, w), generator=g).to(label_dtype)
    else:
        label = torch.rand(batch, opt.input_nc, h, w, generator=g) * 2 - 1
    inst = None
    if not opt.no_instance:
        blocks = torch.randint(0, 1000, (batch, 1, (h + 7) // 8, (w + 7) // 8), generator=g)
        inst = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3)[:, :, :h, :w].to(torch.int32).contiguous()
    feat = torch.randn(batch, opt.feat_num, h, w, generator=g) if opt.use_features else None
    return tuple(t.to(device) if t is not None else None for t in (label, inst, feat))  # type: ignore[return-value]


def _time_ms(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Per-iteration latencies (ms) after ``warmup`` calls: CUDA events on the current stream on a GPU (the device
    work, without host-side jitter between launches), ``perf_counter`` on the CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in pairs]
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)"


def benchmark_backends(
    model: Pix2PixHDModel,
    opt: argparse.Namespace,
    device: torch.device,
    amp: torch.dtype | None,
    *,
    backends: list[str] | tuple[str, ...] = BACKENDS,
    sizes: list[tuple[int, int]] | tuple[tuple[int, int], ...] = ((256, 512),),
    batch: int = 1,
    warmup: int = 3,
    iters: int = 10,
    seed: int = 0,
    compile_mode: str = "default",
) -> dict:
    """Time the generator through each backend on the same random inputs, side by side in one process.

    Args:
        model: a Pix2PixHDModel in eval mode on ``device`` (random or loaded weights: timing does not depend on them).
        opt: its options; onnxruntime/tensorrt export to ``<opt.checkpoints_dir>/<opt.name>/<opt.which_epoch>_net_G``
            (:func:`checkpoint_onnx`).
        device, amp: where and in which autocast precision eager/compile run (tensorrt builds that precision;
            onnxruntime runs fp32).
        backends: names from :data:`BACKENDS`; one that cannot run here is reported as skipped, with the reason.
        sizes: ``(H, W)`` sizes.
        batch, warmup, iters, seed: batch size, untimed calls first (compilation, engine build and autotuning happen
            there), timed calls, input seed.

    Returns:
        ``{"device", "device_name", "torch", "precision", "batch", "warmup", "iters", "results": [...]}`` with one
        result per backend and size: ``backend``, ``size`` (``"HxW"``), ``status`` (``"ok"``/``"skipped"``),
        ``reason`` (skipped), ``precision``, ``median_ms``, ``min_ms``, ``mean_ms``, ``images_per_s``,
        ``speedup_vs_eager`` (median ratio, when eager ran), ``max_abs_diff_vs_eager``.
    """
    from .export.tensorrt import EngineBuildError, TensorRTUnavailableError

    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}: choose from {', '.join(BACKENDS)}")
    for name, v in (("batch", batch), ("iters", iters)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    multiple = 2 ** (opt.n_downsample_global + (opt.n_local_enhancers if opt.netG == "local" else 0))
    for h, w in sizes:
        if h % multiple or w % multiple:
            raise ValueError(f"size {h}x{w}: H and W must be multiples of {multiple} for this generator")
    results = []
    made: dict[str, InferenceBackend | str] = {}
    for h, w in sizes:
        label, inst, feat = _random_batch(model, batch, h, w, device, seed)
        reference = None
        eager_ms = None
        for name in backends:
            row = {"backend": name, "size": f"{h}x{w}", "precision": precision_of(amp)}
            if name == "onnxruntime":
                row["precision"] = "fp32"
            if name not in made:
                try:
                    made[name] = make_backend(name, model, opt, device, amp, compile_mode=compile_mode)
                except (TensorRTUnavailableError, ImportError, ValueError) as e:  # e.g. tensorrt on a CPU
                    made[name] = str(e)
            backend = made[name]
            if isinstance(backend, str):
                results.append({**row, "status": "skipped", "reason": backend})
                continue
            try:
                out = backend(label, inst, None, feat)
                times = _time_ms(functools.partial(backend, label, inst, None, feat), device, warmup, iters)
            except (TensorRTUnavailableError, EngineBuildError) as e:
                results.append({**row, "status": "skipped", "reason": str(e)})
                continue
            out = out.detach().float().cpu()
            median = float(np.median(times))
            row.update(
                status="ok",
                median_ms=median,
                min_ms=float(np.min(times)),
                mean_ms=float(np.mean(times)),
                images_per_s=batch * 1e3 / median if median > 0 else math.inf,
            )
            if isinstance(backend, OnnxRuntimeBackend):
                row["provider"] = backend.runner.session.get_providers()[0]
            if name == "eager":
                reference, eager_ms = out, median
            if reference is not None:
                row["max_abs_diff_vs_eager"] = float((out - reference).abs().max()) if out.numel() else 0.0
            if eager_ms is not None:
                row["speedup_vs_eager"] = eager_ms / median if median > 0 else math.inf
            results.append(row)
    network = {
        k: getattr(opt, k)
        for k in ("netG", "ngf", "n_downsample_global", "n_blocks_global", "n_local_enhancers", "n_blocks_local")
    }
    network.update(
        label_nc=opt.label_nc, instance=not opt.no_instance, feat_num=opt.feat_num if opt.use_features else 0
    )
    return {
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "precision": precision_of(amp),
        "network": network,
        "batch": batch,
        "warmup": warmup,
        "iters": iters,
        "results": results,
    }


def benchmark_markdown(report: dict) -> str:
    """A markdown table of :func:`benchmark_backends`' report."""
    lines = [
        f"Generator inference on {report['device_name']} ({report['device']}), torch {report['torch']}, "
        f"batch {report['batch']}, median of {report['iters']} runs after {report['warmup']} warm-up runs.",
        "",
        "| backend | size (HxW) | precision | median ms | min ms | images/s | vs eager | max abs diff | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if r["status"] != "ok":
            reason = r["reason"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['backend']} | {r['size']} | {r['precision']} | | | | | | skipped: {reason} |")
            continue
        speed = f"{r['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in r else ""
        diff = f"{r['max_abs_diff_vs_eager']:.2e}" if "max_abs_diff_vs_eager" in r else ""
        lines.append(
            f"| {r['backend']} | {r['size']} | {r['precision']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
            f"{r['images_per_s']:.2f} | {speed} | {diff} | |"
        )
    return "\n".join(lines) + "\n"
