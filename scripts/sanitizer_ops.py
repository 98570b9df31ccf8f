"""Run every CUDA op forward + backward once at small sizes, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 scripts/sanitizer_ops.py
    compute-sanitizer --tool racecheck --error-exitcode 3 python3 scripts/sanitizer_ops.py

Inputs are made on the CPU and copied over, and the references run on the CPU, so nearly every kernel the
sanitizer sees is one of ours. Shapes are odd (tails, unaligned rows), include channels-last and empty
tensors, and one larger plane per op so multi-block paths run too. Results are also compared with the
reference (loose tolerances: this is a memory/race check, the tests check accuracy); exit status 1 on a
mismatch, 2 when the CUDA kernels are not available.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import pix2pixhd_fast  # noqa: E402
from pix2pixhd_fast import ops, reference  # noqa: E402

DEV = "cuda"
G = torch.Generator().manual_seed(20240607)
failures: list[str] = []
checks = 0


def randn(*shape, dtype=torch.float32, cl=False) -> torch.Tensor:
    x = torch.randn(shape, generator=G).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def ids(shape, lo, hi, dtype=torch.int32) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=G).to(dtype)


def blocky_ids(shape, k, dtype=torch.int32) -> torch.Tensor:
    """Ids constant on 8x8 blocks (real regions with boundaries), including negative and > 65535 ids."""
    n, _, h, w = shape
    coarse = torch.randint(0, k, (n, 1, (h + 7) // 8, (w + 7) // 8), generator=G)
    table = torch.randint(-(2**20), 2**20, (k,), generator=G)
    full = table[coarse].repeat_interleave(8, 2).repeat_interleave(8, 3)[:, :, :h, :w]
    return full.contiguous().to(dtype)


def close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    global checks
    checks += 1
    got = got.detach().cpu().double()
    want = want.detach().cpu().double()
    if got.shape != want.shape:
        failures.append(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        return
    if got.numel() == 0:
        print(f"  {name:<58} empty  ok", flush=True)
        return
    if not torch.isfinite(got).all():
        failures.append(f"{name}: non-finite values")
        return
    err = (got - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    status = "ok" if err <= tol * scale else "MISMATCH"
    print(f"  {name:<58} max|err| {err:.2e}  {status}", flush=True)
    if status != "ok":
        failures.append(f"{name}: max abs error {err:.3e} > {tol * scale:.3e}")


def tol_of(dtype) -> float:
    return {torch.float32: 1e-3, torch.float64: 1e-6}.get(dtype, 5e-2)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def check_norm(shape, dtype, cl, affine, slope) -> None:
    name = f"norm {list(shape)} {str(dtype)[6:]} {'CL' if cl else 'NCHW'} affine={affine} slope={slope}"
    x = randn(*shape, dtype=dtype, cl=cl)
    gy = randn(*shape, dtype=dtype, cl=cl)
    w = randn(shape[1]) if affine else None
    b = randn(shape[1]) if affine else None
    leaves = [t.to(DEV).requires_grad_() for t in (x, w, b) if t is not None]
    y = ops.instance_norm_act(*leaves, *([None, None] if not affine else []), eps=1e-5, negative_slope=slope)
    g = torch.autograd.grad(y, leaves, gy.to(DEV))
    sync()
    # Reference: float64 on the CPU.
    rleaves = [t.double().requires_grad_() for t in (x, w, b) if t is not None]
    if x.numel():
        yr = reference.instance_norm_act(*rleaves, *([None, None] if not affine else []), 1e-5, slope)
        gr = torch.autograd.grad(yr, rleaves, gy.double())
    else:  # (F.instance_norm rejects empty batches)
        yr, gr = x.double(), [torch.zeros_like(t) for t in rleaves]
    tol = tol_of(dtype)
    close(name + " y", y, yr, tol)
    for i, (a, r) in enumerate(zip(g, gr, strict=True)):
        close(name + f" grad{i}", a, r, tol * 4)


def check_norm_pad(shape, dtype, cl, affine, slope, pad, residual) -> None:
    """instance_norm_act_pad forward + backward; residual: None, "dense" or "view" (interior of a padded tensor)."""
    name = f"norm_pad {list(shape)} {str(dtype)[6:]} {'CL' if cl else 'NCHW'} affine={affine} pad={pad} res={residual}"
    n, c, h, w = shape
    x = randn(*shape, dtype=dtype, cl=cl)
    gy = randn(n, c, h + 2 * pad, w + 2 * pad, dtype=dtype, cl=cl)
    wt = randn(c) if affine else None
    b = randn(c) if affine else None
    r = None
    if residual == "dense":
        r = randn(*shape, dtype=dtype, cl=cl)
    elif residual == "view":
        r = randn(n, c, h + 2, w + 2, dtype=dtype, cl=cl)[:, :, 1:-1, 1:-1]
    dev = [None if t is None else t.to(DEV) for t in (x, wt, b)]
    # The residual is moved as its padded base, so the device tensor is a strided view too.
    rd = None if r is None else (r._base.to(DEV)[:, :, 1:-1, 1:-1] if residual == "view" else r.to(DEV))
    leaves = [t.requires_grad_() for t in (*dev, rd) if t is not None]
    y = ops.instance_norm_act_pad(dev[0], dev[1], dev[2], rd, 1e-5, slope, pad)
    g = torch.autograd.grad(y, leaves, gy.to(DEV))
    sync()
    rl = [None if t is None else t.double().requires_grad_() for t in (x, wt, b, r)]
    yr = reference.instance_norm_act_pad(rl[0], rl[1], rl[2], rl[3], 1e-5, slope, pad)
    gr = torch.autograd.grad(yr, [t for t in rl if t is not None], gy.double(), allow_unused=True)
    tol = tol_of(dtype)
    close(name + " y", y, yr, tol)
    for i, (a, e) in enumerate(zip(g, gr, strict=True)):
        close(name + f" grad{i}", a, torch.zeros_like(a) if e is None else e, tol * 4)


def check_pool(shape, dtype, cl, inst) -> None:
    name = f"pool {list(shape)} {str(dtype)[6:]} {'CL' if cl else 'NCHW'} ids {str(inst.dtype)[6:]}"
    feat = randn(*shape, dtype=dtype, cl=cl)
    gy = randn(*shape, dtype=dtype, cl=cl)
    fd = feat.to(DEV).requires_grad_()
    out = ops.instance_avg_pool(fd, inst.to(DEV))
    (g,) = torch.autograd.grad(out, fd, gy.to(DEV))
    sync()
    close(name + " out", out, reference.instance_avg_pool_scatter(feat.double(), inst), tol_of(dtype))
    close(name + " grad", g, reference.instance_avg_pool_scatter(gy.double(), inst), tol_of(dtype))


def check_boundary(inst, dtype) -> None:
    name = f"boundary {list(inst.shape)} ids {str(inst.dtype)[6:]} -> {str(dtype)[6:]}"
    e = ops.instance_boundary(inst.to(DEV), dtype)
    sync()
    close(name, e.float(), reference.instance_boundary(inst, torch.float32), 0.0)


def check_encode(label, inst, nc, cf, dtype, cl) -> None:
    fmt = "CL" if cl else "NCHW"
    name = f"encode {list(label.shape)} nc={nc} inst={inst is not None} feat={cf} {str(dtype)[6:]} {fmt}"
    mf = torch.channels_last if cl else torch.contiguous_format
    n, h, w = label.shape[0], label.shape[-2], label.shape[-1]
    feat = randn(n, cf, h, w) if cf else None
    fd = feat.to(DEV).requires_grad_() if cf else None
    out = ops.encode_input(label.to(DEV), None if inst is None else inst.to(DEV), nc, fd, dtype, mf)
    g = None
    if cf:
        gy = randn(*out.shape, dtype=dtype)
        (g,) = torch.autograd.grad(out, fd, gy.to(DEV))
    sync()
    close(name, out.float(), reference.encode_input(label, inst, nc, feat, torch.float32), tol_of(dtype))
    if g is not None:
        close(name + " grad feat", g, gy[:, nc + (inst is not None) :].float(), tol_of(dtype))


def guarded(fn, *args) -> None:
    """Run one check; an exception is a failure of that check, and the others still run."""
    try:
        fn(*args)
    except Exception as e:
        msg = f"{fn.__name__}{tuple(getattr(a, 'shape', a) for a in args)}: {type(e).__name__}: {e}"
        print("  ERROR " + msg.splitlines()[0], flush=True)
        failures.append(msg.splitlines()[0])


def main() -> int:
    global DEV
    DEV = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"  # cpu: check the script
    info = pix2pixhd_fast.build_info()
    print(f"torch {torch.__version__}, device {DEV}, build_info: {info}", flush=True)
    need_lib = "--allow-reference" not in sys.argv  # (the reference ops on CUDA: checks this script itself)
    if DEV == "cuda" and (
        not torch.cuda.is_available() or need_lib and not (info["ops_loaded"] and info["cuda_kernels"])
    ):
        print("sanitizer_ops: needs a GPU and the compiled CUDA kernels")
        return 2
    print("instance_norm_act", flush=True)
    guarded(check_norm, (2, 5, 13, 17), torch.float32, False, True, 0.2)
    guarded(check_norm, (1, 8, 33, 40), torch.bfloat16, True, False, 0.0)
    guarded(check_norm, (2, 3, 7, 9), torch.float16, True, True, 1.0)
    guarded(check_norm, (1, 2, 512, 1024), torch.float32, False, False, 0.0)  # large plane: split reductions
    guarded(check_norm, (1, 64, 40, 48), torch.bfloat16, True, True, 0.0)  # channels-last with many channels
    guarded(check_norm, (0, 4, 5, 5), torch.float32, False, True, 0.0)
    guarded(check_norm, (1, 3, 0, 5), torch.float32, True, False, 0.0)

    print("instance_norm_act_pad", flush=True)
    guarded(check_norm_pad, (2, 5, 13, 17), torch.float32, False, True, 0.2, 1, "view")
    guarded(check_norm_pad, (1, 8, 33, 40), torch.bfloat16, True, False, 0.0, 1, "view")  # vector path
    guarded(check_norm_pad, (2, 3, 7, 9), torch.float16, True, True, 1.0, 3, "dense")
    guarded(check_norm_pad, (1, 4, 4, 4), torch.float32, True, False, 0.0, 3, None)  # pad reaches the far edge
    guarded(check_norm_pad, (1, 2, 256, 512), torch.float32, False, False, 0.0, 1, "dense")  # row chunks
    guarded(check_norm_pad, (1, 64, 40, 48), torch.bfloat16, True, True, 0.0, 1, "view")  # many channels
    guarded(check_norm_pad, (2, 3, 5, 1), torch.float32, False, True, 0.2, 0, "dense")  # 1-pixel-wide, pad 0
    guarded(check_norm_pad, (0, 4, 5, 5), torch.float32, False, True, 0.0, 1, None)
    guarded(check_norm_pad, (1, 3, 0, 5), torch.float32, True, False, 0.0, 0, None)

    print("instance_avg_pool", flush=True)
    guarded(check_pool, (2, 3, 13, 17), torch.float32, False, ids((2, 1, 13, 17), -3, 5, torch.int64))
    guarded(check_pool, (1, 4, 37, 45), torch.bfloat16, True, blocky_ids((1, 1, 37, 45), 12))
    guarded(check_pool, (1, 3, 256, 512), torch.float32, False, blocky_ids((1, 1, 256, 512), 60))
    guarded(check_pool, (2, 2, 9, 11), torch.float16, False, ids((2, 9, 11), 0, 200, torch.uint8))
    guarded(check_pool, (1, 3, 64, 64), torch.float32, False, blocky_ids((1, 1, 64, 64), 6).float())  # float ids
    guarded(check_pool, (0, 3, 4, 4), torch.float32, False, ids((0, 1, 4, 4), 0, 3))

    print("instance_boundary", flush=True)
    guarded(check_boundary, ids((2, 1, 13, 17), 0, 3), torch.float32)
    guarded(check_boundary, ids((1, 31, 45), 0, 2, torch.uint8), torch.bool)
    guarded(check_boundary, blocky_ids((1, 1, 256, 512), 60, torch.int64), torch.bfloat16)
    guarded(check_boundary, ids((1, 1, 1, 1), 0, 3, torch.int16), torch.uint8)
    guarded(check_boundary, ids((0, 1, 3, 3), 0, 3), torch.float32)

    print("encode_input", flush=True)
    guarded(check_encode, ids((2, 1, 13, 17), 0, 35), ids((2, 1, 13, 17), 0, 4), 35, 0, torch.float32, False)
    guarded(
        check_encode,
        ids((1, 37, 45), 0, 35, torch.uint8),
        blocky_ids((1, 1, 37, 45), 8)[:, 0],
        35,
        3,
        torch.bfloat16,
        True,
    )
    guarded(
        check_encode,
        ids((1, 1, 256, 512), 0, 35, torch.int64),
        blocky_ids((1, 1, 256, 512), 60),
        35,
        3,
        torch.float32,
        False,
    )
    guarded(check_encode, ids((1, 1, 9, 11), 0, 5), None, 5, 0, torch.float16, True)
    guarded(check_encode, ids((0, 1, 4, 4), 0, 5), ids((0, 1, 4, 4), 0, 5), 5, 2, torch.float32, False)

    sync()
    print(f"sanitizer_ops: {checks} checks, {len(failures)} mismatches")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
