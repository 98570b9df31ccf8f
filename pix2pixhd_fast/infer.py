"""Inference with a trained model: the reference ``test.py`` (result images + HTML page) plus PSNR metrics.

``run_test(opt)`` writes ``<results_dir>/<name>/<phase>_<which_epoch>/index.html`` and ``images/`` with, per test
item, the colourised input label, the synthesized image and (when the dataset has real images) the real one, and
``metrics.json`` with the PSNR of synthesized vs real images.

The generator runs through one of four backends (``--backend``; the adapters live in
:mod:`pix2pixhd_fast.export.backends`), all fed the same raw label/instance ids and giving the same images within the
precision's tolerance:

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
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch

from .data import Pix2PixHDDataset, colorize_label, make_dataloader, to_uint8_image
from .export.backends import (
    BACKENDS,
    CompileBackend,
    EagerBackend,
    InferenceBackend,
    OnnxRuntimeBackend,
    TensorRTBackend,
    checkpoint_onnx,
    make_backend,
    precision_of,
)
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
