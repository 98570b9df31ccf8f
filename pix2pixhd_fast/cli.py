"""`pix2pixhd-fast` command line: a thin layer over the library API."""

from __future__ import annotations

import argparse
import json
import sys
import time


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
    device = "cuda" if torch.cuda.is_available() and info["cuda_kernels"] else "cpu"
    g = torch.Generator().manual_seed(args.seed)
    n, h, w, label_nc = 1, args.height, args.width, 35
    # Blocky scene: sky / building / road bands, then cars (class 26) and people (24) as rectangles.
    label = torch.full((n, 1, h, w), 23, dtype=torch.int32)
    label[:, :, h // 3 :, :] = 11
    label[:, :, 2 * h // 3 :, :] = 7
    inst = label.clone()
    for k in range(args.objects):
        cls = 26 if k % 2 == 0 else 24
        y0 = int(torch.randint(h // 2, h - 8, (1,), generator=g))
        x0 = int(torch.randint(0, w - 16, (1,), generator=g))
        label[:, :, y0 : y0 + 8, x0 : x0 + 16] = cls
        inst[:, :, y0 : y0 + 8, x0 : x0 + 16] = cls * 1000 + k
    label, inst = label.to(device), inst.to(device)
    feat = torch.randn(n, 3, h, w, generator=g).to(device)
    x = torch.randn(n, 64, h, w, generator=g).to(device)

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
    ]
    print(f"device {device}, map {h}x{w}, {args.objects} objects")
    print(f"{'op':<20} {'max |fast-ref|':>15} {'fast ms':>9} {'ref ms':>9}")
    ok = True
    for name, fast, ref in rows:
        a, ta = timed(fast)
        b, tb = timed(ref)
        err = (a.float() - b.float()).abs().max().item()
        ok &= err < 1e-3
        print(f"{name:<20} {err:>15.2e} {ta:>9.2f} {tb:>9.2f}")
    print("all operators agree with the reference" if ok else "MISMATCH against the reference")
    return 0 if ok else 1


def _cmd_train(argv: list[str]) -> int:
    from .options import parse_train
    from .train import train

    try:
        summary = train(parse_train(argv))
    except (ValueError, FileNotFoundError, ImportError) as e:  # bad options or data: a message, not a traceback
        print(f"pix2pixhd-fast train: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


def _cmd_test(argv: list[str]) -> int:
    from .infer import run_test
    from .options import parse_test

    try:
        summary = run_test(parse_test(argv))
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"pix2pixhd-fast test: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "psnr_per_image"}, indent=1))
    return 0


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from .data import make_synthetic_dataset

    summary = make_synthetic_dataset(args.out, n=args.n, size=args.size, seed=args.seed, n_test=args.n_test)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, quick=args.quick, seed=args.seed, device=args.device)
    return 0 if summary["ok"] else 1


def _parse_size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x128 (width x height), got {s!r}") from None
    return w, h


# Commands that take the reference's full option set are parsed by their own parsers (see options.py).
_PASSTHROUGH = {"train": _cmd_train, "test": _cmd_test}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        return _PASSTHROUGH[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="pix2pixhd-fast", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train", help="train pix2pixHD (reference train.py options; see train --help)", add_help=False)
    sub.add_parser("test", help="generate images with a trained model (reference test.py options)", add_help=False)
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
    p.add_argument("--size", default=(256, 128), type=_parse_size, help="width x height, e.g. 256x128")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_make_synthetic)
    p = sub.add_parser("info", help="print what the build contains (build_info)")
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("check-ops", help="run the operators on a synthetic scene and compare with the reference")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--objects", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_check_ops)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
