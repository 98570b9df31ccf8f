"""Fused instance norm + affine + LeakyReLU: kernels against the reference and nn.InstanceNorm2d."""

import pytest
import torch
import torch.nn.functional as F

from pix2pixhd_fast import ops, reference

from .conftest import DEVICES

OP = torch.ops.pix2pixhd_fast.instance_norm_act
BWD = torch.ops.pix2pixhd_fast.instance_norm_act_backward

SLOPES = [0.0, 0.2, 1.0]
LAYOUTS = ["nchw", "cl", "slice", "cl_slice", "offset"]
# Output tolerances (atol, rtol) by dtype: fp32 math everywhere, so low precision is one output rounding.
FWD_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (3e-2, 1.6e-2)}


def test_has_ops():
    assert ops.has_ops(), "compiled library not loaded: these tests must run against the kernels"


def make_x(shape, dtype, layout, device, offset=0.0, scale=1.0):
    """Random x of `shape` in the given layout (values drawn in fp32, then cast)."""
    n, c, h, w = shape
    if layout == "nchw":
        x = torch.randn(shape)
    elif layout == "cl":
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    elif layout == "slice":  # non-contiguous spatial window of an NCHW tensor
        x = torch.randn(n, c, h + 2, w + 3)[:, :, 1 : h + 1, 2 : w + 2]
    elif layout == "cl_slice":  # window of a channels-last tensor: still unit channel stride
        x = torch.randn(n, c, h + 1, w + 2).contiguous(memory_format=torch.channels_last)[:, :, 1:, 2:]
    elif layout == "offset":  # contiguous but misaligned storage offset (no 16-byte vectors on CUDA)
        x = torch.randn(n * c * h * w + 1)[1:].view(shape)
    else:
        raise ValueError(layout)
    x = x * scale + offset
    # .to(device) keeps the strides of dense tensors; rebuild windows on the device to keep them windows.
    if layout in ("slice", "cl_slice", "offset"):
        base = x._base if x._base is not None else x
        dev = base.to(device=device, dtype=dtype)
        return dev.as_strided(x.shape, x.stride(), x.storage_offset() - base.storage_offset())
    return x.to(device=device, dtype=dtype)


def z_ref(x, w, b, eps=1e-5):
    """Pre-activation in float64 (the kink of the activation sits at z == 0)."""
    return F.instance_norm(
        x.detach().double(),
        weight=None if w is None else w.detach().double(),
        bias=None if b is None else b.detach().double(),
        eps=eps,
    )


def draw_away_from_kink(shape, dtype, layout, device, w, b, slope):
    """Random x whose pre-activations all keep a margin from 0 (where the two implementations could
    legitimately disagree on the side of the kink); redrawn a few times if needed."""
    for _ in range(20):
        x = make_x(shape, dtype, layout, device)
        if slope == 1.0 or z_ref(x, w, b).abs().min().item() > 1e-5:
            return x
    raise AssertionError("could not draw an input away from the activation kink")


def affine_params(c, affine, device, dtype=torch.float32):
    if not affine:
        return None, None
    return torch.randn(c, device=device, dtype=dtype), torch.randn(c, device=device, dtype=dtype)


