"""``make demo``: embedded synthetic street scenes -> a short pix2pixHD training with instance features -> test
images, the HTML pages and PSNR, all under one folder. Everything goes through the public CLI/API, so the demo is
also the end-to-end check that a new user's first run works.

Output (``<out>``): ``data/`` (train_/test_ label, inst, img), ``checkpoints/demo/`` (nets, training state,
``web/index.html`` with label / synthesized / real per epoch), ``results/demo/test_latest/`` (test page and
``metrics.json``), ``demo_summary.json`` (times, PSNR, paths).
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["run_demo", "demo_train_args"]

# Sizes picked so that 2 CPU cores train a recognisable result in a few minutes: 256x128 scenes, a global
# generator with 32 filters and 3 downsamplings, 2 discriminator scales; instance features (3 channels) from
# the encoder, pooled per instance by instance_avg_pool. No VGG loss: its weights are not shipped (no downloads).
_SIZE = (256, 128)


def demo_train_args(data: str, ckpt: str, seed: int, quick: bool, device: str | None) -> list[str]:
    """The ``train`` command line of the demo (reference option names)."""
    niter, niter_decay, n_blocks = ("1", "0", "1") if quick else ("6", "4", "4")
    args = [
        "--name", "demo", "--dataroot", data, "--checkpoints_dir", ckpt, "--label_nc", "35",
        "--resize_or_crop", "none", "--netG", "global", "--ngf", "32", "--n_downsample_global", "3",
        "--n_blocks_global", n_blocks, "--instance_feat", "--nef", "16", "--n_downsample_E", "3",
        "--num_D", "2", "--ndf", "32", "--no_vgg_loss", "--batchSize", "4", "--nThreads", "1",
        "--niter", niter, "--niter_decay", niter_decay, "--print_freq", "100", "--display_freq", "100000",
        "--save_latest_freq", "100000", "--save_epoch_freq", "100", "--seed", str(seed),
    ]  # fmt: skip
    if device:
        args += ["--device", device]
    return args


def _write_preview(page: str, path: str, rows: int = 4) -> str | None:
    """A PNG of the test page's first rows (label | synthesized | real), for README and quick looks (None when the
    page has no images folder)."""
    import numpy as np
    from PIL import Image

    img_dir = os.path.join(os.path.dirname(page), "images")
    if not os.path.isdir(img_dir):
        return None
    stems = sorted({f.rsplit("_input_label", 1)[0] for f in os.listdir(img_dir) if "_input_label" in f})[:rows]
    kinds = ("input_label", "synthesized_image", "real_image")
    grid = [
        np.concatenate([np.asarray(Image.open(os.path.join(img_dir, f"{s}_{k}.png")).convert("RGB")) for k in kinds], 1)
        for s in stems
    ]
    if not grid:
        return None
    Image.fromarray(np.concatenate(grid, 0)).save(path)
    return path


def run_demo(out: str = "demo_out", quick: bool = False, seed: int = 0, device: str | None = None) -> dict:
    """Run the demo into ``out``; returns (and writes to ``out/demo_summary.json``) its summary."""
    from .data import make_synthetic_dataset
    from .infer import run_test
    from .options import parse_test, parse_train
    from .train import train

    os.makedirs(out, exist_ok=True)
    data, ckpt, results = (os.path.join(out, d) for d in ("data", "checkpoints", "results"))
    n_train, n_test = (16, 4) if quick else (100, 12)
    t0 = time.perf_counter()
    print(f"[demo] writing {n_train} + {n_test} synthetic street scenes ({_SIZE[0]}x{_SIZE[1]}) to {data}")
    make_synthetic_dataset(data, n=n_train, size=_SIZE, seed=seed, n_test=n_test, overwrite=True)
    t_data = time.perf_counter() - t0

    train_args = demo_train_args(data, ckpt, seed, quick, device)
    print("[demo] pix2pixhd-fast train " + " ".join(train_args))
    t1 = time.perf_counter()
    summary = train(parse_train(train_args))
    t_train = time.perf_counter() - t1

    common = [
        "--name", "demo", "--dataroot", data, "--checkpoints_dir", ckpt, "--results_dir", results,
        "--label_nc", "35", "--resize_or_crop", "none", "--netG", "global", "--ngf", "32",
        "--n_downsample_global", "3", "--n_blocks_global", "1" if quick else "4", "--instance_feat", "--nef", "16",
        "--n_downsample_E", "3", "--how_many", str(n_test), "--seed", str(seed),
    ]  # fmt: skip
    if device:
        common += ["--device", device]
    t2 = time.perf_counter()
    encoded = run_test(parse_test(common + ["--use_encoded_image"]))
    t_test = time.perf_counter() - t2
    psnr = encoded["psnr_mean"]
    preview = _write_preview(encoded["page"], os.path.join(out, "demo_preview.png"))
    result = {
        "ok": psnr is not None and psnr == psnr,
        "quick": quick,
        "seconds": {"data": t_data, "train": t_train, "test": t_test, "total": time.perf_counter() - t0},
        "train_images_per_s": summary["images_per_s"],
        "epochs": summary["epochs_done"],
        "iterations": summary["iterations"],
        "last_losses": summary["last_losses"],
        "test_psnr_db": {"encoded_real_image_features": psnr},
        "training_page": os.path.join(ckpt, "demo", "web", "index.html"),
        "test_page": encoded["page"],
        "preview": preview,
    }
    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(
        f"[demo] trained {result['epochs']} epochs ({result['iterations']} iterations) in {t_train:.0f} s, "
        f"{summary['images_per_s']:.2f} images/s"
    )
    print(f"[demo] test PSNR (features encoded from the real image): {psnr:.2f} dB over {encoded['images']} images")
    print(f"[demo] training page: {result['training_page']}")
    print(f"[demo] test page:     {result['test_page']}")
    print(f"[demo] summary:       {os.path.join(out, 'demo_summary.json')}")
    return result
