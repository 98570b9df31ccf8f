"""`pix2pixhd-fast` command line: a thin layer over the library API."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

# Errors a user can cause and fix (bad options, data or files, a missing optional package): one line on stderr and
# exit status 2, the traceback only with --verbose. Anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, OSError, ImportError)


def _one_line(e: BaseException) -> str:
    """The message of ``e``; for an error re-raised from a DataLoader worker, the worker's own message (the last
    line of the worker traceback that torch puts into the text)."""
    text = str(e)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        name, sep, rest = last.partition(": ")
        text = rest if sep and name.replace(".", "").isidentifier() else last
    return text


def _fail(command: str, e: BaseException, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"pix2pixhd-fast {command}: error: {_one_line(e)}", file=sys.stderr)
    return 2


def _interrupted(command: str) -> int:
    print(f"pix2pixhd-fast {command}: interrupted (files already written are complete)", file=sys.stderr)
    return 130


def _cmd_info(args: argparse.Namespace) -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=1))
    return 0


def _cmd_check_ops(args: argparse.Namespace) -> int:
    """Run every operator on a synthetic street-like label/instance map and check it against the reference."""
    import torch

    from . import build_info, ops, reference

    info = build_info()
    print(f"pix2pixhd_fast ops loaded: {info['ops_loaded']}  CUDA kernels: {info['cuda_kernels']} {info['cuda_archs']}")
    if not info["ops_loaded"]:  # the ops would run their references: comparing them with themselves proves nothing
        print(f"pix2pixhd-fast check-ops: error: the compiled operators are not loaded ({info['error']})",
              file=sys.stderr)  # fmt: skip
        return 1
    device = "cuda" if torch.cuda.is_available() and info["cuda_kernels"] else "cpu"
    import numpy as np

    from .data import render_scene

    g = torch.Generator().manual_seed(args.seed)
    n, h, w, label_nc = 1, args.height, args.width, 35
    if h < 16 or w < 32:
        print(f"pix2pixhd-fast check-ops: error: the scene needs --height >= 16 and --width >= 32, got {h}x{w}",
              file=sys.stderr)  # fmt: skip
        return 2
    # A synthetic street scene (Cityscapes ids; cars, people, ... as instances class * 1000 + k).
    label_np, inst_np, _ = render_scene(np.random.default_rng(args.seed), h, w)
    label = torch.from_numpy(label_np.astype(np.int32))[None, None].to(device)
    inst = torch.from_numpy(inst_np)[None, None].to(device)
    feat = torch.randn(n, 3, h, w, generator=g).to(device)
    x = torch.randn(n, 64, h, w, generator=g).to(device)
    r = torch.randn(n, 64, h, w, generator=g).to(device)

    def timed(fn):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out, (time.perf_counter() - t) * 1e3

    rows = [
        ("instance_boundary", lambda: ops.instance_boundary(inst), lambda: reference.instance_boundary(inst)),
        (
            "encode_input",
            lambda: ops.encode_input(label, inst, label_nc),
            lambda: reference.encode_input(label, inst, label_nc),
        ),
        (
            "instance_avg_pool",
            lambda: ops.instance_avg_pool(feat, inst),
            lambda: reference.instance_avg_pool_loop(feat, inst),
        ),
        ("instance_norm_relu", lambda: ops.instance_norm_relu(x), lambda: reference.instance_norm_act(x)),
        (
            "instance_norm_act_pad",
            lambda: ops.instance_norm_act_pad(x, residual=r, negative_slope=0.2, pad=1),
            lambda: reference.instance_norm_act_pad(x, None, None, r, 1e-5, 0.2, 1),
        ),
    ]
    print(f"device {device}, map {h}x{w}, {int(inst.unique().numel())} instances")
    print(f"{'op':<22} {'max |fast-ref|':>15} {'fast ms':>9} {'ref ms':>9}")
    ok = True
    for name, fast, ref in rows:
        a, ta = timed(fast)
        b, tb = timed(ref)
        err = (a.float() - b.float()).abs().max().item()
        ok &= err < 1e-3
        print(f"{name:<22} {err:>15.2e} {ta:>9.2f} {tb:>9.2f}")
    print("all operators agree with the reference" if ok else "MISMATCH against the reference")
    return 0 if ok else 1


def _cmd_train(argv: list[str]) -> int:
    from .options import parse_train
    from .train import train
    from .train.trainer import TrainingInterrupted

    try:
        summary = train(parse_train(argv))
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: the step finished and 'latest' was saved
        print(f"pix2pixhd-fast train: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted("train")
    except _USER_ERRORS as e:
        return _fail("train", e, "--verbose" in argv)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


def _cmd_test(argv: list[str]) -> int:
    from .export.tensorrt import EngineBuildError, TensorRTUnavailableError
    from .infer import run_test
    from .options import parse_test

    try:
        summary = run_test(parse_test(argv))
    except KeyboardInterrupt:
        return _interrupted("test")
    except (*_USER_ERRORS, TensorRTUnavailableError, EngineBuildError) as e:
        return _fail("test", e, "--verbose" in argv)
    print(json.dumps({k: v for k, v in summary.items() if k != "psnr_per_image"}, indent=1))
    return 0


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from .data import make_synthetic_dataset
    from .options import check_output_folder

    height, width = args.size
    try:
        if height < 16 or width < 32:
            flipped = f" (did you mean {width}x{height}?)" if width >= 16 and height >= 32 else ""
            raise ValueError(f"--size is HEIGHTxWIDTH, at least 16x32; got {height}x{width}{flipped}")
        for name, low in (("n", 1), ("n_test", 0), ("seed", 0)):
            if getattr(args, name) < low:
                raise ValueError(f"--{name} must be >= {low}, got {getattr(args, name)}")
        check_output_folder(args.out, "--out")
        summary = make_synthetic_dataset(args.out, n=args.n, size=(height, width), seed=args.seed, n_test=args.n_test)
    except KeyboardInterrupt:
        return _interrupted("make-synthetic")
    except _USER_ERRORS as e:
        return _fail("make-synthetic", e, args.verbose)
    summary["size"] = f"{height}x{width}"  # as --size has it (HEIGHTxWIDTH)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, quick=args.quick, seed=args.seed, device=args.device)
    return 0 if summary["ok"] else 1


def _parse_size(s: str) -> tuple[int, int]:
    from .data import parse_size

    try:
        return parse_size(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------------------------------------------------------
# Deployment: export (network options as in `test`, from options.test_parser)


def _sizes_arg(text: str) -> list[tuple[int, int]]:
    from .export.tensorrt import parse_sizes

    try:
        return parse_sizes(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _export_parser() -> argparse.ArgumentParser:
    from .export import DEFAULT_OPSET, PRECISIONS
    from .options import test_parser

    p = test_parser()
    p.prog = "pix2pixhd-fast export"
    p.description = (
        "Export a trained generator (<checkpoints_dir>/<name>/<which_epoch>_net_G.pth; network options as in "
        "`test`) as ONNX or as a TensorRT engine."
    )
    g = p.add_argument_group("export")
    g.add_argument("--format", required=True, choices=["onnx", "tensorrt"], help="what to write")
    g.add_argument("--out", required=True, help="output file (.onnx or .engine); its folder must exist")
    g.add_argument(
        "--precision",
        default=None,
        choices=list(PRECISIONS),
        help="convolution precision (instance norm stays fp32); default fp32 for onnx, fp16 for tensorrt",
    )
    g.add_argument(
        "--sizes",
        type=_sizes_arg,
        default=None,
        help="HEIGHTxWIDTH sizes, comma-separated (e.g. 512x1024,1024x2048): the TensorRT profiles (required for "
        "tensorrt); for onnx the first is the traced example size",
    )
    g.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (bf16 is raised to 22)")
    g.add_argument(
        "--id_dtype",
        default=None,
        choices=["int64", "int32"],
        help="dtype of the label/inst inputs; default int64 for onnx, int32 for tensorrt (the data pipeline's "
        "instance-id dtype, supported by every TensorRT layer)",
    )
    g.add_argument("--static", action="store_true", help="onnx: fixed shapes (the first --sizes, batch --max_batch)")
    g.add_argument("--max_batch", type=int, default=1, help="tensorrt: largest batch of the profiles")
    g.add_argument(
        "--dynamic_profile", action="store_true", help="tensorrt: one profile spanning all --sizes (else one each)"
    )
    g.add_argument("--workspace_gb", type=float, default=4.0, help="tensorrt: builder workspace limit (GiB)")
    g.add_argument("--timing_cache", default=None, help="tensorrt: timing cache file, loaded if present and saved")
    g.add_argument("--onnx_path", default=None, help="tensorrt: where the intermediate fp32 ONNX goes (<out>.onnx)")
    return p


def _load_generator_cpu(opt: argparse.Namespace):
    """The model of the options with its trained generator, fp32 NCHW on the CPU (what exporters trace)."""
    import torch

    from .infer import load_model

    opt.no_channels_last = True
    opt.channels_last = False
    opt.use_encoded_image = False  # the exported graph takes features as an input; E is not needed
    return load_model(opt, torch.device("cpu"))


def _export(opt: argparse.Namespace) -> dict:
    import os

    import torch

    from .export import check_onnx_graph_ops, export_onnx, mixed_precision_onnx
    from .export.tensorrt import _require_cuda, build_engine, import_tensorrt

    precision = opt.precision or ("fp32" if opt.format == "onnx" else "fp16")
    id_name = opt.id_dtype or ("int64" if opt.format == "onnx" else "int32")
    id_dtype = torch.int64 if id_name == "int64" else torch.int32
    out = os.path.abspath(opt.out)
    if opt.format == "tensorrt":
        if not opt.sizes:
            raise ValueError("--format tensorrt needs --sizes (e.g. --sizes 512x1024,1024x2048)")
        import_tensorrt()  # fail before doing any work when TensorRT or the GPU is missing
        _require_cuda("building a TensorRT engine")
    if opt.static and not opt.sizes:
        raise ValueError("--static needs --sizes (the fixed size)")
    model = _load_generator_cpu(opt)
    example = opt.sizes[0] if opt.sizes else None
    kwargs = dict(opset=opt.opset, id_dtype=id_dtype, example_size=example, dynamic=not opt.static)
    if opt.static:
        kwargs["batch_size"] = opt.max_batch
    summary = {"format": opt.format, "precision": precision, "out": out}
    if opt.format == "onnx":
        if precision == "fp32":
            export_onnx(model, out, **kwargs)
        else:
            import onnx

            from .utils.files import atomic_path

            with atomic_path(out, suffix=".fp32.tmp.onnx") as tmp:
                export_onnx(model, tmp, **kwargs)
                onnx.save(mixed_precision_onnx(tmp, precision), tmp)
        summary["operators"] = sorted(check_onnx_graph_ops(out))
        return summary
    onnx_path = os.path.abspath(opt.onnx_path) if opt.onnx_path else os.path.splitext(out)[0] + ".onnx"
    if onnx_path == out:
        raise ValueError("--onnx_path must differ from --out")
    export_onnx(model, onnx_path, **kwargs)
    info = build_engine(
        onnx_path,
        out,
        precision=precision,
        sizes=opt.sizes,
        max_batch=opt.max_batch,
        dynamic=opt.dynamic_profile,
        workspace_gb=opt.workspace_gb,
        timing_cache=opt.timing_cache,
    )
    summary.update(onnx=onnx_path, sidecar=out + ".json", inputs=info["inputs"], profiles=info["profiles"])
    summary["tensorrt_version"] = info["tensorrt_version"]
    return summary


def _cmd_export(argv: list[str]) -> int:
    from .export import ONNXVerificationError
    from .export.tensorrt import EngineBuildError, TensorRTUnavailableError
    from .options import finalize

    opt = _export_parser().parse_args(argv)
    try:
        summary = _export(finalize(opt))
    except (
        ValueError,
        TypeError,
        OSError,
        ImportError,
        TensorRTUnavailableError,
        EngineBuildError,
        ONNXVerificationError,
    ) as e:
        print(f"pix2pixhd-fast export: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Instance features: encode-features and precompute-feature-maps (pix2pixhd_fast.features)


def _cmd_features(command: str, argv: list[str]) -> int:
    from .features import run_encode_features, run_precompute_feature_maps
    from .options import parse_features

    run = run_encode_features if command == "encode-features" else run_precompute_feature_maps
    try:
        summary = run(parse_features(command, argv))  # argparse errors exit with status 2 and a usage line
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"pix2pixhd-fast {command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


# Commands that take the reference's full option set are parsed by their own parsers (see options.py).
_PASSTHROUGH = {"train": _cmd_train, "test": _cmd_test, "export": _cmd_export}

_PASSTHROUGH["encode-features"] = lambda argv: _cmd_features("encode-features", argv)
_PASSTHROUGH["precompute-feature-maps"] = lambda argv: _cmd_features("precompute-feature-maps", argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        try:
            return _PASSTHROUGH[argv[0]](argv[1:])
        except KeyboardInterrupt:  # Ctrl-C in a command without its own handling: a line, not a traceback
            return _interrupted(argv[0])
    parser = argparse.ArgumentParser(prog="pix2pixhd-fast", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train", help="train pix2pixHD (reference train.py options; see train --help)", add_help=False)
    sub.add_parser("test", help="generate images with a trained model (reference test.py options)", add_help=False)
    sub.add_parser(
        "export", help="write a trained generator as ONNX or a TensorRT engine (see export --help)", add_help=False
    )
    sub.add_parser(
        "encode-features",
        help="encode the training instances with E and cluster them per class (see encode-features --help)",
        add_help=False,
    )
    sub.add_parser(
        "precompute-feature-maps",
        help="write E's feature maps as <phase>_feat images for --load_features (see precompute-feature-maps --help)",
        add_help=False,
    )
    p = sub.add_parser("demo", help="synthetic data -> short training -> test images, HTML page and PSNR")
    p.add_argument("--out", default="demo_out", help="folder for the data, checkpoints and results")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(fn=_cmd_demo)
    p = sub.add_parser("make-synthetic", help="write procedural street scenes in the pix2pixHD folder layout")
    p.add_argument("--out", required=True, help="dataroot to create")
    p.add_argument("--n", type=int, default=200, help="training scenes")
    p.add_argument("--n_test", type=int, default=20, help="test scenes")
    # type=: a bad size is an argparse usage error (exit 2 with the message), not a traceback
    p.add_argument("--size", default=(128, 256), type=_parse_size, help="HEIGHTxWIDTH, e.g. 128x256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print the traceback of an error")
    p.set_defaults(fn=_cmd_make_synthetic)
    p = sub.add_parser("info", help="print what the build contains (build_info)")
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("check-ops", help="run the operators on a synthetic scene and compare with the reference")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic scene")
    p.set_defaults(fn=_cmd_check_ops)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return _interrupted(args.cmd)


if __name__ == "__main__":
    sys.exit(main())