def assert_close(actual, expected, tol, what):
    """max |a - e| <= tol * max(1, max |e|): a scale-relative check (a wrong formula is off by O(1))."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    err = (a - e).abs().max().item() if e.numel() else 0.0
    scale = max(1.0, e.abs().max().item() if e.numel() else 0.0)
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3g}"


# ----------------------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("affine", [True, False])
def test_forward_matches_reference(seed, device, dtype, layout, slope, affine):
    # C = 40: whole channel tiles of the CPU's channels-last loops plus a tail of 8.
    for shape in [(2, 3, 7, 5), (3, 8, 16, 16), (1, 5, 1, 37), (2, 16, 24, 40), (2, 40, 5, 7)]:
        x = make_x(shape, dtype, layout, device, scale=2.0, offset=0.5)
        w, b = affine_params(shape[1], affine, device)
        y = ops.instance_norm_act(x, w, b, 1e-5, slope)
        ref = reference.instance_norm_act(x, w, b, 1e-5, slope)
        assert y.dtype == dtype
        assert y.stride() == ref.stride(), f"{shape} {layout}: strides {y.stride()} != {ref.stride()}"
        atol, rtol = FWD_TOL[dtype]
        torch.testing.assert_close(y, ref, atol=atol, rtol=rtol, msg=lambda m, s=shape: f"{s} {layout}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_forward_larger(seed, device, dtype, layout):
    # Several chunks per plane (NCHW) and per image (channels-last) in both implementations.
    x = make_x((1, 64, 64, 128), dtype, layout, device)
    w, b = affine_params(64, True, device)
    y = ops.instance_norm_act(x, w, b, 1e-5, 0.2)
    ref = reference.instance_norm_act(x, w, b, 1e-5, 0.2)
    atol, rtol = FWD_TOL[dtype]
    torch.testing.assert_close(y, ref, atol=atol, rtol=rtol)
    assert y.stride() == ref.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_statistics_outputs(seed, device, layout):
    x = make_x((2, 6, 9, 11), torch.float32, layout, device, offset=3.0)
    y, mean, rstd = OP(x, None, None, 1e-3, 0.0)
    var, mu = torch.var_mean(x.double(), dim=(2, 3), unbiased=False)
    assert mean.dtype == torch.float32 and rstd.dtype == torch.float32 and mean.shape == (2, 6)
    torch.testing.assert_close(mean.double(), mu, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(rstd.double(), (var + 1e-3).rsqrt(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("offset", [1000.0, 1.0e4])
def test_large_mean_offset_is_stable(seed, device, layout, offset):
    # A naive E[x^2] - E[x]^2 in fp32 loses everything here (offset^2 / var ~ 1e8).
    x = make_x((2, 8, 32, 48), torch.float32, layout, device, offset=offset)
    w, b = affine_params(8, True, device)
    y = ops.instance_norm_act(x, w, b, 1e-5, 1.0)
    exact = z_ref(x, w, b)  # float64 on the same fp32 values
    # fp32 x itself is quantized at ~offset * 6e-8 of a unit std: that bounds any implementation.
    assert_close(y, exact, 2e-3 if offset > 5e3 else 3e-4, "y")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_single_pixel_planes(device, slope, layout):
    # H*W == 1: the variance is 0, xhat is 0, so y = act(b) and no gradient reaches x.
    for shape in [(1, 1, 1, 1), (3, 5, 1, 1)]:
        x = make_x(shape, torch.float32, layout, device).requires_grad_()
        w = torch.randn(shape[1], device=device, requires_grad=True)
        b = torch.randn(shape[1], device=device, requires_grad=True)
        y = ops.instance_norm_act(x, w, b, 1e-5, slope)
        expect = F.leaky_relu(b.detach(), slope) if slope != 1.0 else b.detach()
        torch.testing.assert_close(y, expect.view(1, -1, 1, 1).expand(shape))
        gy = torch.randn(shape, device=device)
        y.backward(gy)
        torch.testing.assert_close(x.grad, torch.zeros_like(x))
        torch.testing.assert_close(w.grad, torch.zeros_like(w))
        g = gy.sum(dim=(0, 2, 3))
        torch.testing.assert_close(b.grad, torch.where(b.detach() > 0, g, g * slope))
        y0 = ops.instance_norm_act(x.detach(), None, None, 1e-5, slope)
        assert (y0 == 0).all()


# ----------------------------------------------------------------------------------------------------
# Backward


def run_grads(fn, x, w, b, gy, slope):
    # detach() keeps x's strides and storage offset (clone() would densify windows and realign offsets).
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = fn(x, w, b, 1e-5, slope)
    y.backward(gy)
    return y, x.grad, (None if w is None else w.grad), (None if b is None else b.grad)


GRAD_TOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("affine", [True, False])
def test_backward_matches_reference(seed, device, dtype, layout, slope, affine):
    for shape in [(2, 3, 7, 5), (3, 8, 12, 16), (1, 4, 1, 33), (2, 40, 5, 7)]:
        w, b = affine_params(shape[1], affine, device)
        x = draw_away_from_kink(shape, dtype, layout, device, w, b, slope)
        gy = make_x(shape, dtype, "nchw", device)
        _, gx, gw, gb = run_grads(ops.instance_norm_act, x, w, b, gy, slope)
        _, rx, rw, rb = run_grads(reference.instance_norm_act, x, w, b, gy, slope)
        assert gx.dtype == dtype and gx.stride() == rx.stride(), (gx.stride(), rx.stride())
        assert_close(gx, rx, GRAD_TOL[dtype], f"{shape} grad_x")
        if affine:
            assert gw.dtype == w.dtype and gb.dtype == b.dtype
            # Parameter grads are fp32 sums over the same inputs in both implementations.
            assert_close(gw, rw, 1e-4 if dtype == torch.float32 else 2e-3, f"{shape} grad_weight")
            assert_close(gb, rb, 1e-4 if dtype == torch.float32 else 2e-3, f"{shape} grad_bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("slope", SLOPES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_matches_nn_modules(seed, device, slope, layout):
    # The pix2pixHD building blocks: InstanceNorm2d(affine=True) followed by ReLU / LeakyReLU / nothing.
    shape = (2, 6, 10, 14)
    norm = torch.nn.InstanceNorm2d(6, affine=True).to(device)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    act = torch.nn.Identity() if slope == 1.0 else torch.nn.LeakyReLU(slope)
    x = draw_away_from_kink(shape, torch.float32, layout, device, norm.weight, norm.bias, slope)
    gy = torch.randn(shape, device=device)

    xr = x.clone().requires_grad_()
    yr = act(norm(xr))
    yr.backward(gy)
    _, gx, gw, gb = run_grads(ops.instance_norm_act, x, norm.weight, norm.bias, gy, slope)
    y = ops.instance_norm_act(x, norm.weight, norm.bias, 1e-5, slope)
    assert_close(y, yr, 1e-5, "y")
    assert_close(gx, xr.grad, 1e-4, "grad_x")
    assert_close(gw, norm.weight.grad, 1e-4, "grad_weight")
    assert_close(gb, norm.bias.grad, 1e-4, "grad_bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_larger(seed, device, dtype):
    # Many chunks per plane/image, in both layouts; slope 1 has no kink, so large inputs compare exactly.
    for layout in ["nchw", "cl"]:
        x = make_x((1, 64, 64, 128), dtype, layout, device)
        w, b = affine_params(64, True, device)
        gy = make_x((1, 64, 64, 128), dtype, "nchw", device)
        _, gx, gw, gb = run_grads(ops.instance_norm_act, x, w, b, gy, 1.0)
        _, rx, rw, rb = run_grads(reference.instance_norm_act, x, w, b, gy, 1.0)
        assert_close(gx, rx, GRAD_TOL[dtype], f"{layout} grad_x")
        assert_close(gw, rw, 1e-4 if dtype == torch.float32 else 2e-3, f"{layout} grad_weight")
        assert_close(gb, rb, 1e-4 if dtype == torch.float32 else 2e-3, f"{layout} grad_bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_many_channels(seed, device, dtype):
    # Channels-last with more channel vectors than one block row (CUDA: gridDim.y > 1, blocks of one pixel
    # row, idle threads past C): 1040 = 260 fp32 vectors / 130 bf16 vectors; 1030 takes the scalar path
    # (1030 columns over 5 blocks). For 1030, grad_y is channels-last at storage offset 1: used in place,
    # misaligned (the scalar path, whatever x's alignment).
    for c in (1040, 1030):
        shape = (2, c, 3, 5)
        w, b = affine_params(c, True, device)
        x = draw_away_from_kink(shape, dtype, "cl", device, w, b, 0.2)
        flat = torch.randn(2 * c * 15 + 1, device=device).to(dtype)
        off = int(c == 1030)
        gy = flat.as_strided(shape, (15 * c, 1, 5 * c, c), off)
        assert gy.is_contiguous(memory_format=torch.channels_last) and gy.storage_offset() == off
        y, gx, gw, gb = run_grads(ops.instance_norm_act, x, w, b, gy, 0.2)
        yr, rx, rw, rb = run_grads(reference.instance_norm_act, x, w, b, gy, 0.2)
        assert y.stride() == yr.stride() and gx.stride() == rx.stride()
        assert_close(y, yr, FWD_TOL[dtype][0], f"{c} y")
        assert_close(gx, rx, GRAD_TOL[dtype], f"{c} grad_x")
        assert_close(gw, rw, 1e-4 if dtype == torch.float32 else 2e-3, f"{c} grad_weight")
        assert_close(gb, rb, 1e-4 if dtype == torch.float32 else 2e-3, f"{c} grad_bias")


@pytest.mark.parametrize("device", DEVICES)
def test_grad_y_in_another_memory_format(seed, device):
    shape = (2, 8, 6, 10)
    w, b = affine_params(8, True, device)
    x = make_x(shape, torch.float32, "nchw", device)
    _, mean, rstd = OP(x, w, b, 1e-5, 0.2)
    gy = torch.randn(shape, device=device)
    ref = BWD(gy, x, mean, rstd, w, b, 0.2, [True, True, True])
    transposed = gy.transpose(2, 3).contiguous().transpose(2, 3)
    for other in (gy.contiguous(memory_format=torch.channels_last), transposed):
        out = BWD(other, x, mean, rstd, w, b, 0.2, [True, True, True])
        for o, r in zip(out, ref, strict=True):
            torch.testing.assert_close(o, r)
    # And the other way round: channels-last x, NCHW grad_y; grad_x follows x's format.
    xc = x.contiguous(memory_format=torch.channels_last)
    gx, _, _ = BWD(gy, xc, mean, rstd, w, b, 0.2, [True, True, True])
    assert gx.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gx, ref[0])


@pytest.mark.parametrize("device", DEVICES)
def test_backward_output_mask(seed, device):
    shape = (2, 4, 5, 6)
    w, b = affine_params(4, True, device)
    x = make_x(shape, torch.float32, "nchw", device)
    _, mean, rstd = OP(x, w, b, 1e-5, 0.0)
    gy = torch.randn(shape, device=device)
    full = BWD(gy, x, mean, rstd, w, b, 0.0, [True, True, True])
    gx, gw, gb = BWD(gy, x, mean, rstd, w, b, 0.0, [False, True, False])
    assert (gx == 0).all() and gx.shape == x.shape  # not needed: zeros, never garbage
    torch.testing.assert_close(gw, full[1])
    assert gb.shape == (0,)
    gx, gw, gb = BWD(gy, x, mean, rstd, None, None, 0.0, [True, True, True])
    assert gw.shape == (0,) and gb.shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_parameter_dtype(seed, device):
    # Autocast case: bf16 activations with fp32 affine parameters (and the reverse).
    for xdt, pdt in [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)]:
        w, b = affine_params(6, True, device, pdt)
        x = draw_away_from_kink((2, 6, 8, 9), xdt, "cl", device, w, b, 0.2)
        gy = make_x((2, 6, 8, 9), xdt, "nchw", device)
        y, gx, gw, gb = run_grads(ops.instance_norm_act, x, w, b, gy, 0.2)
        yr, rx, rw, rb = run_grads(reference.instance_norm_act, x, w, b, gy, 0.2)
        assert y.dtype == xdt and gw.dtype == pdt and gb.dtype == pdt
        assert_close(y, yr, FWD_TOL[xdt][0], "y")
        assert_close(gx, rx, GRAD_TOL[xdt], "grad_x")
        assert_close(gw, rw, 2e-3, "grad_weight")
        assert_close(gb, rb, 2e-3, "grad_bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "cl", "slice"])
def test_gradcheck_fp64(seed, device, layout):
    for slope, affine in [(0.2, True), (0.0, False), (1.0, True)]:
        w, b = affine_params(3, affine, device, torch.float64)
        x = draw_away_from_kink((2, 3, 4, 5), torch.float64, layout, device, w, b, slope)
        # gradcheck perturbs by 1e-6: keep every pre-activation further than that from the kink.
        if slope != 1.0:
            assert z_ref(x, w, b).abs().min() > 1e-5
        args = [x.requires_grad_()] + ([w.requires_grad_(), b.requires_grad_()] if affine else [None, None])

        def fn(x_, w_, b_, slope=slope):
            return ops.instance_norm_act(x_, w_, b_, 1e-5, slope)

        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-5)
    # Statistics of fp64 inputs stay fp64 (the fake kernel says the same).
    _, mean, rstd = OP(x.detach(), None, None, 1e-5, 0.0)
    assert mean.dtype == torch.float64 and rstd.dtype == torch.float64


# ----------------------------------------------------------------------------------------------------
# Empty tensors, errors


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 0, 4, 4)])
def test_empty(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    c = shape[1]
    w = torch.randn(c, device=device, requires_grad=True)
    b = torch.randn(c, device=device, requires_grad=True)
    y = ops.instance_norm_act(x, w, b, 1e-5, 0.2)
    assert y.shape == shape
    _, mean, rstd = OP(x.detach(), None, None, 1e-5, 0.0)
    assert mean.shape == (shape[0], c) and rstd.shape == (shape[0], c)
    y.sum().backward()
    assert x.grad.shape == shape
    torch.testing.assert_close(w.grad, torch.zeros_like(w))
    torch.testing.assert_close(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    # The public API.
    with pytest.raises(ValueError, match=r"x must have shape \[N,C,H,W\]"):
        ops.instance_norm_act(torch.randn(3, 4, 5, device=device))
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64"):
        ops.instance_norm_act(torch.ones(2, 3, 4, 5, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"weight must have shape \[C\] = \[3\]"):
        ops.instance_norm_act(x, torch.ones(4, device=device))
    # The kernels' own checks (what a direct torch.ops call or another frontend hits).
    with pytest.raises(RuntimeError, match=r"x must have shape \[N,C,H,W\]"):
        OP(torch.randn(3, 4, 5, device=device), None, None, 1e-5, 0.0)
    with pytest.raises(RuntimeError, match="x must be float32, float16, bfloat16 or float64"):
        OP(torch.ones(2, 3, 4, 5, dtype=torch.int64, device=device), None, None, 1e-5, 0.0)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[C\] = \[3\]"):
        OP(x, torch.ones(2, 2, device=device), None, 1e-5, 0.0)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[C\] = \[3\]"):
        OP(x, None, torch.ones(5, device=device), 1e-5, 0.0)
    with pytest.raises(RuntimeError, match="bias must be float32"):
        OP(x, None, torch.ones(3, dtype=torch.int32, device=device), 1e-5, 0.0)
    _, mean, rstd = OP(x, None, None, 1e-5, 0.0)
    gy = torch.randn_like(x)
    with pytest.raises(RuntimeError, match="mean must be float32"):
        BWD(gy, x, mean.double(), rstd, None, None, 0.0, [True, False, False])
    with pytest.raises(RuntimeError, match=r"rstd must have shape \[N,C\]"):
        BWD(gy, x, mean, rstd[:1], None, None, 0.0, [True, False, False])
    with pytest.raises(RuntimeError, match="grad_y shape"):
        BWD(gy[:, :2], x, mean, rstd, None, None, 0.0, [True, False, False])
    if device == "cuda":
        with pytest.raises(RuntimeError, match="same device"):
            OP(x, torch.ones(3), None, 1e-5, 0.0)
        with pytest.raises(RuntimeError, match="same device"):
            BWD(gy.cpu(), x, mean, rstd, None, None, 0.0, [True, False, False])


# ----------------------------------------------------------------------------------------------------
# torch.library / torch.compile integration


def sample_args(device):
    w, b = affine_params(4, True, device)
    return [
        (make_x((2, 4, 6, 5), torch.float32, "nchw", device), w, b, 1e-5, 0.2),
        (make_x((2, 4, 6, 5), torch.float32, "cl", device), None, b, 1e-5, 0.0),
        (make_x((1, 4, 8, 8), torch.bfloat16, "cl", device), w, None, 1e-3, 1.0),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(seed, device):
    for x, w, b, eps, slope in sample_args(device):
        torch.library.opcheck(OP.default, (x, w, b, eps, slope))
        torch.library.opcheck(OP.default, (x.requires_grad_(), w, b, eps, slope))
        x = x.detach()
        _, mean, rstd = OP(x, w, b, eps, slope)
        gy = torch.randn_like(x)
        mask = [True, w is not None, b is not None]
        torch.library.opcheck(BWD.default, (gy, x, mean, rstd, w, b, slope, mask))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_matches_eager(seed, device):
    def f(x, w, b):
        y = ops.instance_norm_act(x, w, b, 1e-5, 0.2)
        return ops.instance_norm_relu(y * 1.5, None, b)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    w, b = affine_params(8, True, device)
    x = make_x((2, 8, 12, 10), torch.float32, "cl", device)
    gy = torch.randn(2, 8, 12, 10, device=device)
    outs = []
    for fn in (f, compiled):
        xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
        y = fn(xs, ws, bs)
        y.backward(gy)
        outs.append((y, xs.grad, ws.grad, bs.grad))
    for e, c in zip(*outs, strict=True):
        torch.testing.assert_close(c, e, atol=1e-5, rtol=1e-5)
    assert outs[1][0].stride() == outs[0][0].stride()


@pytest.mark.cuda
@pytest.mark.parametrize("device", DEVICES)
def test_cuda_graph_capture(seed, device):
    # Everything on the current stream, no host sync: capture forward + backward and replay on new data.
    if device != "cuda":
        pytest.skip("CUDA graphs")
    w, b = affine_params(16, True, device)
    x = make_x((2, 16, 32, 40), torch.bfloat16, "cl", device)
    gy = torch.randn_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm up on the side stream (workspace sizes, lazy init)
            y, mean, rstd = OP(x, w, b, 1e-5, 0.2)
            grads = BWD(gy, x, mean, rstd, w, b, 0.2, [True, True, True])
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y, mean, rstd = OP(x, w, b, 1e-5, 0.2)
        grads = BWD(gy, x, mean, rstd, w, b, 0.2, [True, True, True])
    x.copy_(make_x((2, 16, 32, 40), torch.bfloat16, "cl", device))
    gy.copy_(torch.randn_like(gy))
    g.replay()
    torch.cuda.synchronize()
    ye, me, re = OP(x, w, b, 1e-5, 0.2)
    ge = BWD(gy, x, me, re, w, b, 0.2, [True, True, True])
    torch.testing.assert_close(y, ye)
    for a, e in zip(grads, ge, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.cuda
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_cuda_large_plane(seed, device, layout):
    # H*W > 4M: many chunks per plane and 64-bit offsets; fp64 reference on the GPU.
    if device != "cuda":
        pytest.skip("large plane: CUDA only")
    x = make_x((1, 2, 2048, 2100), torch.bfloat16, layout, device, offset=5.0)
    w, b = affine_params(2, True, device)
    gy = make_x((1, 2, 2048, 2100), torch.bfloat16, "nchw", device)
    y, gx, gw, gb = run_grads(ops.instance_norm_act, x, w, b, gy, 1.0)
    yr, rx, rw, rb = run_grads(reference.instance_norm_act, x, w, b, gy, 1.0)
    assert_close(y, yr, 3e-2, "y")
    assert_close(gx, rx, 3e-2, "grad_x")
    assert_close(gw, rw, 2e-3, "grad_weight")
    assert_close(gb, rb, 2e-3, "grad_bias")
