"""The C++ autograd kernels (csrc/autograd/autograd.cpp): which inputs get gradients, double backward,
non-differentiable inputs and outputs, autocast. Gradient values are also covered per op (gradcheck and
comparisons with the references in the op test files)."""

import warnings

import pytest
import torch

from pix2pixhd_fast import ops, reference

from .conftest import DEVICES

NS = "pix2pixhd_fast::"
OPS = ("instance_boundary", "encode_input", "instance_avg_pool", "instance_norm_act", "instance_norm_act_backward")


@pytest.mark.parametrize("name", OPS)
def test_autograd_kernels_registered_in_cpp(name):
    assert ops.has_ops()
    assert torch._C._dispatch_has_kernel_for_dispatch_key(NS + name, "Autograd"), name


def _norm_inputs(device, has_w, has_b, wants):
    """fp64 x [2,3,4,5], optional weight/bias [3]; `wants` = which of (x, w, b) require grad."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=device) * 2 + 1
    w = torch.rand(3, dtype=torch.float64, device=device) + 0.5 if has_w else None
    b = torch.randn(3, dtype=torch.float64, device=device) if has_b else None
    ts = [x, w, b]
    for t, want in zip(ts, wants, strict=True):
        if t is not None:
            t.requires_grad_(want)
    return ts


# (has_w, has_b, which of x, w, b require grad): every combination the output_mask must follow, including
# bias without weight (its needs_input_grad index shifts) and x without grad.
NORM_COMBOS = [
    (True, True, (True, True, True)),
    (True, True, (False, True, True)),
    (True, True, (False, False, True)),
    (True, True, (True, False, False)),
    (False, True, (False, False, True)),
    (False, True, (True, False, True)),
    (True, False, (False, True, False)),
    (False, False, (True, False, False)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("has_w", "has_b", "wants"), NORM_COMBOS)
def test_norm_gradients_of_the_inputs_that_want_them(seed, device, has_w, has_b, wants):
    x, w, b = _norm_inputs(device, has_w, has_b, wants)
    ins = [t for t in (x, w, b) if t is not None and t.requires_grad]
    gy = torch.randn_like(x)
    got = torch.autograd.grad(ops.instance_norm_act(x, w, b, 1e-5, 0.2), ins, gy)
    want = torch.autograd.grad(reference.instance_norm_act(x, w, b, 1e-5, 0.2), ins, gy)
    for g, r, t in zip(got, want, ins, strict=True):
        assert g.dtype == t.dtype and g.shape == t.shape
        torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_norm_statistics_and_no_grad_calls_are_plain(seed, device):
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    y, mean, rstd = torch.ops.pix2pixhd_fast.instance_norm_act(x, None, None, 1e-5, 0.0)
    assert y.requires_grad and y.grad_fn is not None
    assert not mean.requires_grad and not rstd.requires_grad
    with torch.no_grad():
        assert ops.instance_norm_act(x).grad_fn is None
    assert not ops.instance_norm_act(x.detach()).requires_grad
    # Only the statistics used downstream: nothing flows back, and that is not an error.
    assert torch.autograd.grad(mean.sum() + y.sum() * 0, x)[0].abs().max() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_norm_double_backward_equals_reference(seed, device):
    x, w, b = _norm_inputs(device, True, True, (True, True, True))
    y = ops.instance_norm_act(x, w, b, 1e-5, 0.2)
    gx, gw = torch.autograd.grad((y * y).sum(), (x, w), create_graph=True)
    # First-order gradients under create_graph=True are right ...
    yr = reference.instance_norm_act(x, w, b, 1e-5, 0.2)
    rx, rw = torch.autograd.grad((yr * yr).sum(), (x, w), create_graph=True)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    # ... and so are their gradients (not zeros).
    second = torch.autograd.grad((gx * gx).sum() + gw.sum(), (x, w, b))
    second_ref = torch.autograd.grad((rx * rx).sum() + rw.sum(), (x, w, b))
    for got, want in zip(second, second_ref, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_pool_double_backward_and_non_differentiable_ids(seed, device):
    inst = torch.randint(-2, 3, (2, 1, 5, 6), device=device) * 70001
    feat = torch.randn(2, 3, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda f: ops.instance_avg_pool(f, inst), (feat,))
    # Float ids that require grad: no gradient for them, and feat without grad gives a plain output.
    ids = inst.double().requires_grad_()
    out = ops.instance_avg_pool(feat, ids)
    gf, gi = torch.autograd.grad(out.sum(), (feat, ids), allow_unused=True)
    assert gi is None
    torch.testing.assert_close(gf, torch.ones_like(feat))  # pooling preserves each instance's sum
    assert not ops.instance_avg_pool(feat.detach(), ids).requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_inst", [True, False])
def test_encode_input_gradient_is_the_feat_slice(seed, device, with_inst):
    nc = 5
    label = torch.randint(0, nc, (2, 1, 6, 7), device=device)
    inst = torch.randint(0, 3, (2, 1, 6, 7), device=device) if with_inst else None
    feat = torch.randn(2, 3, 6, 7, device=device, requires_grad=True)
    out = ops.encode_input(label, inst, nc, feat, torch.bfloat16, torch.channels_last)
    g = torch.randn(out.shape, device=device, dtype=torch.bfloat16)
    (gf,) = torch.autograd.grad(out, feat, g)
    assert gf.dtype == torch.float32  # cast back to feat's dtype
    torch.testing.assert_close(gf, g[:, nc + with_inst :].float(), atol=0, rtol=0)
    f64 = feat.detach().double().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda f: ops.encode_input(label, inst, nc, f, torch.float64), (f64,))


@pytest.mark.parametrize("device", DEVICES)
def test_ids_that_require_grad_give_plain_outputs(seed, device):
    """Float ids are legal input; they require grad only by accident. The id-only outputs do not."""
    ids = torch.randint(0, 3, (1, 1, 6, 6), device=device).float().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # autograd's "no autograd kernel" fallback would warn
        edges = ops.instance_boundary(ids)
        onehot = ops.encode_input(ids, ids, 3)
    assert not edges.requires_grad and not onehot.requires_grad
    torch.testing.assert_close(edges, reference.get_edges(ids.detach()))


def test_autocast_cpu_bf16():
    """Autocast has no rule for the custom ops: they run in their inputs' dtypes, as without autocast, and
    differentiate there (bf16 activations from a conv, fp32 parameters)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    w = torch.rand(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = ops.instance_norm_act(h, w, b, 1e-5, 0.2)
        y32 = ops.instance_norm_act(x, None, None)  # fp32 input stays fp32
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16 and y32.dtype == torch.float32
    y.float().square().sum().backward()
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.abs().sum() > 0
    # The same gradients as the reference on the same bf16 activations.
    hr = h.detach().requires_grad_()
    wr, br = w.detach().requires_grad_(), b.detach().requires_grad_()
    reference.instance_norm_act(hr, wr, br, 1e-5, 0.2).float().square().sum().backward()
    torch.testing.assert_close(w.grad, wr.grad, atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(b.grad, br.grad, atol=5e-2, rtol=2e-2)
