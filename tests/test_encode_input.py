"""encode_input: the fused one-hot ++ boundary ++ feat kernels against reference.encode_input."""

import functools

import pytest
import torch

from pix2pixhd_fast import ops, reference

from .conftest import DEVICES
from .test_instance_boundary import rand_ids

OP = torch.ops.pix2pixhd_fast.encode_input.default if ops.has_ops() else None

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LABEL_DTYPES = [
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bfloat16,
    torch.float32,
    torch.float64,
]
FORMATS = [torch.contiguous_format, torch.channels_last]


def rand_labels(n, h, w, label_nc, dtype, device="cpu"):
    return torch.randint(0, label_nc, (n, 1, h, w)).to(dtype).to(device)


def rand_feat(n, cf, h, w, dtype, device, layout):
    if layout == "nchw":
        return torch.randn(n, cf, h, w, dtype=dtype, device=device)
    if layout == "cl":
        return torch.randn(n, cf, h, w, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    return torch.randn(n, cf, w, h + 1, dtype=dtype, device=device).transpose(2, 3)[:, :, 1:]  # strided view


def expected(label, inst, label_nc, feat, dtype, fmt):
    """The reference encoding; feature channels converted once to dtype (the reference rounds them through
    fp32 first, which only differs for fp64 features into an fp64 output)."""
    label, inst = label.cpu(), None if inst is None else inst.cpu()
    out = reference.encode_input(label, inst, label_nc, None, dtype)
    if feat is not None:
        f = feat.cpu().to(dtype) if dtype == torch.float64 else feat.cpu().float().to(dtype)
        out = torch.cat([out, f], 1)
    return out.contiguous(memory_format=fmt)


def check(got, label, inst, label_nc, feat, dtype, fmt):
    want = expected(label, inst, label_nc, feat, dtype, fmt)
    assert got.shape == want.shape and got.dtype == dtype
    # Strides as the fake kernel promises (torch.empty in that memory format).
    assert got.stride() == torch.empty(want.shape, memory_format=fmt).stride()
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "cl"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference(device, fmt, dtype, seed):
    cases = [  # (N, H, W, label_nc, label dtype, inst dtype or None, feat (Cf, dtype, layout) or None)
        (1, 1, 1, 1, torch.int64, None, None),
        (1, 1, 1, 3, torch.uint8, torch.int32, (2, torch.float32, "nchw")),
        (2, 5, 9, 35, torch.float32, torch.float32, None),
        (1, 7, 1, 35, torch.int32, torch.int64, (3, torch.float16, "cl")),
        (1, 1, 13, 182, torch.int16, torch.uint8, (1, torch.float64, "strided")),
        (3, 16, 24, 35, torch.float64, torch.int16, (3, torch.bfloat16, "nchw")),
        (2, 17, 33, 35, torch.int8, None, (3, torch.float32, "cl")),
        (1, 12, 20, 1, torch.uint8, torch.float64, (4, torch.float32, "strided")),
        (2, 9, 31, 182, torch.int64, torch.int8, None),
    ]
    for n, h, w, nc, ldt, idt, fspec in cases:
        label = rand_labels(n, h, w, nc, ldt, device)
        inst = None if idt is None else rand_ids(n, h, w, idt, device)
        feat = None if fspec is None else rand_feat(n, fspec[0], h, w, fspec[1], device, fspec[2])
        got = ops.encode_input(label, inst, nc, feat, dtype, fmt)
        check(got, label, inst, nc, feat, dtype, fmt)
        # The raw op too, with [N,H,W] ids.
        got = OP(label[:, 0], None if inst is None else inst.unsqueeze(1), nc, feat, dtype, fmt == torch.channels_last)
        check(got, label, inst, nc, feat, dtype, fmt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
def test_label_and_inst_dtypes(device, label_dtype, seed):
    n, h, w = 2, 11, 19
    label = rand_labels(n, h, w, 35, label_dtype, device)
    for inst_dtype in (torch.uint8, torch.int64, torch.float32, label_dtype):
        inst = rand_ids(n, h, w, inst_dtype, device, blocky=bool(torch.randint(2, ()).item()))
        for fmt in FORMATS:
            check(
                ops.encode_input(label, inst, 35, None, torch.float32, fmt), label, inst, 35, None, torch.float32, fmt
            )


@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_with_feat_directly(device, seed):
    # Against reference.encode_input itself (feat included) where its fp32 rounding is the kernel's too.
    label = rand_labels(2, 10, 14, 35, torch.float32, device)
    inst = rand_ids(2, 10, 14, torch.float32, device)
    feat = torch.randn(2, 3, 10, 14, device=device)
    for dtype in (torch.float32, torch.bfloat16):
        for fmt in FORMATS:
            got = ops.encode_input(label, inst, 35, feat, dtype, fmt)
            want = reference.encode_input(label.cpu(), inst.cpu(), 35, feat.cpu(), dtype, fmt)
            torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_edge_channel_ids_in_own_type(device):
    # 26001 vs 26002 must stay distinct (float32 ids, as the reference data pipeline produces).
    label = torch.zeros(1, 1, 2, 4, device=device)
    inst = torch.tensor([[[[26001, 26001, 26002, 26002]] * 2]], dtype=torch.float32, device=device)
    for fmt in FORMATS:
        out = ops.encode_input(label, inst, 2, None, torch.float16, fmt).cpu()
        assert out[0, 2].tolist() == [[0, 1, 1, 0], [0, 1, 1, 0]]
        assert out[0, 0].eq(1).all() and out[0, 1].eq(0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_misaligned(device, seed):
    n, h, w, nc = 2, 13, 22, 35
    big = torch.randint(0, nc, (n * h * w + 3,), device=device)
    label = big[3:].view(n, h, w).int()[:, :, 1:]  # strided [2,13,21]
    label_off = big.int()[1:].narrow(0, 0, n * h * w).view(n, h, w)  # contiguous, storage offset 1
    inst = rand_ids(n, w, h, torch.int64, device).transpose(1, 2)
    feat = torch.randn(n, 3, h, w, device=device).to(torch.float16)
    for lab in (label, label_off):
        ww = lab.size(-1)
        i, f = inst[..., :ww], feat[..., :ww]
        for fmt in FORMATS:
            check(ops.encode_input(lab, i, nc, f, torch.float32, fmt), lab, i, nc, f, torch.float32, fmt)
            check(ops.encode_input(lab, i, nc, f, torch.float16, fmt), lab, i, nc, f, torch.float16, fmt)


@pytest.mark.parametrize("device", DEVICES)
def test_large(device, seed):
    n, h, w = 2, 64, 130
    label = rand_labels(n, h, w, 35, torch.float32, device)
    inst = rand_ids(n, h, w, torch.int32, device)
    feat = rand_feat(n, 3, h, w, torch.float32, device, "cl")
    for fmt in FORMATS:
        for dtype in (torch.bfloat16, torch.float32):
            check(ops.encode_input(label, inst, 35, feat, dtype, fmt), label, inst, 35, feat, dtype, fmt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_many_feature_channels(device, dtype, seed):
    # CUDA channels-last: 100 feature channels shrink the shared-memory tile below 256 pixels (48..224 by
    # dtype; several tiles and a partial last one here); 1600 do not fit a 16-pixel tile and take the
    # NCHW-kernel + copy fallback. Both must equal the reference (and never raise).
    n, h, w = 2, 5, 41
    label = rand_labels(n, h, w, 35, torch.int32, device)
    inst = rand_ids(n, h, w, torch.int64, device)
    for cf, layout in ((100, "cl"), (1600, "nchw")):
        feat = rand_feat(n, cf, h, w, torch.float32, device, layout)
        for fmt in FORMATS:
            check(ops.encode_input(label, inst, 35, feat, dtype, fmt), label, inst, 35, feat, dtype, fmt)


@pytest.mark.parametrize("device", DEVICES)
def test_unsupported_wide_unsigned_ids(device):
    # uint16/32/64 ids must be rejected with the dtype named (the CUDA kernel once read them as float64).
    z = torch.zeros(1, 2, 2, dtype=torch.int64, device=device)
    u = torch.empty(1, 2, 2, dtype=torch.uint16, device=device)
    with pytest.raises(RuntimeError, match="UInt16"):
        OP(u, None, 3, None, torch.float32, True)
    with pytest.raises(RuntimeError, match="UInt16"):
        OP(z, u, 3, None, torch.float32, False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 1, 4, 4), (2, 1, 0, 5), (2, 5, 0), (0, 3, 3)])
def test_empty(device, shape):
    label = torch.zeros(shape, dtype=torch.int64, device=device)
    n, h, w = shape[0], shape[-2], shape[-1]
    feat = torch.zeros(n, 2, h, w, device=device)
    for fmt in FORMATS:
        out = ops.encode_input(label, label, 5, feat, torch.float16, fmt)
        assert out.shape == (n, 8, h, w) and out.dtype == torch.float16


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, seed):
    label = rand_labels(2, 5, 7, 35, torch.int64, device)
    inst = rand_ids(2, 5, 7, torch.int32, device)
    feat = torch.randn(2, 3, 5, 7, device=device, requires_grad=True)
    featcl = torch.randn(2, 3, 5, 7, device=device).contiguous(memory_format=torch.channels_last)
    samples = [
        (label, inst, 35, feat, torch.float32, False),
        (label, None, 35, featcl.requires_grad_(), torch.bfloat16, True),
        (label.float()[:, 0], inst, 4 + 31, None, torch.float16, True),
        (label, inst, 35, None, torch.float64, False),
    ]
    for args in samples:
        torch.library.opcheck(OP, args)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_with_feat_grad(device, seed):
    label = rand_labels(2, 8, 12, 35, torch.float32, device)
    inst = rand_ids(2, 8, 12, torch.float32, device)
    feat = torch.randn(2, 3, 8, 12, device=device, requires_grad=True)
    weight = torch.randn(1, 39, 1, 1, device=device)

    def f(label, inst, feat):
        x = ops.encode_input(label, inst, 35, feat, torch.float32, torch.channels_last)
        return (x * weight).sum(), x

    (loss_e, x_e), (loss_c, x_c) = f(label, inst, feat), torch.compile(f, fullgraph=True)(label, inst, feat)
    (g_e,) = torch.autograd.grad(loss_e, feat)
    (g_c,) = torch.autograd.grad(loss_c, feat)
    torch.testing.assert_close(x_c, x_e, rtol=0, atol=0)
    assert x_c.is_contiguous(memory_format=torch.channels_last)
    # x is bit-identical; the loss is a ~3700-term fp32 sum that inductor reduces in another order.
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g_c, g_e, rtol=0, atol=0)
    torch.testing.assert_close(g_e, weight[:, 36:].expand_as(feat))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_feat(device, seed):
    label = rand_labels(1, 4, 5, 3, torch.int64, device)
    inst = rand_ids(1, 4, 5, torch.int32, device)
    feat = torch.randn(1, 2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    for fmt in FORMATS:
        fn = functools.partial(ops.encode_input, label, inst, 3, dtype=torch.float64, memory_format=fmt)
        assert torch.autograd.gradcheck(fn, (feat,))


def test_errors_cpu():
    z = torch.zeros(1, 2, 2, dtype=torch.int64)
    label = torch.tensor([[[0, 1], [2, 40]]])
    inst = torch.zeros(1, 2, 2, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"label values must lie in \[0, label_nc=35\), found 40"):
        OP(label, inst, 35, None, torch.float32, False)
    with pytest.raises(RuntimeError, match=r"label values must lie in \[0, label_nc=35\), found 40"):
        ops.encode_input(label, None, 35, None, torch.float32, torch.channels_last)
    with pytest.raises(RuntimeError, match=r"label values must lie in \[0, label_nc=3\), found -1"):
        OP(torch.tensor([[[0, -1]]], dtype=torch.int8), None, 3, None, torch.float32, False)
    with pytest.raises(RuntimeError, match=r"label values must lie in \[0, label_nc=3\), found 4294967297"):
        OP(torch.tensor([[[2**32 + 1]]]), None, 3, None, torch.float32, False)  # not wrapped to 1
    with pytest.raises(RuntimeError, match=r"label values must lie in \[0, label_nc=3\), found 3"):
        OP(torch.tensor([[[0.0, 3.0]]]), None, 3, None, torch.float32, False)
    with pytest.raises(RuntimeError, match="label holds fractional values"):
        OP(torch.tensor([[[0.0, 1.5]]]), None, 3, None, torch.float32, False)
    with pytest.raises(RuntimeError, match="inst holds fractional values"):
        OP(torch.zeros(1, 1, 2), torch.tensor([[[0.0, 0.25]]]), 3, None, torch.float32, True)
    with pytest.raises(RuntimeError, match="does not match label shape"):
        OP(z, torch.zeros(1, 2, 3, dtype=torch.int64), 3, None, torch.float32, False)
    with pytest.raises(RuntimeError, match=r"feat must have shape \[N,Cf,H,W\]"):
        OP(z, None, 3, torch.zeros(1, 3, 2, 3), torch.float32, False)
    with pytest.raises(RuntimeError, match=r"feat must have shape \[N,Cf,H,W\]"):
        OP(z, None, 3, torch.zeros(3, 2, 2), torch.float32, False)
    with pytest.raises(RuntimeError, match="feat must be float32"):
        OP(z, None, 3, torch.zeros(1, 3, 2, 2, dtype=torch.int32), torch.float32, False)
    with pytest.raises(RuntimeError, match=r"label must have shape \[N,1,H,W\] or \[N,H,W\]"):
        OP(torch.zeros(2, 2, dtype=torch.int64), None, 3, None, torch.float32, False)
    with pytest.raises(RuntimeError, match=r"label must have shape \[N,1,H,W\] or \[N,H,W\]"):
        OP(torch.zeros(1, 2, 2, 2, dtype=torch.int64), None, 3, None, torch.float32, False)
    with pytest.raises(RuntimeError, match="label_nc must be a positive int"):
        OP(z, None, 0, None, torch.float32, False)
    with pytest.raises(RuntimeError, match="unsupported output dtype"):
        OP(z, None, 3, None, torch.uint8, False)
    with pytest.raises(RuntimeError, match="integer ids"):
        OP(torch.zeros(1, 2, 2, dtype=torch.bool), None, 3, None, torch.float32, False)
    # The Python API's own checks.
    with pytest.raises(ValueError, match="label_nc must be a positive int"):
        ops.encode_input(z, None, -1)
    with pytest.raises(ValueError, match="does not match label shape"):
        ops.encode_input(z, torch.zeros(2, 2, 2, dtype=torch.int64), 3)
    with pytest.raises(TypeError, match="output dtype must be a float dtype"):
        ops.encode_input(z, None, 3, dtype=torch.int32)


@pytest.mark.parametrize("device", [p for p in DEVICES if not isinstance(p, str)])
def test_out_of_range_label_cuda(device):
    label = torch.tensor([[[0, 1], [2, 40]]], device=device)
    with pytest.raises(ValueError, match=r"label values must lie in \[0, label_nc=35\)"):
        ops.encode_input(label, None, 35)
    with pytest.raises(ValueError, match="fractional"):
        ops.encode_input(label.float() + 0.5, None, 35)
    # check=False (CUDA-graph users): no sync, no device assert; the bad pixel gets an all-zero one-hot.
    for lab in (label, label.float(), label - 41):
        for fmt in FORMATS:
            out = ops.encode_input(lab, None, 35, None, torch.float32, fmt, check=False).cpu()
            bad = lab.cpu() < 0 if lab.min() < 0 else lab.cpu() >= 35
            ok = ~bad
            assert out.sum(1)[ok].eq(1).all() and out.sum(1)[bad].eq(0).all()
