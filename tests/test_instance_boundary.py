"""instance_boundary: the compiled kernels against reference.get_edges on random instance maps."""

import pytest
import torch

from pix2pixhd_fast import ops, reference

from .conftest import DEVICES

OP = torch.ops.pix2pixhd_fast.instance_boundary.default if ops.has_ops() else None

ID_DTYPES = [
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
]
OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.bool]
# 1x1, single rows/columns, odd sizes, widths that are not multiples of the GPU's 4/8/16-pixel groups.
SHAPES = [(1, 1, 1), (1, 1, 7), (1, 7, 1), (2, 5, 9), (3, 33, 17), (1, 2, 2), (2, 16, 64), (1, 19, 130)]


def _offset(dtype: torch.dtype) -> int:
    """A base id that exercises the dtype's range (negative, > 65535, fp16-inexact)."""
    return {torch.uint8: 200, torch.int8: -60, torch.int16: -30000, torch.int32: 70000, torch.int64: -(2**40)}.get(
        dtype, 26001
    )


def rand_ids(n, h, w, dtype, device="cpu", blocky=True):
    """Random instance map [N,H,W]: blocks of random size (Cityscapes-like) or fully random pixels."""
    if blocky:
        bh, bw = torch.randint(1, 6, (2,)).tolist()
        small = torch.randint(0, 6, (n, -(-h // bh), -(-w // bw)))
        ids = small.repeat_interleave(bh, 1).repeat_interleave(bw, 2)[:, :h, :w]
    else:
        ids = torch.randint(0, 3, (n, h, w))  # few values: equal neighbours are common too
    return (ids + _offset(dtype)).to(dtype).to(device)


def expected(inst, dtype):
    return reference.instance_boundary(inst.cpu(), dtype)


def test_has_ops():
    assert ops.has_ops(), "compiled library not loaded: the kernels are not under test"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("id_dtype", ID_DTYPES)
def test_matches_reference(device, id_dtype, seed):
    for n, h, w in SHAPES:
        for blocky in (True, False):
            inst = rand_ids(n, h, w, id_dtype, device, blocky)
            for out_dtype in OUT_DTYPES:
                got = ops.instance_boundary(inst, out_dtype)
                assert got.shape == (n, 1, h, w) and got.dtype == out_dtype and got.is_contiguous()
                assert got.device.type == device
                torch.testing.assert_close(got.cpu(), expected(inst, out_dtype), rtol=0, atol=0)
            # [N,1,H,W] input gives the same map as [N,H,W].
            torch.testing.assert_close(ops.instance_boundary(inst.unsqueeze(1)), ops.instance_boundary(inst))


@pytest.mark.parametrize("device", DEVICES)
def test_ids_compared_in_own_type(device):
    # 26001 and 26002 collapse in fp16; 2**40 + 1 and 2**40 collapse in fp32; negative and > 65535 ids.
    cases = [
        (torch.int32, [26001, 26002]),
        (torch.float32, [26001, 26002]),
        (torch.float64, [2.0**40, 2.0**40 + 1]),
        (torch.int64, [2**40, 2**40 + 1]),
        (torch.int64, [-(2**62), -(2**62) + 1]),
        (torch.int32, [70000, 70000 + 65536]),
        (torch.int16, [-1, 1]),
        (torch.uint8, [0, 255]),
    ]
    for dtype, (a, b) in cases:
        inst = torch.tensor([[[a, a, b, b], [a, a, b, b]]], dtype=dtype, device=device)
        got = ops.instance_boundary(inst).cpu()
        assert got.tolist() == [[[[0, 1, 1, 0], [0, 1, 1, 0]]]], (dtype, a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_misaligned(device, seed):
    base = rand_ids(2, 21, 34, torch.int32, device)
    views = [
        base.transpose(1, 2),  # [2,34,21] strided
        base[:, ::2, 1::3],  # sliced
        base.unsqueeze(1).contiguous(memory_format=torch.channels_last),
        base[:1].expand(3, -1, -1),  # stride 0 batch
        base.flatten()[1:].narrow(0, 0, 2 * 20 * 33).view(2, 20, 33),  # storage offset: unaligned rows
        base.double().flatten()[3:].narrow(0, 0, 64 * 7).view(1, 64, 7),
    ]
    for v in views:
        for out_dtype in (torch.float32, torch.float16, torch.uint8):
            torch.testing.assert_close(ops.instance_boundary(v, out_dtype).cpu(), expected(v, out_dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_large_map(device, seed):
    inst = rand_ids(2, 130, 257, torch.int64, device)
    torch.testing.assert_close(ops.instance_boundary(inst, torch.bfloat16).cpu(), expected(inst, torch.bfloat16))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 1, 4, 4), (2, 1, 0, 5), (2, 1, 5, 0), (0, 3, 3)])
def test_empty(device, shape):
    inst = torch.zeros(shape, dtype=torch.int32, device=device)
    out = OP(inst, torch.float32)
    n, h, w = shape[0], shape[-2], shape[-1]
    assert out.shape == (n, 1, h, w) and out.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, seed):
    samples = [
        (rand_ids(2, 5, 9, torch.int32, device), torch.float32),
        (rand_ids(1, 8, 8, torch.uint8, device).unsqueeze(1), torch.bfloat16),
        (rand_ids(2, 6, 7, torch.float32, device).transpose(1, 2), torch.bool),
        (rand_ids(1, 3, 4, torch.int64, device), torch.float64),
    ]
    for inst, dtype in samples:
        torch.library.opcheck(OP, (inst, dtype))


def test_compile_fullgraph(seed):
    inst = rand_ids(2, 12, 20, torch.int32)
    f = torch.compile(lambda t: ops.instance_boundary(t, torch.float16) * 2, fullgraph=True)
    torch.testing.assert_close(f(inst), expected(inst, torch.float16) * 2)


def test_errors_cpu():
    frac = torch.tensor([[[1.0, 2.5], [3.0, 4.0]]])
    with pytest.raises(RuntimeError, match="fractional"):
        OP(frac, torch.float32)
    with pytest.raises(RuntimeError, match="fractional"):
        OP(torch.tensor([[[1.0, float("nan")]]], dtype=torch.float64), torch.float32)
    with pytest.raises(RuntimeError, match="fractional"):  # the Python API on CPU: the kernel's check
        ops.instance_boundary(frac)
    inst = torch.zeros(2, 3, 4, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=r"\[N,1,H,W\] or \[N,H,W\]"):
        OP(inst[0], torch.float32)
    with pytest.raises(RuntimeError, match=r"\[N,1,H,W\] or \[N,H,W\]"):
        OP(torch.zeros(2, 2, 3, 4, dtype=torch.int32), torch.float32)
    with pytest.raises(RuntimeError, match=r"\[N,1,H,W\] or \[N,H,W\]"):
        OP(torch.zeros(1, 1, 1, 3, 4, dtype=torch.int32), torch.float32)
    with pytest.raises(RuntimeError, match="unsupported output dtype"):
        OP(inst, torch.int32)
    with pytest.raises(RuntimeError, match="integer ids"):
        OP(inst.bool(), torch.float32)
    with pytest.raises(TypeError, match="unsupported output dtype"):
        ops.instance_boundary(inst, torch.int64)
    with pytest.raises(ValueError, match=r"\[N,1,H,W\] or \[N,H,W\]"):
        ops.instance_boundary(inst[0])


@pytest.mark.parametrize("device", [p for p in DEVICES if not isinstance(p, str)])
def test_errors_cuda(device):
    frac = torch.tensor([[[1.0, 2.5]]], device=device)
    with pytest.raises(ValueError, match="fractional"):  # checked by the wrapper (check=True)
        ops.instance_boundary(frac)
    # check=False: no sync, no device assert; the kernel compares the floats as stored.
    torch.testing.assert_close(ops.instance_boundary(frac, check=False).cpu(), torch.ones(1, 1, 1, 2))
    with pytest.raises(RuntimeError, match="unsupported output dtype"):
        OP(torch.zeros(1, 2, 2, dtype=torch.int32, device=device), torch.int32)
