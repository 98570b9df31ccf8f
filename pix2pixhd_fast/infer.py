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
import json
import math
import os
import sys
import time

import numpy as np
import torch

from .data import Pix2PixHDDataset, colorize_label, make_dataloader, to_uint8_image
from .export.backends import make_backend
from .models.checkpoint import load_pix2pixhd_checkpoint
from .models.pix2pixhd import Pix2PixHDModel
from .train.trainer import resolve_amp, resolve_device
from .train.visualizer import save_image, write_html_page

__all__ = ["psnr", "load_model", "run_test"]


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
