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
(times, PSNR, paths).
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["run_demo", "demo_train_args", "demo_test_args"]

# Sizes picked so that 2 CPU cores train each model in about 4.5 minutes: 256x128 scenes, a global generator with 32
# filters and 3 downsamplings, 2 discriminator scales; instance features (3 channels) from the encoder, pooled per
# instance by instance_avg_pool. No VGG loss: its weights are not shipped (no downloads).
_SIZE = (256, 128)
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
    # 10 epochs of 100 scenes (250 iterations of batch 4) per model: about 4.5 minutes each on 2 CPU cores. At 6
    # epochs the features did not pay off yet (encoded-image PSNR 16.9 dB vs 16.7 dB without features); at 10 they
    # do on every test image (17.2 vs 16.4 dB).
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
    from .features import feature_map
    from .infer import EagerBackend, load_model
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
    pages: dict[str, str] = {}
    if baseline:  # first, so that the last training is the feature model the rest of the demo uses
        args = demo_train_args(data, ckpt, seed, quick, device, features=False, epochs=epochs)
        print("[demo] pix2pixhd-fast train " + " ".join(args))
        t = time.perf_counter()
        train(parse_train(args))
        seconds["train_no_features"] = time.perf_counter() - t
        res = run_test(parse_test(demo_test_args(data, ckpt, results, seed, quick, device, n_test, features=False)))
        psnr["no_features_model"], pages["no_features_model"] = res["psnr_mean"], res["page"]

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
    # The feature model with all-zero features (a clusters file with no classes): what G makes of "no style".
    zeros = FeatureClusters({}, clusters.feat_num).save(os.path.join(ckpt, "demo", "features_none.npz"))
    zeroed = run_test(
        parse_test(test_args + ["--cluster_path", zeros, "--results_dir", os.path.join(out, "results_zero")])
    )
    psnr["zero_features"] = zeroed["psnr_mean"]

    enc_opt = parse_test(test_args + ["--use_encoded_image"])
    out_dir = os.path.join(results, "demo", f"{enc_opt.phase}_{enc_opt.which_epoch}")
    try:
        styles, styles_info = render_styles(enc_opt, clusters, out_dir)
    except (OSError, ValueError) as e:  # e.g. a test set without cars: the page still gets written
        styles, styles_info = [], {"error": str(e)}
    encoded = run_test(enc_opt, extra_rows=styles)
    seconds["test"] = time.perf_counter() - t
    psnr["encoded_real_image_features"] = encoded["psnr_mean"]
    preview = _write_preview(encoded["page"], os.path.join(out, "demo_preview.png"))
    seconds["total"] = time.perf_counter() - t0
    main = psnr["encoded_real_image_features"]
    result = {
        "ok": main is not None and main == main,
        "quick": quick,
        "seconds": seconds,
        "train_images_per_s": summary["images_per_s"],
        "epochs": summary["epochs_done"],
        "iterations": summary["iterations"],
        "last_losses": summary["last_losses"],
        "test_psnr_db": psnr,
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
    with open(os.path.join(out, "demo_summary.json"), "w") as f:
        json.dump(result, f, indent=1)
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
