"""``make demo``: embedded synthetic street scenes -> a short pix2pixHD training with instance features -> feature
clusters -> test images, the HTML pages and PSNR, all under one folder. Everything goes through the public CLI/API,
so the demo is also the end-to-end check that a new user's first run works.

Steps: write the data; train a baseline without instance features (``demo_nofeat``) and the same generator with
them (``demo``: encoder E, ``--instance_feat``); encode the training instances with E and cluster them per class
(``encode-features``); render one test label map in several styles (sampled cluster centres for 4 seeds, the
features of its real photo, one car walked through its class's clusters); test each way and report the PSNR.

Output (``<out>``): ``data/`` (train_/test_ label, inst, img), ``checkpoints/demo/`` (nets, training state,
``web/index.html``, ``features_clustered_010.npz``), ``checkpoints/demo_nofeat/``, ``results/demo/test_latest/``
(the test page with the styles section on top, features encoded from the real photos, and ``metrics.json``),
``results_sampled/`` (sampled cluster centres), ``results/demo_nofeat/`` (baseline), ``demo_summary.json``
(times, PSNR per model and per test image, the seed, the commit, paths).

One run is one seed. :func:`run_demo_seeds` (``python -m pix2pixhd_fast.demo --seeds 0,1,2``, ``make demo-seeds``)
repeats the demo for several seeds and writes ``demo_seeds_summary.json``: the gain of the encoded-feature model over
the model without features, per seed and its mean and spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

__all__ = ["run_demo", "run_demo_seeds", "demo_train_args", "demo_test_args"]

# Sizes picked so that 2 CPU cores train each model in about 4.5 minutes: 128x256 scenes, a global generator with 32
# filters and 3 downsamplings, 2 discriminator scales; instance features (3 channels) from the encoder, pooled per
# instance by instance_avg_pool. No VGG loss: its weights are not shipped (no downloads).
_SIZE = (128, 256)  # HEIGHT, WIDTH
_STYLE_SEEDS = (0, 1, 2, 3)


def _net_args(name: str, data: str, ckpt: str, quick: bool, features: bool) -> list[str]:
    """The options that define the networks and the data (shared by train and test: loading needs them equal)."""
    args = [
        "--name", name, "--dataroot", data, "--checkpoints_dir", ckpt, "--label_nc", "35",
        "--resize_or_crop", "none", "--netG", "global", "--ngf", "32", "--n_downsample_global", "3",
        "--n_blocks_global", "1" if quick else "4",
    ]  # fmt: skip
    if features:
        args += ["--instance_feat", "--nef", "16", "--n_downsample_E", "3"]
    return args


def demo_train_args(
    data: str,
    ckpt: str,
    seed: int,
    quick: bool,
    device: str | None,
    *,
    features: bool = True,
    name: str | None = None,
    epochs: int | None = None,
) -> list[str]:
    """The ``train`` command line of the demo (reference option names); ``features=False`` gives the baseline;
    ``epochs`` overrides the length (the last 40% with a decaying learning rate)."""
    # 10 epochs of 100 scenes (250 iterations of batch 4) per model: about 4.5 minutes each on 2 CPU cores. The
    # length is fixed; whether the instance features pay off at this length is what the demo measures (over several
    # seeds with run_demo_seeds), not something the length was chosen for.
    niter, niter_decay = ("1", "0") if quick else ("6", "4")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        niter_decay = str(epochs * 2 // 5)
        niter = str(epochs - int(niter_decay))
    name = name or ("demo" if features else "demo_nofeat")
    args = _net_args(name, data, ckpt, quick, features) + [
        "--num_D", "2", "--ndf", "32", "--no_vgg_loss", "--batchSize", "4", "--nThreads", "1",
        "--niter", niter, "--niter_decay", niter_decay, "--print_freq", "100", "--display_freq", "100000",
        "--save_latest_freq", "100000", "--save_epoch_freq", "100", "--seed", str(seed),
    ]  # fmt: skip
    if device:
        args += ["--device", device]
    return args


def demo_test_args(
    data: str,
    ckpt: str,
    results: str,
    seed: int,
    quick: bool,
    device: str | None,
    how_many: int,
    *,
    features: bool = True,
) -> list[str]:
    """The ``test`` command line matching :func:`demo_train_args` (add ``--use_encoded_image`` or not)."""
    args = _net_args("demo" if features else "demo_nofeat", data, ckpt, quick, features)
    args += ["--results_dir", results, "--how_many", str(how_many), "--seed", str(seed)]
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


def render_styles(opt, clusters, out_dir: str, seeds=_STYLE_SEEDS) -> tuple[list, dict]:
    """Render the test scene with the most car pixels in several styles; write the images under ``out_dir/images``.

    Returns ``(rows, info)``: the page rows (``[(header, [(caption, relative path)])]``: label, real photo, encoded
    features, one sampled style per seed; then one car through its class's clusters, the rest fixed at seed 0)
    and a summary (scene, car id, files).
    """
    import numpy as np
    import torch

    from .data import Pix2PixHDDataset, colorize_label, to_uint8_image
    from .export.backends import EagerBackend
    from .features import feature_map
    from .infer import load_model
    from .train.trainer import resolve_amp, resolve_device
    from .train.visualizer import save_image

    device = resolve_device(opt)
    backend = EagerBackend(load_model(opt, device), device, resolve_amp(opt.amp, device))
    dataset = Pix2PixHDDataset.from_options(opt)
    n = min(len(dataset), opt.how_many)
    items = [dataset.get_item(i, seed=0) for i in range(n)]
    index = int(np.argmax([int((it["label"] == 26).sum()) for it in items]))  # 26: car
    item = items[index]
    label, inst, image = (item[k][None].to(device) for k in ("label", "inst", "image"))
    files: list[tuple[str, str]] = []

    def put(caption: str, name: str, array) -> None:
        rel = os.path.join("images", f"styles_{name}.png")
        save_image(array, os.path.join(out_dir, rel))
        files.append((caption, rel))

    def render(feat) -> np.ndarray:
        return to_uint8_image(backend(label, inst, None, feat)[0].float().cpu())

    put("input label", "label", colorize_label(item["label"][0], opt.label_nc))
    put("real photo", "real", to_uint8_image(item["image"]))
    put("features of the real photo", "encoded", render(backend.features(label, inst, image, None)))
    for s in seeds:
        put(f"sampled clusters, seed {s}", f"seed{s}", render(feature_map(label, inst, clusters, seed=s)))
    rows = [(f"styles: test scene {index}, one label map, several feature maps", files)]
    info = {"scene": index, "files": [f for _, f in files]}
    ids, counts = torch.unique(inst[label == 26], return_counts=True)
    if ids.numel() and clusters.num_clusters(26):
        car = int(ids[counts.argmax()])  # the largest car
        edits = []
        for k in range(min(4, clusters.num_clusters(26))):
            feat = feature_map(label, inst, clusters, seed=seeds[0], choice={car: k})
            rel = os.path.join("images", f"styles_car{car}_cluster{k}.png")
            save_image(render(feat), os.path.join(out_dir, rel))
            edits.append((f"--feat_edit {car}:{k}", rel))
        rows.append((f"editing: car {car} through the car clusters (everything else: seed {seeds[0]})", edits))
        info.update(car=car, edit_files=[f for _, f in edits])
    return rows, info


def run_demo(
    out: str = "demo_out",
    quick: bool = False,
    seed: int = 0,
    device: str | None = None,
    baseline: bool = True,
    epochs: int | None = None,
) -> dict:
    """Run the demo into ``out``; returns (and writes to ``out/demo_summary.json``) its summary.

    ``baseline=False`` skips the model without features (about half the training time); ``epochs`` sets the length
    of both trainings (default: 10, or 1 with ``quick``).
    """
    from .data import make_synthetic_dataset
    from .features import FeatureClusters, load_clusters, run_encode_features
    from .infer import run_test
    from .options import parse_features, parse_test, parse_train
    from .train import train

    os.makedirs(out, exist_ok=True)
    data, ckpt, results = (os.path.join(out, d) for d in ("data", "checkpoints", "results"))
    n_train, n_test = (16, 4) if quick else (100, 12)
    t0 = time.perf_counter()
    print(f"[demo] writing {n_train} + {n_test} synthetic street scenes ({_SIZE[0]}x{_SIZE[1]}) to {data}")
    make_synthetic_dataset(data, n=n_train, size=_SIZE, seed=seed, n_test=n_test, overwrite=True)
    seconds = {"data": time.perf_counter() - t0}

    psnr: dict[str, float | None] = {}
    per_image: dict[str, list[float]] = {}
    pages: dict[str, str] = {}
    if baseline:  # first, so that the last training is the feature model the rest of the demo uses
        args = demo_train_args(data, ckpt, seed, quick, device, features=False, epochs=epochs)
        print("[demo] pix2pixhd-fast train " + " ".join(args))
        t = time.perf_counter()
        train(parse_train(args))
        seconds["train_no_features"] = time.perf_counter() - t
        res = run_test(parse_test(demo_test_args(data, ckpt, results, seed, quick, device, n_test, features=False)))
        psnr["no_features_model"], pages["no_features_model"] = res["psnr_mean"], res["page"]
        per_image["no_features_model"] = res["psnr_per_image"]

    train_args = demo_train_args(data, ckpt, seed, quick, device, epochs=epochs)
    print("[demo] pix2pixhd-fast train " + " ".join(train_args))
    t = time.perf_counter()
    summary = train(parse_train(train_args))
    seconds["train"] = time.perf_counter() - t

    # Instance features: encode the training set with E and cluster each class (the encode-features command).
    t = time.perf_counter()
    enc_args = _net_args("demo", data, ckpt, quick, True) + ["--seed", str(seed)]
    if device:
        enc_args += ["--device", device]
    print("[demo] pix2pixhd-fast encode-features " + " ".join(enc_args))
    encoded_summary = run_encode_features(parse_features("encode-features", enc_args))
    seconds["encode_features"] = time.perf_counter() - t
    clusters = load_clusters(encoded_summary["clusters_file"])
    print(
        f"[demo] {encoded_summary['instances']} instances (> 1/64 of the image) of "
        f"{len(encoded_summary['instances_per_class'])} classes -> {clusters.summary()['clusters']} clusters"
    )

    test_args = demo_test_args(data, ckpt, results, seed, quick, device, n_test)
    t = time.perf_counter()
    sampled = run_test(parse_test(test_args[:] + ["--results_dir", os.path.join(out, "results_sampled")]))
    psnr["sampled_cluster_centres"], pages["sampled_cluster_centres"] = sampled["psnr_mean"], sampled["page"]
    per_image["sampled_cluster_centres"] = sampled["psnr_per_image"]
    # The feature model with all-zero features (a clusters file with no classes): what G makes of "no style".
    zeros = FeatureClusters({}, clusters.feat_num).save(os.path.join(ckpt, "demo", "features_none.npz"))
    zeroed = run_test(
        parse_test(test_args + ["--cluster_path", zeros, "--results_dir", os.path.join(out, "results_zero")])
    )
    psnr["zero_features"] = zeroed["psnr_mean"]
    per_image["zero_features"] = zeroed["psnr_per_image"]

    enc_opt = parse_test(test_args + ["--use_encoded_image"])
    out_dir = os.path.join(results, "demo", f"{enc_opt.phase}_{enc_opt.which_epoch}")
    try:
        styles, styles_info = render_styles(enc_opt, clusters, out_dir)
    except (OSError, ValueError) as e:  # e.g. a test set without cars: the page still gets written
        styles, styles_info = [], {"error": str(e)}
    encoded = run_test(enc_opt, extra_rows=styles)
    seconds["test"] = time.perf_counter() - t
    psnr["encoded_real_image_features"] = encoded["psnr_mean"]
    per_image["encoded_real_image_features"] = encoded["psnr_per_image"]
    preview = _write_preview(encoded["page"], os.path.join(out, "demo_preview.png"))
    seconds["total"] = time.perf_counter() - t0
    main = psnr["encoded_real_image_features"]
    result = {
        "ok": main is not None and main == main,
        "seed": seed,
        "commit": _commit(),
        "quick": quick,
        "seconds": seconds,
        "train_images_per_s": summary["images_per_s"],
        "epochs": summary["epochs_done"],
        "iterations": summary["iterations"],
        "last_losses": summary["last_losses"],
        "test_psnr_db": psnr,
        "test_psnr_db_per_image": per_image,
        "features": {
            "instances": encoded_summary["instances"],
            "instances_per_class": encoded_summary["instances_per_class"],
            "clusters_per_class": encoded_summary["clusters_per_class"],
            "clusters_file": encoded_summary["clusters_file"],
            "styles": styles_info,
        },
        "training_page": os.path.join(ckpt, "demo", "web", "index.html"),
        "test_page": encoded["page"],
        "other_test_pages": pages,
        "preview": preview,
    }
    _write_json(os.path.join(out, "demo_summary.json"), result)
    print(
        f"[demo] trained {result['epochs']} epochs ({result['iterations']} iterations) in {seconds['train']:.0f} s, "
        f"{summary['images_per_s']:.2f} images/s"
    )
    names = {
        "no_features_model": "model trained without instance features",
        "encoded_real_image_features": "features encoded from the real image",
        "sampled_cluster_centres": f"sampled cluster centres (seed {seed})",
        "zero_features": "feature model, all-zero features",
    }
    for key, text in names.items():
        if key in psnr and psnr[key] is not None:
            print(f"[demo] test PSNR, {text}: {psnr[key]:.2f} dB over {encoded['images']} images")
    print(f"[demo] training page: {result['training_page']}")
    print(f"[demo] test page:     {result['test_page']} (styles section on top)")
    print(f"[demo] summary:       {os.path.join(out, 'demo_summary.json')}")
    return result


def _commit() -> str | None:
    """The checkout's commit (with ``-dirty`` when files differ from it), or None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def _write_json(path: str, data: dict) -> None:
    from .utils.files import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1)


