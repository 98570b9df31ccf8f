"""Command-line options with the reference pix2pixHD names and defaults.

A user's ``python train.py --name label2city_512p --label_nc 35 ...`` line works as
``pix2pixhd-fast train --name label2city_512p --label_nc 35 ...``: every option of the reference's
``options/{base,train,test}_options.py`` exists here with the same default (options that only make sense for the
reference's own code paths, such as ``--fp16`` through apex or ``--data_type``, are accepted and mapped onto ours).
Our additions (``--amp``, ``--ops``, ``--compile``, ...) are grouped separately in ``--help``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

__all__ = [
    "train_parser",
    "test_parser",
    "features_parser",
    "parse_train",
    "parse_test",
    "parse_features",
    "finalize",
    "save_options",
    "OptionError",
    "check_output_folder",
    "check_image_size",
    "warn_gpu_ids",
]


class OptionError(ValueError):
    """A value or combination of options a user gave that cannot work; the message names the option as it is
    typed (``--save_epoch_freq``), so the command line can print it as it is, without a traceback."""


# (option, smallest allowed value) for every integer or float option with a lower bound; checked by finalize for
# the options a command has. Frequencies are divisors in the training loop, so 0 is never allowed for them.
_AT_LEAST: tuple[tuple[str, float], ...] = (
    ("batchSize", 1), ("loadSize", 1), ("fineSize", 1), ("label_nc", 0), ("input_nc", 1), ("output_nc", 1),
    ("nThreads", 0), ("max_dataset_size", 1), ("display_winsize", 1), ("ngf", 1), ("n_downsample_global", 0),
    ("n_blocks_global", 1), ("n_blocks_local", 0), ("niter_fix_global", 0), ("feat_num", 1),
    ("n_downsample_E", 0), ("nef", 1), ("n_clusters", 1), ("num_threads", 0), ("seed", 0), ("local_rank", 0),
    ("display_freq", 1), ("print_freq", 1), ("save_latest_freq", 1), ("save_epoch_freq", 1), ("niter", 0),
    ("niter_decay", 0), ("num_D", 1), ("n_layers_D", 1), ("ndf", 1), ("lambda_feat", 0), ("pool_size", 0),
    ("max_iters", 1), ("ntest", 1), ("how_many", 1), ("max_batch", 1), ("batch", 1), ("warmup", 0), ("iters", 1),
)  # fmt: skip


def _check_ranges(opt: argparse.Namespace) -> None:
    for name, low in _AT_LEAST:
        v = getattr(opt, name, None)
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not v >= low:  # also NaN
            raise OptionError(f"--{name} must be >= {low:g}, got {v:g}")
    if getattr(opt, "netG", "global") == "local" and getattr(opt, "n_local_enhancers", 1) < 1:
        raise OptionError(f"--n_local_enhancers must be >= 1 with --netG local, got {opt.n_local_enhancers}")
    for name in ("lr", "aspect_ratio", "workspace_gb"):
        v = getattr(opt, name, None)
        if isinstance(v, (int, float)) and not v > 0:
            raise OptionError(f"--{name} must be > 0, got {v:g}")
    beta1 = getattr(opt, "beta1", None)
    if beta1 is not None and not 0.0 <= beta1 < 1.0:
        raise OptionError(f"--beta1 must lie in [0, 1), got {beta1:g}")
    if getattr(opt, "isTrain", False) is True and hasattr(opt, "niter") and opt.niter + opt.niter_decay < 1:
        raise OptionError(
            f"--niter {opt.niter} and --niter_decay {opt.niter_decay} give no epoch to train: their sum must be >= 1"
        )
    gpu_ids = str(getattr(opt, "gpu_ids", "0"))
    try:
        [int(v) for v in gpu_ids.split(",") if v.strip() != ""]
    except ValueError:
        raise OptionError(
            f"--gpu_ids must be comma-separated integers (e.g. 0 or 0,1; -1 for the CPU), got {gpu_ids!r}"
        ) from None


def check_output_folder(path: str, option: str) -> None:
    """Raise :class:`OptionError` unless ``path`` is a folder this process can write into, or can be created (its
    nearest existing ancestor is a writable folder). ``option`` names the option in the message."""
    p = os.path.abspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise OptionError(f"{option} {path}: is a file, not a folder")
    probe = p
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise OptionError(f"{option} {path}: cannot create it, {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == p else f"cannot be created ({probe} is not writable)"
        raise OptionError(f"{option} {path}: the folder {what}")


def check_image_size(height: int, width: int, opt: argparse.Namespace) -> None:
    """Raise :class:`OptionError` when ``height x width`` network inputs (after ``--resize_or_crop``) are too small
    for the generator: its innermost residual blocks pad by reflection, which needs at least 2 pixels per side
    after ``--n_downsample_global`` halvings (and the ``--n_local_enhancers`` ones of a LocalEnhancer)."""
    nd = int(getattr(opt, "n_downsample_global", 4))
    local = getattr(opt, "netG", "global") == "local"
    nle = int(getattr(opt, "n_local_enhancers", 1)) if local else 0
    need = 2 * 2 ** (nd + nle)
    if min(height, width) >= need:
        return
    which = f"--n_downsample_global {nd}" + (f" and --n_local_enhancers {nle}" if local else "")
    raise OptionError(
        f"images of {height}x{width} (HEIGHTxWIDTH, after --resize_or_crop {getattr(opt, 'resize_or_crop', '?')}) "
        f"are too small for {which}: each side must be at least {need} pixels; use larger images "
        f"(--loadSize / --fineSize) or fewer downsampling layers"
    )


def warn_gpu_ids(opt: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """Say so when ``--gpu_ids`` asks for a GPU that this machine lacks (training then runs on the CPU, as the
    reference's default ``--gpu_ids 0`` does on a machine without one; the default alone gives no message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = any(a == "--gpu_ids" or a.startswith("--gpu_ids=") for a in argv)
    if not given or getattr(opt, "device", None):
        return
    ids = [int(v) for v in str(opt.gpu_ids).split(",") if v.strip() != ""]
    if ids and ids[0] >= 0:
        import torch

        if not torch.cuda.is_available():
            print(
                f"pix2pixhd-fast: warning: --gpu_ids {opt.gpu_ids}: no CUDA device on this machine, running on "
                "the CPU (--gpu_ids -1 says so explicitly)",
                file=sys.stderr,
            )


def _inf_int(s: str) -> float | int:
    if s in ("inf", "float('inf')"):
        return math.inf
    try:
        return int(s)
    except ValueError:
        # argparse prefixes the option name; its own message would name this function instead of the value kind.
        raise argparse.ArgumentTypeError(f"expected an integer or inf, got {s!r}") from None


def _add_base(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("experiment (reference options)")
    g.add_argument("--name", default="label2city", help="experiment name: checkpoints go to <checkpoints_dir>/<name>")
    g.add_argument("--gpu_ids", default="0", help="GPU ids, e.g. 0 or 0,1 (-1 for CPU); with torchrun use LOCAL_RANK")
    g.add_argument("--checkpoints_dir", default="./checkpoints", help="where models are saved")
    g.add_argument("--model", default="pix2pixHD", help="which model (only pix2pixHD)")
    g.add_argument("--norm", default="instance", choices=["instance", "batch"], help="normalization layer")
    g.add_argument(
        "--use_dropout", action="store_true", help="(reference option, unused: pix2pixHD's generators have no dropout)"
    )
    g.add_argument("--data_type", default=32, type=int, choices=[8, 16, 32], help="16 = fp16 AMP (as --amp fp16)")
    g.add_argument("--verbose", action="store_true", help="print more")
    g.add_argument("--fp16", action="store_true", help="train with fp16 AMP (the reference used apex; --amp fp16)")
    g.add_argument("--local_rank", type=int, default=0, help="set by torch.distributed launchers")

    g = p.add_argument_group("input/output sizes and data (reference options)")
    g.add_argument("--batchSize", type=int, default=1, help="batch size (per process under torchrun)")
    g.add_argument("--loadSize", type=int, default=1024, help="scale images to this size")
    g.add_argument("--fineSize", type=int, default=512, help="then crop to this size")
    g.add_argument("--label_nc", type=int, default=35, help="number of label classes (0: the label is an RGB image)")
    g.add_argument("--input_nc", type=int, default=3, help="input image channels (when label_nc is 0)")
    g.add_argument("--output_nc", type=int, default=3, help="output image channels")
    g.add_argument("--dataroot", default="./datasets/cityscapes/", help="folder with <phase>_label, _inst, _img")
    g.add_argument(
        "--resize_or_crop",
        default="scale_width",
        choices=["resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none"],
        help="scaling and cropping of images at load time",
    )
    g.add_argument("--serial_batches", action="store_true", help="take images in order instead of shuffling")
    g.add_argument("--no_flip", action="store_true", help="no random horizontal flips")
    g.add_argument("--nThreads", type=int, default=2, help="data loader worker processes")
    g.add_argument("--max_dataset_size", type=_inf_int, default=math.inf, help="use at most this many images")
    g.add_argument("--display_winsize", type=int, default=512, help="display window size")
    g.add_argument("--tf_log", action="store_true", help="TensorBoard scalars and images under <name>/logs")

    g = p.add_argument_group("generator (reference options)")
    g.add_argument("--netG", default="global", choices=["global", "local"], help="generator: global or local")
    g.add_argument("--ngf", type=int, default=64, help="generator filters in the first conv layer")
    g.add_argument("--n_downsample_global", type=int, default=4, help="downsampling layers in the global generator")
    g.add_argument("--n_blocks_global", type=int, default=9, help="residual blocks in the global generator")
    g.add_argument("--n_blocks_local", type=int, default=3, help="residual blocks in each local enhancer")
    g.add_argument("--n_local_enhancers", type=int, default=1, help="number of local enhancers")
    g.add_argument("--niter_fix_global", type=int, default=0, help="epochs that train only the outermost enhancer")

    g = p.add_argument_group("instance-wise features (reference options)")
    g.add_argument("--no_instance", action="store_true", help="do not add the instance boundary map as input")
    g.add_argument("--instance_feat", action="store_true", help="add encoded instance features as input")
    g.add_argument("--label_feat", action="store_true", help="add encoded label features as input")
    g.add_argument("--feat_num", type=int, default=3, help="encoded feature channels")
    g.add_argument("--load_features", action="store_true", help="load precomputed feature maps (<phase>_feat)")
    g.add_argument("--n_downsample_E", type=int, default=4, help="downsampling layers in the encoder")
    g.add_argument("--nef", type=int, default=16, help="encoder filters in the first conv layer")
    g.add_argument("--n_clusters", type=int, default=10, help="k-means clusters per class")

    g = p.add_argument_group("pix2pixhd_fast speed and reproducibility")
    g.add_argument(
        "--amp",
        default=None,
        choices=["bf16", "fp16", "off"],
        help="autocast precision (default: bf16 "
        "where the device supports it, else off; --fp16/--data_type 16 mean fp16)",
    )
    g.add_argument("--no_channels_last", action="store_true", help="keep NCHW instead of channels-last tensors")
    g.add_argument("--ops", default="fast", choices=["fast", "reference"], help="our fused operators or plain PyTorch")
    g.add_argument(
        "--no_fuse_pads",
        action="store_true",
        help="with --ops fast, keep the reflection pads as separate modules instead of having the fused norms write "
        "padded outputs (same results; for measuring what the padded-output kernels add)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument(
        "--sac",
        default="on",
        choices=["on", "off"],
        help="selective activation checkpointing of G and E (training): keep convolution outputs, recompute norms, "
        "activations and pads in the backward pass (about half the activation memory)",
    )
    g.add_argument(
        "--cuda_graph",
        action="store_true",
        help="capture the whole training iteration in a CUDA graph after a few eager ones (fixed sizes; needs "
        "--pool_size 0, no fp16, no --compile, no torchrun)",
    )
    g.add_argument(
        "--no_cudnn_benchmark",
        action="store_true",
        help="keep cuDNN's heuristic convolution algorithms instead of timing them once per input size",
    )
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: from --gpu_ids / LOCAL_RANK)")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order, crops and flips")
    g.add_argument("--num_threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def train_parser() -> argparse.ArgumentParser:
    """Parser of ``pix2pixhd-fast train`` (reference base + train options, plus ours)."""
    p = argparse.ArgumentParser(
        prog="pix2pixhd-fast train",
        description="Train pix2pixHD (options as in NVIDIA's train.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_base(p)
    g = p.add_argument_group("training (reference options)")
    g.add_argument("--display_freq", type=int, default=100, help="iterations between result images on the web page")
    g.add_argument("--print_freq", type=int, default=100, help="iterations between loss prints")
    g.add_argument("--save_latest_freq", type=int, default=1000, help="iterations between saves of 'latest'")
    g.add_argument("--save_epoch_freq", type=int, default=10, help="epochs between saves of '<epoch>'")
    g.add_argument("--no_html", action="store_true", help="do not write <checkpoints_dir>/<name>/web/index.html")
    g.add_argument("--debug", action="store_true", help="only a few iterations")
    g.add_argument("--continue_train", action="store_true", help="resume from the latest checkpoint")
    g.add_argument("--load_pretrain", default="", help="folder of a trained global generator to start a local one")
    g.add_argument("--which_epoch", default="latest", help="which checkpoint to load")
    g.add_argument("--phase", default="train", help="train, val, test, ...")
    g.add_argument("--niter", type=int, default=100, help="epochs at the starting learning rate")
    g.add_argument("--niter_decay", type=int, default=100, help="epochs of linear decay to zero")
    g.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
    g.add_argument("--lr", type=float, default=0.0002, help="Adam learning rate")
    g.add_argument("--num_D", type=int, default=2, help="number of discriminators (scales)")
    g.add_argument("--n_layers_D", type=int, default=3, help="layers per discriminator")
    g.add_argument("--ndf", type=int, default=64, help="discriminator filters in the first conv layer")
    g.add_argument("--lambda_feat", type=float, default=10.0, help="weight of the feature matching and VGG losses")
    g.add_argument("--no_ganFeat_loss", action="store_true", help="no discriminator feature matching loss")
    g.add_argument("--no_vgg_loss", action="store_true", help="no VGG perceptual loss")
    g.add_argument("--no_lsgan", action="store_true", help="vanilla GAN (BCE) instead of least squares")
    g.add_argument("--pool_size", type=int, default=0, help="size of the buffer of generated images for D")
    g = p.add_argument_group("pix2pixhd_fast training")
    g.add_argument("--gan_mode", default=None, choices=["lsgan", "vanilla", "hinge"], help="overrides --no_lsgan")
    g.add_argument("--vgg_weights", default=None, help="torchvision vgg19 weights file for the VGG loss")
    g.add_argument("--max_iters", type=_inf_int, default=math.inf, help="stop after this many iterations in all")
    g.add_argument("--no_progress", action="store_true", help="no tqdm progress bars")
    g.add_argument(
        "--fused_adam",
        default="auto",
        choices=["auto", "torch", "apex", "off"],
        help="fused optimizer step: torch's fused Adam (CUDA/CPU), apex FusedAdam, or the plain loop",
    )
    g.add_argument("--isTrain", default=True, help=argparse.SUPPRESS)
    return p


def test_parser() -> argparse.ArgumentParser:
    """Parser of ``pix2pixhd-fast test`` (reference base + test options, plus ours)."""
    p = argparse.ArgumentParser(
        prog="pix2pixhd-fast test",
        description="Generate images with a trained pix2pixHD model (options as in NVIDIA's test.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_base(p)
    g = p.add_argument_group("testing (reference options)")
    g.add_argument("--ntest", type=_inf_int, default=math.inf, help="number of test examples")
    g.add_argument("--results_dir", default="./results/", help="where results are saved")
    g.add_argument("--aspect_ratio", type=float, default=1.0, help="aspect ratio of result images")
    g.add_argument("--phase", default="test", help="train, val, test, ...")
    g.add_argument("--which_epoch", default="latest", help="which checkpoint to load")
    g.add_argument("--how_many", type=int, default=50, help="how many test images to run")
    g.add_argument(
        "--cluster_path",
        default=None,
        help="clustered features to sample from, relative to <checkpoints_dir>/<name> (default: "
        "features_clustered_<n_clusters>.npz there, else the reference's .npy of that name)",
    )
    g.add_argument("--use_encoded_image", action="store_true", help="encode the real image to get the feature map")
    g.add_argument("--export_onnx", default=None, help="(reference option; use `pix2pixhd-fast export`)")
    g.add_argument("--engine", default=None, help="(reference option; use --backend tensorrt)")
    g.add_argument("--onnx", default=None, help="(reference option; use --backend onnxruntime)")
    g = p.add_argument_group("pix2pixhd_fast inference")
    g.add_argument("--backend", default="eager", choices=["eager", "compile", "onnxruntime", "tensorrt"])
    g.add_argument(
        "--feat_edit",
        default=None,
        help="instance features by id: ID:CLUSTER picks that cluster of the instance's class, ID:V1/V2/V3 sets the "
        "vector, e.g. 26001:3,26002:7 (the other instances: sampled with --seed, or encoded)",
    )
    g.add_argument("--isTrain", default=False, help=argparse.SUPPRESS)
    return p


def features_parser(command: str = "encode-features") -> argparse.ArgumentParser:
    """Parser of ``pix2pixhd-fast encode-features`` / ``precompute-feature-maps`` (reference base options: give the
    training's network and data options, as for ``test``)."""
    if command not in ("encode-features", "precompute-feature-maps"):
        raise ValueError(f"unknown features command {command!r}")
    what = (
        "Encode every instance of the training images with the trained encoder E (<which_epoch>_net_E.pth), "
        "cluster them per class with k-means and write the clusters that `test --instance_feat` samples from "
        "(as NVIDIA's encode_features.py)."
        if command == "encode-features"
        else "Write E's feature map of every image as <dataroot>/<phase>_feat/<label file name>.png for training "
        "with --load_features (as NVIDIA's precompute_feature_maps.py; needs --feat_num 3)."
    )
    p = argparse.ArgumentParser(
        prog=f"pix2pixhd-fast {command}", description=what, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    _add_base(p)
    p.set_defaults(instance_feat=None, batchSize=8 if command == "encode-features" else 1)
    g = p.add_argument_group("feature encoding")
    g.add_argument("--phase", default="train", help="which images to encode")
    g.add_argument("--which_epoch", default="latest", help="which encoder checkpoint to load")
    if command == "encode-features":
        g.add_argument(
            "--min_area_frac",
            type=float,
            default=1.0 / 64,
            help="keep instances larger than this fraction of their image (reference: 1/64)",
        )
        g.add_argument(
            "--cluster_path",
            default=None,
            help="output file (.npz; default <checkpoints_dir>/<name>/features_clustered_<n_clusters>.npz)",
        )
    else:
        g.add_argument("--feat_dir", default=None, help="output folder (default <dataroot>/<phase>_feat)")
    g.add_argument("--isTrain", default=False, help=argparse.SUPPRESS)
    return p


def parse_features(command: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and finalize ``encode-features`` / ``precompute-feature-maps`` options (instance features unless
    ``--label_feat``, as the reference's scripts force ``instance_feat``)."""
    opt = features_parser(command).parse_args(argv)
    if opt.instance_feat is None:
        opt.instance_feat = not opt.label_feat
    opt.load_features = False
    opt = finalize(opt)
    if command == "encode-features" and not 0.0 <= opt.min_area_frac < 1.0:
        raise OptionError(f"--min_area_frac must lie in [0, 1), got {opt.min_area_frac}")
    if opt.n_clusters < 1:
        raise OptionError(f"--n_clusters must be >= 1, got {opt.n_clusters}")
    return opt


def finalize(opt: argparse.Namespace) -> argparse.Namespace:
    """Derive the values the reference derives (and ours) and check every value and combination (ranges,
    frequencies, exclusive options): :class:`OptionError` naming the option, before anything is written."""
    if opt.fp16 or opt.data_type == 16:
        if opt.amp not in (None, "fp16"):
            raise OptionError(f"--fp16/--data_type 16 contradict --amp {opt.amp}")
        opt.amp = "fp16"
    if opt.label_nc < 0:
        raise OptionError(f"--label_nc must be >= 0, got {opt.label_nc}")
    if opt.instance_feat and opt.label_feat:
        raise OptionError("--instance_feat and --label_feat are exclusive")
    if opt.instance_feat and opt.no_instance:
        raise OptionError("--instance_feat needs instance maps: drop --no_instance")
    if opt.label_nc == 0 and (opt.instance_feat or opt.label_feat):
        raise OptionError("instance/label features need a label map: set --label_nc > 0")
    for k in ("batchSize", "ngf", "n_blocks_global", "n_local_enhancers", "feat_num", "nef"):
        if getattr(opt, k) < 1 and not (k == "n_local_enhancers" and opt.netG == "global"):
            raise OptionError(f"--{k} must be >= 1, got {getattr(opt, k)}")
    _check_ranges(opt)
    opt.use_features = opt.instance_feat or opt.label_feat
    opt.gen_features = opt.use_features and not opt.load_features
    opt.channels_last = not opt.no_channels_last
    if getattr(opt, "isTrain", False):
        for k in ("num_D", "n_layers_D", "ndf"):
            if getattr(opt, k) < 1:
                raise OptionError(f"--{k} must be >= 1, got {getattr(opt, k)}")
        if opt.gan_mode is None:
            opt.gan_mode = "vanilla" if opt.no_lsgan else "lsgan"
    return opt


def parse_train(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, finalize and check ``train`` options (the checkpoint folder must be writable)."""
    opt = finalize(train_parser().parse_args(argv))
    check_output_folder(opt.checkpoints_dir, "--checkpoints_dir")
    check_output_folder(os.path.join(opt.checkpoints_dir, opt.name), "--name")
    warn_gpu_ids(opt, argv)
    return opt


def parse_test(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, finalize and check ``test`` options (the reference forces batch 1, no shuffle, no flip; the results
    folder must be writable)."""
    opt = finalize(test_parser().parse_args(argv))
    opt.nThreads, opt.batchSize, opt.serial_batches, opt.no_flip = min(opt.nThreads, 1), 1, True, True
    check_output_folder(opt.results_dir, "--results_dir")
    check_output_folder(os.path.join(opt.results_dir, opt.name), "--name")
    warn_gpu_ids(opt, argv)
    return opt


def save_options(opt: argparse.Namespace, folder: str, filename: str = "opt.txt") -> str:
    """Write the options as the reference's ``opt.txt`` (one ``key: value`` per line)."""
    from .utils.files import atomic_write

    path = os.path.join(folder, filename)
    with atomic_write(path, "w") as f:
        f.write("------------ Options -------------\n")
        for k, v in sorted(vars(opt).items()):
            f.write(f"{k}: {v}\n")
        f.write("-------------- End ----------------\n")
        f.write("command: " + " ".join(sys.argv) + "\n")
    return path
