"""instance_avg_pool: the compiled kernels against the pure-PyTorch references (scatter_reduce, the loop)."""

import pytest
import torch

from pix2pixhd_fast import ops, reference

from .conftest import DEVICES

OP = torch.ops.pix2pixhd_fast.instance_avg_pool.default


def rect_ids(n, h, w, pool, device="cpu", dtype=torch.int64, rects=12):
    """[N,1,H,W] piecewise-constant map: a background id, then rectangles painted with ids from ``pool``."""
    pool = torch.as_tensor(pool, dtype=torch.int64)
    inst = torch.empty(n, 1, h, w, dtype=torch.int64)
    for b in range(n):
        inst[b] = pool[torch.randint(len(pool), ())]
        for _ in range(rects):
            y0, x0 = torch.randint(h, ()).item(), torch.randint(w, ()).item()
            y1 = y0 + torch.randint(1, max(2, h // 2), ()).item()
            x1 = x0 + torch.randint(1, max(2, w // 2), ()).item()
            inst[b, 0, y0:y1, x0:x1] = pool[torch.randint(len(pool), ())]
    return inst.to(dtype).to(device)


def expected(feat, inst):
    """The scatter_reduce reference in float64, cast to feat's dtype."""
    return reference.instance_avg_pool_scatter(feat.double(), inst).to(feat.dtype)


def check(feat, inst, atol=1e-5, rtol=1e-5):
    out = OP(feat, inst)
    ref = expected(feat, inst)
    assert out.shape == feat.shape and out.dtype == feat.dtype
    # The op's format rule (mirrored by the fake kernel; opcheck compares exact strides there).
    fmt = torch.channels_last if feat.size(1) > 1 and feat.stride(1) == 1 else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt), out.stride()
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    return out


def test_has_ops():
    assert ops.has_ops(), "compiled library not loaded: the tests below would only test the reference"


SHAPES = [(1, 1, 1, 1), (1, 3, 1, 1), (1, 3, 5, 7), (2, 4, 33, 17), (3, 2, 64, 65), (2, 5, 1, 130), (1, 3, 37, 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_matches_reference(seed, device, shape, layout):
    n, c, h, w = shape
    feat = torch.randn(n, c, h, 2 * w if layout == "strided" else w, device=device)
    if layout == "strided":
        feat = feat[..., ::2]
        assert not feat.is_contiguous() or w == 1
    elif layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    inst = rect_ids(n, h, w, [-7, 0, 3, 26001, 26002, 10**6], device=device)
    check(feat, inst)
    check(feat, inst[:, 0])  # [N,H,W] ids


@pytest.mark.parametrize("device", DEVICES)
def test_matches_loop(seed, device):
    feat = torch.randn(2, 3, 19, 23, device=device)
    inst = rect_ids(2, 19, 23, [1, 2, 5, 9, 200], device=device, dtype=torch.int32)
    torch.testing.assert_close(OP(feat, inst), reference.instance_avg_pool_loop(feat, inst), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_pools_per_image(seed, device):
    # Same ids in every image, different features: each image must average over its own pixels only.
    n = 4
    inst = rect_ids(1, 40, 50, [0, 1, 2, 3], device=device).expand(n, 1, 40, 50).contiguous()
    feat = torch.randn(n, 3, 40, 50, device=device) + torch.arange(n, device=device).view(n, 1, 1, 1) * 10
    out = check(feat, inst)
    for b in range(n):
        torch.testing.assert_close(out[b : b + 1], OP(feat[b : b + 1], inst[b : b + 1]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_one_instance(seed, device, layout):
    feat = torch.randn(2, 5, 70, 90, device=device)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    inst = torch.full((2, 1, 70, 90), 42, dtype=torch.int32, device=device)
    out = check(feat, inst)
    torch.testing.assert_close(out, feat.mean(dim=(2, 3), keepdim=True).expand_as(feat), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_every_pixel_its_own_id(seed, device, layout):
    # 4096 instances (64x64, ids = a shuffled arange): pooling is the identity, exactly.
    feat = torch.randn(2, 3, 64, 64, device=device)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    inst = torch.stack([torch.randperm(64 * 64) for _ in range(2)]).view(2, 1, 64, 64).to(device)
    torch.testing.assert_close(OP(feat, inst), feat, atol=0, rtol=0)
    torch.testing.assert_close(
        OP(feat, torch.arange(64 * 64, device=device).view(1, 1, 64, 64).expand(2, 1, 64, 64)), feat, atol=0, rtol=0
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("channels", [3, 9])
def test_thousands_of_instances(seed, device, layout, channels):
    # Random pixels from 3000 ids: about a thousand distinct ids per 1024-pixel GPU tile (with 9 channels
    # the tile sums no longer fit in shared memory), and many ids shared by many tiles.
    feat = torch.randn(2, channels, 96, 120, device=device)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    inst = torch.randint(-1500, 1500, (2, 1, 96, 120), device=device)
    check(feat, inst)


@pytest.mark.parametrize("device", DEVICES)
def test_large_map_many_tiles(seed, device):
    # > 32 tiles per image and regions crossing many of them (the GPU merge groups tiles by 32).
    feat = torch.randn(1, 2, 300, 700, device=device)
    inst = rect_ids(1, 300, 700, list(range(60)), device=device, dtype=torch.int32, rects=60)
    check(feat, inst)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [100, 256, 300])
def test_channels_last_many_channels(seed, device, channels):
    # The GPU's NHWC tile paths: C <= 256 (several pixel rows per block) and C > 256 (a loop over channel
    # blocks); few ids (tile sums in shared memory) and hundreds per tile (sums in the global partials).
    feat = torch.randn(2, channels, 20, 60, device=device).contiguous(memory_format=torch.channels_last)
    check(feat, rect_ids(2, 20, 60, [-3, 0, 5, 2**40], device=device))
    check(feat, torch.randint(0, 400, (2, 1, 20, 60), device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("hw", [(3, 7), (1, 1023), (32, 32), (1, 1025), (41, 50)])
def test_tile_boundaries(seed, device, layout, hw):
    # H*W below, at and just above the GPU tile (1024 pixels): the per-tile partials are strided by
    # min(H*W, 1024), and the last tile may hold a single pixel. Several images, random ids, many channels.
    h, w = hw
    feat = torch.randn(3, 40, h, w, device=device)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    check(feat, torch.randint(-50, 50, (3, 1, h, w), device=device))
    check(feat, torch.stack([torch.randperm(h * w) for _ in range(3)]).view(3, 1, h, w).to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_float64_vectorized(seed, device, layout):
    # fp64 with H*W % 4 == 0 (the GPU's 32-byte vector path) and fp64 sums, few and many ids per tile.
    feat = torch.randn(2, 3, 32, 40, dtype=torch.float64, device=device)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    check(feat, rect_ids(2, 32, 40, [1, 2, 3, -(2**40)], device=device), atol=1e-12, rtol=1e-12)
    check(feat, torch.randint(0, 3000, (2, 1, 32, 40), device=device), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_misaligned_storage(seed, device, dtype):
    # A one-element storage offset: contiguous but not vector-aligned, so the GPU kernels must take their
    # scalar path although H*W % 4 == 0 would otherwise select vector loads and stores.
    n, c, h, w = 2, 3, 16, 24
    feat = torch.randn(n * c * h * w + 1, device=device).to(dtype)[1:].view(n, c, h, w)
    assert feat.is_contiguous() and feat.data_ptr() % 8 != 0
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    check(feat, rect_ids(n, h, w, [0, 1, 2, 9], device=device), atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, lo, hi", [(torch.uint8, 0, 256), (torch.int8, -128, 128), (torch.int16, -32768, 32768)]
)
def test_small_id_dtypes_all_values(seed, device, dtype, lo, hi):
    # Every (or nearly every) value of the id dtype in each image, random pixels over several GPU tiles: the
    # GPU table is clamped by the dtype's value range (uint8: 385 slots for 256 ids), not by the tile counts.
    inst = torch.randint(lo, hi, (2, 1, 64, 80))
    inst.view(2, -1)[:, : min(hi - lo, 64 * 80)] = torch.arange(lo, lo + min(hi - lo, 64 * 80))
    feat = torch.randn(2, 3, 64, 80, device=device)
    check(feat, inst.to(dtype).to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_images_with_different_id_counts(seed, device):
    # Per-image GPU tables of different sizes: one id, thousands of ids with INT64_MIN among them (its
    # reserved slot sits at the image's own capacity), a few ids. Each image must pool only its own pixels.
    i64 = torch.iinfo(torch.int64)
    inst = torch.empty(3, 1, 48, 64, dtype=torch.int64)
    inst[0] = 7
    inst[1] = torch.randint(-2000, 2000, (1, 48, 64))
    inst[1, 0, ::5, ::3] = i64.min
    inst[2] = rect_ids(1, 48, 64, [i64.min, 7, 8])[0]
    feat = torch.randn(3, 4, 48, 64, device=device)
    check(feat, inst.to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_huge_negative_sparse_ids(seed, device):
    i64 = torch.iinfo(torch.int64)
    pool = [
        i64.min,
        i64.min + 1,
        i64.max,
        -(2**40) - 1,
        -(2**40),
        2**40,
        2**40 + 1,
        -1,
        0,
        65536,
        65537,
        2**31,
        -(2**31) - 1,
    ]
    feat = torch.randn(2, 3, 45, 77, device=device)
    inst = rect_ids(2, 45, 77, pool, device=device, rects=20)
    check(feat, inst)
    # ids equal to INT64_MIN only (the value the GPU table keeps in its reserved slot)
    check(feat, torch.full((2, 1, 45, 77), i64.min, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, pool",
    [
        (torch.uint8, [0, 1, 7, 200, 255]),
        (torch.int8, [-128, -1, 0, 5, 127]),
        (torch.int16, [-32768, -2, 0, 26001, 26002]),
        (torch.int32, [-(2**31), -5, 0, 26001, 26002, 2**31 - 1]),
        (torch.int64, [-(2**40), 3, 26001, 26002, 2**62]),
        (torch.float16, [-2048, -1, 0, 1, 2, 1024]),
        (torch.bfloat16, [-256, -1, 0, 1, 2, 128]),
        (torch.float32, [-(2**24), -1, 0, 26001, 26002, 2**24]),
        (torch.float64, [-(2**50), -1, 0, 26001, 26002, 2**50]),
    ],
)
def test_id_dtypes(seed, device, dtype, pool):
    feat = torch.randn(2, 3, 31, 43, device=device)
    inst = rect_ids(2, 31, 43, pool, device=device, dtype=torch.int64)
    out = check(feat, inst.to(dtype))
    # Ids compare by value, exactly: the same map as int64 gives the same result.
    torch.testing.assert_close(out, OP(feat, inst), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_float_negative_zero(seed, device):
    feat = torch.randn(1, 2, 8, 8, device=device)
    inst = torch.where(torch.rand(1, 1, 8, 8) < 0.5, 0.0, -0.0).to(device)  # -0.0 == 0.0: one instance
    assert (inst.signbit().sum() > 0) and (inst.signbit().sum() < 64)
    torch.testing.assert_close(OP(feat, inst), feat.mean(dim=(2, 3), keepdim=True).expand_as(feat))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_half_precision(seed, device, dtype, layout):
    feat = torch.randn(2, 4, 50, 66, device=device).to(dtype)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    inst = rect_ids(2, 50, 66, list(range(10)), device=device)
    out = OP(feat, inst)
    assert out.dtype == dtype
    ref = reference.instance_avg_pool_scatter(feat.float(), inst)  # fp32 accumulation, then one rounding
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(seed, device):
    feat = torch.randn(2, 3, 6, 7, device=device, dtype=torch.float64, requires_grad=True)
    inst = rect_ids(2, 6, 7, [1, 2, 3], device=device, rects=3)
    assert torch.autograd.gradcheck(lambda x: ops.instance_avg_pool(x, inst), (feat,))
    feat_cl = feat.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.instance_avg_pool(x, inst), (feat_cl,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(seed, device):
    inst = rect_ids(2, 9, 11, [4, 5, 6], device=device, dtype=torch.int32, rects=4)
    for feat in (
        torch.randn(2, 3, 9, 11, device=device, requires_grad=True),
        torch.randn(2, 3, 9, 11, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(),
    ):
        torch.library.opcheck(OP, (feat, inst))
        torch.library.opcheck(OP, (feat.detach(), inst[:, 0]))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_matches_eager(seed, device):
    torch._dynamo.reset()
    inst = rect_ids(2, 16, 20, [0, 1, 2, 7], device=device, rects=5)
    w = torch.randn(3, device=device)

    def f(x, inst):
        return (ops.instance_avg_pool(x * 2, inst, check=False) * w.view(1, 3, 1, 1)).sin()

    x1 = torch.randn(2, 3, 16, 20, device=device, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1 = f(x1, inst)
    y2 = torch.compile(f, fullgraph=True)(x2, inst)
    torch.testing.assert_close(y2, y1)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x2.grad, x1.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("device", DEVICES[1:])
def test_cuda_graph_replay(seed, device):
    # No host sync inside the op: it captures, and replays on new data (pools are computed on the device).
    feat = torch.randn(2, 3, 40, 60, device=device)
    inst = rect_ids(2, 40, 60, list(range(8)), device=device)
    torch.cuda.synchronize()
    OP(feat, inst)  # warm up (workspace in the caching allocator)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = OP(feat, inst)
    for _ in range(2):
        feat.copy_(torch.randn_like(feat))
        inst.copy_(rect_ids(2, 40, 60, [-3, 5, 2**40, 9], device=device))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expected(feat, inst), atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("device", DEVICES[1:])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_full_resolution(seed, device, layout):
    feat = torch.randn(1, 3, 1024, 2048, device=device)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    inst = rect_ids(1, 1024, 2048, list(range(26000, 26060)), device=device, dtype=torch.int32, rects=60)
    check(feat, inst, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0)])
def test_empty(device, shape):
    feat = torch.randn(shape, device=device)
    inst = torch.zeros(shape[0], 1, shape[2], shape[3], dtype=torch.int64, device=device)
    out = OP(feat, inst)
    assert out.shape == feat.shape
    assert ops.instance_avg_pool(feat, inst).shape == feat.shape


@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    feat = torch.randn(1, 3, 4, 5, device=device)
    inst = torch.zeros(1, 1, 4, 5, device=device)
    frac = inst.clone()
    frac[0, 0, 2, 3] = 0.5
    # The public API checks in Python on CUDA (one sync, skippable) and in the kernel on the CPU.
    with pytest.raises((ValueError, RuntimeError), match="fractional"):
        ops.instance_avg_pool(feat, frac)
    if device == "cpu":
        with pytest.raises(RuntimeError, match="fractional"):
            OP(feat, frac)
        with pytest.raises(RuntimeError, match="fractional"):
            OP(feat, torch.full_like(inst, float("nan")))
    with pytest.raises(RuntimeError, match="must share N, H and W"):
        OP(feat, torch.zeros(1, 1, 4, 6, device=device))
    with pytest.raises(ValueError, match="must share N, H and W"):
        ops.instance_avg_pool(feat, torch.zeros(2, 1, 4, 5, device=device))
    with pytest.raises(RuntimeError, match=r"\[N,1,H,W\] or \[N,H,W\]"):
        OP(feat, torch.zeros(1, 2, 4, 5, device=device))
    with pytest.raises(RuntimeError, match=r"feat must have shape \[N,C,H,W\]"):
        OP(feat[0], inst)
    with pytest.raises(RuntimeError, match="feat must be float32"):
        OP(torch.ones(1, 3, 4, 5, dtype=torch.int32, device=device), inst)
    with pytest.raises(TypeError, match="feat must be float32"):
        ops.instance_avg_pool(torch.ones(1, 3, 4, 5, dtype=torch.int64, device=device), inst)
    with pytest.raises(RuntimeError, match="inst must hold integer ids"):
        OP(feat, inst.bool())
    if device != "cpu":
        with pytest.raises(RuntimeError, match="same device"):
            OP(feat, inst.cpu())


@pytest.fixture
def deterministic_mode():
    """torch.use_deterministic_algorithms(True) for the test, the previous setting restored afterwards."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _bits(t):
    """The tensor's bit patterns (same-size integer view: works for any strides), for bitwise comparisons."""
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64}.get(t.dtype, torch.int16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_mode_is_bitwise_reproducible(seed, device, layout, dtype, deterministic_mode):
    # Big regions spanning many tiles and many channels: float atomics would add in a different order each run.
    n, c, h, w = 2, 6, 200, 300
    feat = torch.randn(n, c, h, w, device=device).to(dtype)
    if layout == "channels_last":
        feat = feat.contiguous(memory_format=torch.channels_last)
    inst = rect_ids(n, h, w, [7, -2, 2**40, 26001, 26002], device=device, dtype=torch.int32, rects=6)
    torch.use_deterministic_algorithms(False)
    ref = expected(feat, inst)  # the scatter reference need not support the mode
    torch.use_deterministic_algorithms(True)
    outs = [OP(feat, inst) for _ in range(4)]
    for o in outs[1:]:
        assert torch.equal(_bits(o), _bits(outs[0]))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(outs[0], ref, atol=tol, rtol=tol)
    # The backward is the same pooling of the gradient: reproducible too.
    grads = []
    for _ in range(2):
        x = feat.detach().clone().requires_grad_(True)
        ops.instance_avg_pool(x, inst).backward(torch.ones_like(x) * 0.1 + x.detach())
        grads.append(x.grad)
    assert torch.equal(_bits(grads[0]), _bits(grads[1]))


@pytest.mark.cuda
@pytest.mark.parametrize("device", DEVICES[1:])
@pytest.mark.parametrize("mode", ["fast", "deterministic"])
def test_cuda_batch_beyond_grid_limit(seed, device, mode):
    # The tiled kernels put the image index in grid.y (at most 65535): larger batches run as several launches.
    n = 65535 + 77
    feat = torch.randn(n, 2, 3, 4, device=device)
    inst = torch.randint(-2, 3, (n, 1, 3, 4), device=device)
    ref = expected(feat, inst)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(mode == "deterministic")
    try:
        out = OP(feat, inst)
    finally:
        torch.use_deterministic_algorithms(was)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[-77:], ref[-77:], atol=1e-5, rtol=1e-5)  # the images of the second launch