def run_demo_seeds(
    out: str = "demo_seeds_out",
    seeds: tuple[int, ...] | list[int] = (0, 1, 2),
    quick: bool = False,
    device: str | None = None,
    epochs: int | None = None,
) -> dict:
    """The demo once per seed (data, both models, features, tests), each into ``out/seed<k>``; returns and writes
    ``out/demo_seeds_summary.json``: per seed the test PSNR (dB) of the model without features and of the feature
    model fed features encoded from the real photos, their difference (the gain), and the gain's mean, sample
    standard deviation, min and max over the seeds.
    """
    seeds = list(seeds)
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds must be ints >= 0, got {s!r}")
    runs = []
    for s in seeds:
        r = run_demo(os.path.join(out, f"seed{s}"), quick=quick, seed=s, device=device, epochs=epochs)
        p = r["test_psnr_db"]
        base, enc = p.get("no_features_model"), p.get("encoded_real_image_features")
        gain = None if base is None or enc is None else enc - base
        runs.append({"seed": s, "no_features_db": base, "encoded_features_db": enc, "gain_db": gain})
    gains = [r["gain_db"] for r in runs if r["gain_db"] is not None]
    result = {
        "seeds": seeds,
        "commit": _commit(),
        "quick": quick,
        "epochs": epochs,
        "runs": runs,
        "gain_db": {
            "mean": statistics.mean(gains) if gains else None,
            "stdev": statistics.stdev(gains) if len(gains) > 1 else None,
            "min": min(gains) if gains else None,
            "max": max(gains) if gains else None,
            "seeds_with_gain": sum(g > 0 for g in gains),
        },
    }
    path = os.path.join(out, "demo_seeds_summary.json")
    _write_json(path, result)
    g = result["gain_db"]
    for r in runs:
        print(f"[demo] seed {r['seed']}: encoded-feature model minus no-feature model: {r['gain_db']:+.2f} dB")
    if g["mean"] is not None:
        spread = f" +- {g['stdev']:.2f} (sample std)" if g["stdev"] is not None else ""
        print(
            f"[demo] gain over {len(gains)} seeds: {g['mean']:+.2f} dB{spread}, range {g['min']:+.2f} .. "
            f"{g['max']:+.2f}; positive in {g['seeds_with_gain']} of {len(gains)}"
        )
    print(f"[demo] seeds summary: {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The demo, one seed or several (the instance-feature gain's spread).")
    ap.add_argument("--out", default=None, help="output folder (default demo_out, or demo_seeds_out with --seeds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds: repeat the demo per seed (e.g. 0,1,2)")
    ap.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            ap.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
        res = run_demo_seeds(args.out or "demo_seeds_out", seeds, quick=args.quick, device=args.device)
        return 0 if res["gain_db"]["mean"] is not None else 1
    res = run_demo(args.out or "demo_out", quick=args.quick, seed=args.seed, device=args.device)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
