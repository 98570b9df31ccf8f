"""Inference with a trained model: the reference ``test.py`` (result images + HTML page) plus PSNR metrics.

``run_test(opt)`` writes ``<results_dir>/<name>/<phase>_<which_epoch>/index.html`` and ``images/`` with, per test
item, the colourised input label, the synthesized image and (when the dataset has real images) the real one, and
``metrics.json`` with the PSNR of synthesized vs real images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

from .data import Pix2PixHDDataset, colorize_label, make_dataloader, to_uint8_image
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


def run_test(opt: argparse.Namespace) -> dict:
    """Generate ``--how_many`` test images; returns a summary with the page path and PSNR figures."""
    device = resolve_device(opt)
    amp = resolve_amp(opt.amp, device)
    model = load_model(opt, device)
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
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            fake = model.inference(
                label,
                inst,
                image.to(device) if (image is not None and opt.use_encoded_image) else None,
                feat.to(device) if feat is not None else None,
                dtype=amp or torch.float32,
                channels_last=not opt.no_channels_last,
            )
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
        rows,
        width=min(opt.display_winsize, 512),
    )
    summary = {
        "name": opt.name,
        "phase": opt.phase,
        "which_epoch": opt.which_epoch,
        "images": len(rows),
        "psnr_mean": float(np.mean(scores)) if scores else None,
        "psnr_per_image": scores,
        "seconds": elapsed,
        "device": str(device),
        "page": os.path.join(out_dir, "index.html"),
    }
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary
