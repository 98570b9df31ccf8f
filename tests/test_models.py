"""pix2pixHD networks: reference key layout, fast vs reference-op parity, memory formats, autocast, compile.

The expected state_dict keys and shapes are derived here from the reference architecture's rules (a layer
list per Sequential, written independently of the implementation), so a shifted index, a renamed module or
a wrong channel count fails the key-for-key comparison.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pix2pixhd_fast import reference
from pix2pixhd_fast.models import (
    Encoder,
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    ResnetBlock,
    define_D,
    define_G,
    get_norm_layer,
    weights_init,
)
from pix2pixhd_fast.nn import InstanceNormAct, InstanceNormActPad

# ----------------------------------------------------------------------------------------------------
# Expected layouts. A layer is a tuple: ("conv", cin, cout, k), ("convT", cin, cout, k), ("norm", c),
# ("res", c, padding_type), or a parameter-free ("pad",) / ("act",) / ("tanh",) / ("sig",).


def _res_layers(c, padding):
    pad = [] if padding == "zero" else [("pad",)]
    return pad + [("conv", c, c, 3), ("norm", c), ("act",)] + pad + [("conv", c, c, 3), ("norm", c)]


def _global_layers(input_nc, output_nc, ngf, n_down, n_blocks, padding="reflect"):
    layers = [("pad",), ("conv", input_nc, ngf, 7), ("norm", ngf), ("act",)]
    c = ngf
    for _ in range(n_down):
        layers += [("conv", c, 2 * c, 3), ("norm", 2 * c), ("act",)]
        c *= 2
    layers += [("res", c, padding)] * n_blocks
    for _ in range(n_down):
        layers += [("convT", c, c // 2, 3), ("norm", c // 2), ("act",)]
        c //= 2
    return layers + [("pad",), ("conv", ngf, output_nc, 7), ("tanh",)]


def _expected(prefix, layers, norm):
    """[(key, shape)] of a Sequential holding ``layers`` under ``prefix`` (e.g. 'model.')."""
    out = []
    for i, layer in enumerate(layers):
        p = f"{prefix}{i}."
        if layer[0] == "conv":
            _, cin, cout, k = layer
            out += [(p + "weight", (cout, cin, k, k)), (p + "bias", (cout,))]
        elif layer[0] == "convT":
            _, cin, cout, k = layer
            out += [(p + "weight", (cin, cout, k, k)), (p + "bias", (cout,))]
        elif layer[0] == "norm" and norm == "batch":
            c = layer[1]
            out += [(p + n, (c,)) for n in ("weight", "bias", "running_mean", "running_var")]
            out.append((p + "num_batches_tracked", ()))
        elif layer[0] == "res":
            out += _expected(p + "conv_block.", _res_layers(layer[1], layer[2]), norm)
    return out


def _expected_local(input_nc, output_nc, ngf, n_down, n_blocks, n_local, n_blocks_local, padding, norm):
    ngf_global = ngf * 2**n_local
    out = _expected("model.", _global_layers(input_nc, output_nc, ngf_global, n_down, n_blocks)[:-3], norm)
    for n in range(1, n_local + 1):
        c = ngf * 2 ** (n_local - n)
        front = [("pad",), ("conv", input_nc, c, 7), ("norm", c), ("act",), ("conv", c, 2 * c, 3), ("norm", 2 * c)]
        back = [("res", 2 * c, padding)] * n_blocks_local + [("convT", 2 * c, c, 3), ("norm", c), ("act",)]
        if n == n_local:
            back += [("pad",), ("conv", ngf, output_nc, 7), ("tanh",)]
        out += _expected(f"model{n}_1.", front + [("act",)], norm) + _expected(f"model{n}_2.", back, norm)
    return out


def _d_groups(input_nc, ndf, n_layers):
    groups = [[("conv", input_nc, ndf, 4), ("act",)]]
    nf = ndf
    for _ in range(1, n_layers):
        groups.append([("conv", nf, min(2 * nf, 512), 4), ("norm", min(2 * nf, 512)), ("act",)])
        nf = min(2 * nf, 512)
    groups.append([("conv", nf, min(2 * nf, 512), 4), ("norm", min(2 * nf, 512)), ("act",)])
    return groups + [[("conv", min(2 * nf, 512), 1, 4)]]


def _expected_d(input_nc, ndf, n_layers, num_d, interm, norm):
    out = []
    for i in range(num_d):
        groups = _d_groups(input_nc, ndf, n_layers)
        if interm:
            for j, g in enumerate(groups):
                out += _expected(f"scale{i}_layer{j}.", g, norm)
        else:
            out += _expected(f"layer{i}.", [x for g in groups for x in g], norm)
    return out


def _layout(net):
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


def _fused(net):
    return [m for m in net.modules() if isinstance(m, InstanceNormAct)]


def _plain(net):
    return [m for m in net.modules() if type(m) in (nn.InstanceNorm2d, nn.ReLU, nn.LeakyReLU)]


# ----------------------------------------------------------------------------------------------------
# Keys and modules


@pytest.mark.parametrize("ops", ["fast", "reference"])
@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize(("n_down", "n_blocks"), [(0, 1), (1, 0), (3, 2)])
def test_global_generator_keys(ops, norm, n_down, n_blocks):
    net = define_G(7, 3, 4, "global", n_down, n_blocks, norm=norm, ops=ops)
    assert _layout(net) == _expected("model.", _global_layers(7, 3, 4, n_down, n_blocks), norm)
    if norm == "instance" and ops == "fast":
        assert not _plain(net)
        slopes = sorted(m.negative_slope for m in _fused(net))
        assert slopes == [0.0] * (2 * n_down + 1 + n_blocks) + [1.0] * n_blocks
    else:
        assert not _fused(net)


@pytest.mark.parametrize("padding", ["reflect", "replicate", "zero"])
def test_resnet_block_padding_keys(padding):
    for ops in ("fast", "reference"):
        net = GlobalGenerator(3, 2, 4, 1, 2, "batch", padding, ops=ops)
        assert _layout(net) == _expected("model.", _global_layers(3, 2, 4, 1, 2, padding), "batch")
    block = ResnetBlock(4, padding, get_norm_layer("instance"), use_dropout=True)
    kinds = [type(m).__name__ for m in block.conv_block]
    pad = [] if padding == "zero" else [{"reflect": "ReflectionPad2d", "replicate": "ReplicationPad2d"}[padding]]
    # reflect: the last norm adds the skip input (InstanceNormActPad); Dropout keeps the inner pad unfused
    last = "InstanceNormActPad" if padding == "reflect" else "InstanceNormAct"
    assert kinds == pad + ["Conv2d", "InstanceNormAct", "Identity", "Dropout"] + pad + ["Conv2d", last]


@pytest.mark.parametrize("n_local", [1, 2, 3])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_local_enhancer_keys(n_local, norm):
    for ops in ("fast", "reference"):
        net = define_G(6, 3, 2, "local", 2, 1, n_local, 2, norm=norm, ops=ops)
        assert _layout(net) == _expected_local(6, 3, 2, 2, 1, n_local, 2, "reflect", norm)
    # padding_type reaches the local blocks only (the global part is always reflect, as in the reference)
    net = LocalEnhancer(6, 3, 2, 1, 1, n_local, 1, norm, "zero")
    assert _layout(net) == _expected_local(6, 3, 2, 1, 1, n_local, 1, "zero", norm)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_encoder_keys(norm):
    # the Encoder is the global generator without residual blocks
    for ops in ("fast", "reference"):
        net = define_G(3, 5, 4, "encoder", 3, norm=norm, ops=ops)
        assert isinstance(net, Encoder)
        assert _layout(net) == _expected("model.", _global_layers(3, 5, 4, 3, 0), norm)


@pytest.mark.parametrize("num_d", [1, 2, 3])
@pytest.mark.parametrize("interm", [False, True])
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_discriminator_keys(num_d, interm, norm):
    for ops in ("fast", "reference"):
        for n_layers in (1, 3):
            net = define_D(5, 4, n_layers, norm, False, num_d, interm, ops=ops)
            assert _layout(net) == _expected_d(5, 4, n_layers, num_d, interm, norm)
            if ops == "fast" and norm == "instance":
                assert [m.negative_slope for m in _fused(net)] == [0.2] * (n_layers * num_d)
                # only the first group's LeakyReLU (no norm before it) stays unfused
                assert [type(m) for m in _plain(net)] == [nn.LeakyReLU] * num_d
    # filters saturate at 512
    net = NLayerDiscriminator(3, 128, 4, "instance")
    assert net.state_dict()["model.11.weight"].shape == (512, 512, 4, 4)


def test_discriminator_sigmoid_layout(seed):
    x = torch.randn(1, 3, 24, 24)
    flat = NLayerDiscriminator(3, 4, 2, "instance", use_sigmoid=True)
    assert isinstance(flat.model[-1], nn.Sigmoid)
    y = flat(x)
    assert y.min() >= 0 and y.max() <= 1
    # getIntermFeat: the sigmoid group is built (model4) but not applied, as in the reference
    interm = NLayerDiscriminator(3, 4, 2, "instance", use_sigmoid=True, getIntermFeat=True)
    assert isinstance(interm.model4[0], nn.Sigmoid)
    interm.load_state_dict(_interm_state(flat, [0, 2, 5, 8, 9]), strict=True)
    feats = interm(x)
    assert len(feats) == 4
    torch.testing.assert_close(torch.sigmoid(feats[-1]), y)
    # the multiscale D registers groups 0..n_layers+1 only
    ms = MultiscaleDiscriminator(3, 4, 2, "instance", use_sigmoid=True, num_D=2, getIntermFeat=True)
    assert not hasattr(ms, "scale0_layer4") and len(ms(x)[0]) == 4


def _interm_state(flat, group_starts):
    """Map a flat D's 'model.{i}' keys to 'model{k}.{i - start}' using the groups' first indices."""
    out = {}
    for key, value in flat.state_dict().items():
        idx = int(key.split(".")[1])
        k = max(g for g, s in enumerate(group_starts) if s <= idx)
        out[f"model{k}.{idx - group_starts[k]}.{key.split('.')[2]}"] = value
    return out


def _down(x, times):
    for _ in range(times):
        x = nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    return x


@pytest.mark.parametrize("interm", [False, True])
def test_multiscale_order_by_hand(seed, interm):
    # scale i runs the discriminator registered as num_D - 1 - i on the input downsampled i times
    d = define_D(4, 4, 2, num_D=3, getIntermFeat=interm)
    x = torch.randn(1, 4, 24, 24)
    out = d(x)
    assert len(out) == 3
    for i in range(3):
        h, expected = _down(x, i), []
        layers = [getattr(d, f"scale{2 - i}_layer{j}") for j in range(4)] if interm else [getattr(d, f"layer{2 - i}")]
        for layer in layers:
            h = layer(h)
            expected.append(h)
        assert len(out[i]) == len(expected)
        for a, b in zip(out[i], expected, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_local_enhancer_composition_by_hand(seed):
    # G1 on the input downsampled N times; enhancer n adds its front end on the input downsampled N - n times
    net = define_G(3, 2, 2, "local", 1, 1, 2, 1)
    x = torch.randn(1, 3, 32, 32)
    out = net.model(_down(x, 2))
    out = net.model1_2(net.model1_1(_down(x, 1)) + out)
    out = net.model2_2(net.model2_1(x) + out)
    torch.testing.assert_close(net(x), out, atol=0, rtol=0)
    assert out.shape == (1, 2, 32, 32) and out.abs().max() <= 1


def test_weights_init(seed):
    net = define_G(3, 3, 8, "global", 1, 1, norm="batch")
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.mean().item()) < 3e-3 and abs(w.std().item() - 0.02) < 2e-3
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    bw = torch.cat([m.weight for m in bns])
    assert abs(bw.mean().item() - 1) < 0.01 and 0.01 < bw.std().item() < 0.03
    assert all(bool((m.bias == 0).all()) for m in bns)
    # conv biases keep PyTorch's default (non-zero) init, as in the reference
    assert any(bool((m.bias != 0).any()) for m in convs)
    d = define_D(3, 8, 2)
    assert all(abs(m.weight.std().item() - 0.02) < 0.01 for m in d.modules() if isinstance(m, nn.Conv2d))
    m = nn.Linear(2, 2)
    before = m.weight.clone()
    weights_init(m)
    assert torch.equal(m.weight, before)


def test_argument_errors():
    with pytest.raises(ValueError, match="normalization layer"):
        get_norm_layer("group")
    with pytest.raises(ValueError, match="generator 'resnet'"):
        define_G(3, 3, 8, "resnet")
    with pytest.raises(ValueError, match="ops must be one of"):
        define_G(3, 3, 8, "global", ops="triton")
    with pytest.raises(ValueError, match="ops must be one of"):
        define_D(3, 8, 2, ops="nope")
    with pytest.raises(ValueError, match="n_downsampling must be >= 0"):
        GlobalGenerator(3, 3, 8, -1)
    with pytest.raises(ValueError, match="n_local_enhancers must be >= 1"):
        LocalEnhancer(3, 3, 8, n_local_enhancers=0)
    with pytest.raises(TypeError, match="ngf must be an int"):
        GlobalGenerator(3, 3, 8.0)
    with pytest.raises(ValueError, match="padding"):
        GlobalGenerator(3, 3, 8, 1, 0, "instance", "circular")
    with pytest.raises(ValueError, match="num_D must be >= 1"):
        define_D(3, 8, 2, num_D=0)
    with pytest.raises(TypeError, match="norm_layer"):
        NLayerDiscriminator(3, 8, 2, norm_layer=3)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            define_G(3, 3, 8, "global", 1, 1, gpu_ids=[0])
    enc = Encoder(3, 2, 4, 1, "instance")
    with pytest.raises(ValueError, match="must match the output"):
        enc(torch.randn(1, 3, 8, 8), torch.zeros(1, 1, 4, 4, dtype=torch.int32))


# ----------------------------------------------------------------------------------------------------
# Fast vs reference ops


def _pair(build, ops_kw="ops"):
    """(reference-op net, fast net) with the same weights (loaded strictly from the reference one)."""
    ref = build(**{ops_kw: "reference"})
    fast = build(**{ops_kw: "fast"})
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def _check_grads_fp64(ref, fast, *inputs):
    """Same parameter gradients for a random weighting of all outputs, in float64.

    float64 because of the activations' kinks: in fp32 a pre-activation that rounds to +-1e-7 can fall on
    either side of 0 in the two implementations, and the ReLU/LeakyReLU derivative there jumps (1 vs 0 or 0.2),
    which moves a whole conv's weight gradient. In fp64 that needs a value within ~1e-16 of the kink.
    """
    ref, fast = ref.double(), fast.double()
    inputs = [t.double() if t.is_floating_point() else t for t in inputs]
    out_ref, out_fast = _flat(ref(*inputs)), _flat(fast(*inputs))
    weights = [torch.randn_like(t) for t in out_ref]
    sum((t * w).sum() for t, w in zip(out_ref, weights, strict=True)).backward()
    sum((t * w).sum() for t, w in zip(out_fast, weights, strict=True)).backward()
    ref_grads = {name: p.grad for name, p in ref.named_parameters()}
    # The bias of a conv followed by an instance norm has a true gradient of 0 (the norm removes a per-channel
    # constant): both sides return rounding noise there, hence an absolute tolerance relative to the largest.
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, p in fast.named_parameters():
        assert p.grad is not None, name
        msg = lambda m, n=name: f"{n}: {m}"  # noqa: E731
        torch.testing.assert_close(p.grad, ref_grads[name], atol=1e-10 * scale, rtol=1e-8, msg=msg)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flat(item)]


_CASES = {
    "global": (lambda ops: define_G(5, 3, 8, "global", 2, 2, ops=ops), (2, 5, 32, 32)),
    "global_zero_pad": (lambda ops: GlobalGenerator(5, 3, 8, 1, 1, "instance", "zero", ops=ops), (2, 5, 16, 16)),
    "local1": (lambda ops: define_G(5, 3, 4, "local", 2, 1, 1, 1, ops=ops), (2, 5, 32, 32)),
    "local2": (lambda ops: define_G(5, 3, 2, "local", 1, 1, 2, 1, ops=ops), (1, 5, 32, 32)),
    "D": (lambda ops: define_D(6, 8, 2, num_D=2, ops=ops), (2, 6, 32, 32)),
    "D_interm": (lambda ops: define_D(6, 8, 2, num_D=3, getIntermFeat=True, ops=ops), (2, 6, 32, 32)),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_fast_matches_reference_outputs_and_grads(seed, case):
    build, shape = _CASES[case]
    ref, fast = _pair(build)
    x = torch.randn(shape)
    out_ref = _flat(ref(x))
    out_fast = _flat(fast(x))
    assert len(out_ref) == len(out_fast)
    for a, b in zip(out_fast, out_ref, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    _check_grads_fp64(ref, fast, x)


def test_encoder_matches_reference_and_pools_per_instance(seed):
    ref, fast = _pair(lambda ops: define_G(3, 4, 4, "encoder", 2, ops=ops))
    x = torch.randn(2, 3, 16, 16)
    inst = torch.randint(0, 4, (2, 1, 16, 16), dtype=torch.int32) * 1000 + 26000  # ids > fp16's exact range
    inst[1, :, :8] = -7  # an id present in one image only
    out_fast = fast(x, inst)
    torch.testing.assert_close(out_fast, ref(x, inst), atol=1e-5, rtol=1e-5)
    # against the reference Encoder's own loop (np.unique + per-id means) on the same decoder output
    torch.testing.assert_close(out_fast, reference.instance_avg_pool_loop(fast.model(x), inst), atol=1e-6, rtol=1e-5)
    for b in range(2):
        for i in inst[b].unique():
            vals = out_fast[b][:, inst[b, 0] == i]
            assert torch.allclose(vals, vals[:, :1].expand_as(vals), atol=1e-6)
    # float-coded ids and [N,H,W] maps, as the reference passes them
    torch.testing.assert_close(fast(x, inst.float().squeeze(1)), out_fast, atol=1e-6, rtol=0)
    # gradients flow through the pooling to the parameters
    _check_grads_fp64(ref, fast, x, inst)


def test_batch_norm_is_not_fused(seed):
    ref, fast = _pair(lambda ops: define_G(3, 3, 4, "global", 1, 1, norm="batch", ops=ops))
    assert not _fused(fast)
    assert [type(m) for m in fast.modules()] == [type(m) for m in ref.modules()]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fast(x), ref(x))


@pytest.mark.parametrize("case", ["global", "local1", "D_interm"])
def test_channels_last(seed, case):
    build, shape = _CASES[case]
    ref, fast = _pair(build)
    x = torch.randn(shape)
    expected = _flat(ref(x))
    fast = fast.to(memory_format=torch.channels_last)
    got = _flat(fast(x.contiguous(memory_format=torch.channels_last)))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert got[0].is_contiguous(memory_format=torch.channels_last) or got[0].size(1) == 1


@pytest.mark.parametrize("case", ["global", "local1", "D_interm"])
def test_bf16_autocast_close(seed, case):
    build, shape = _CASES[case]
    ref, fast = _pair(build)
    x = torch.randn(shape)
    exact = _flat(ref(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fast = _flat(fast(x.contiguous(memory_format=torch.channels_last)))
        out_ref = _flat(ref(x))
    for f, r, e in zip(out_fast, out_ref, exact, strict=True):
        assert f.dtype == torch.bfloat16 and torch.isfinite(f).all()
        scale = e.abs().max().item()
        err_fast = (f.float() - e).abs().max().item()
        err_ref = (r.float() - e).abs().max().item()
        # bf16 keeps ~3 significant digits: the fused path must be about as accurate as PyTorch's
        assert err_fast <= 0.1 * scale + 1e-3, (err_fast, scale)
        assert err_fast <= 2 * err_ref + 0.02 * scale, (err_fast, err_ref)


def test_torch_compile_fullgraph(seed):
    ref, g = _pair(lambda ops: define_G(5, 3, 8, "global", 1, 1, ops=ops))
    x = torch.randn(2, 5, 16, 16)
    # inductor on the generator's forward: the fused ops lower through their fake kernels without graph breaks
    compiled = torch.compile(g, fullgraph=True)
    torch.testing.assert_close(compiled(x), ref(x), atol=1e-5, rtol=1e-5)
    # forward + backward of the feature-matching discriminator through AOTAutograd (the registered autograd)
    # (gradients against the eager fast network: the same kernels, so no activation-kink ties, see above)
    d_ref, d = _pair(lambda ops: define_D(6, 8, 2, num_D=2, getIntermFeat=True, ops=ops))
    d_eager = copy.deepcopy(d)
    xd = torch.randn(2, 6, 16, 16)
    out = _flat(torch.compile(d, fullgraph=True, backend="aot_eager")(xd))
    for a, b in zip(out, _flat(d_ref(xd)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    expected = _flat(d_eager(xd))
    weights = [torch.randn_like(t) for t in out]
    sum((t * w).sum() for t, w in zip(out, weights, strict=True)).backward()
    sum((t * w).sum() for t, w in zip(expected, weights, strict=True)).backward()
    eager_grads = dict(d_eager.named_parameters())
    for name, p in d.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name].grad, atol=1e-5, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------------------------------
# Reflection pads fused into the norms, ResnetBlock outputs written padded


def _padded_norms(net):
    return [(m.pad, m.negative_slope) for m in net.modules() if isinstance(m, InstanceNormActPad) and m.pad]


def _block_output_sizes(net, x):
    """Spatial size of every ResnetBlock's output during one forward."""
    sizes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
        for m in net.modules()
        if isinstance(m, ResnetBlock)
    ]
    net(x)
    for h in hooks:
        h.remove()
    return sizes


def test_global_generator_fused_pads_and_chained_blocks(seed):
    net = define_G(5, 3, 4, "global", 2, 3, ops="fast")
    layers = list(net.model)
    assert not any(type(m) is nn.ReflectionPad2d for m in layers[1:]), "a pad reading a norm was left unfused"
    assert type(layers[0]) is nn.ReflectionPad2d  # reads the input image
    blocks = [m for m in layers if isinstance(m, ResnetBlock)]
    assert [b.padded_input for b in blocks] == [True, True, True]
    assert [b.conv_block[-1].pad for b in blocks] == [1, 1, 0]
    for b in blocks:
        assert type(b.conv_block[0]) is nn.Identity and type(b.conv_block[4]) is nn.Identity
        assert b.conv_block[2].pad == 1
    # last downsampling norm (pad 1 for the first block), three inner pads, the output conv's pad 3
    assert _padded_norms(net) == [(1, 0.0)] + [(1, 0.0), (1, 1.0)] * 2 + [(1, 0.0), (3, 0.0)]
    assert _block_output_sizes(net, torch.randn(1, 5, 16, 24)) == [(6, 8), (6, 8), (4, 6)]


@pytest.mark.parametrize("padding", ["replicate", "zero"])
def test_other_paddings_and_batch_norm_keep_unfused_blocks(padding):
    net = GlobalGenerator(5, 3, 4, 1, 2, "instance", padding, ops="fast")
    assert not any(isinstance(m, ResnetBlock) and m.fused_residual for m in net.modules())
    # only the output conv's reflection pad (always reflect, as in the reference) is folded
    assert _padded_norms(net) == [(3, 0.0)]
    assert not _padded_norms(GlobalGenerator(5, 3, 4, 1, 2, "batch", ops="fast"))
    assert not _padded_norms(define_G(5, 3, 4, "global", 1, 2, ops="reference"))


def test_local_enhancer_fused_pads(seed):
    net = define_G(5, 3, 4, "local", 1, 2, 1, 2, ops="fast")
    # the global part ends unpadded (summed with the front end); the enhancer's blocks chain, the last
    # enhancer's output pad is folded
    tail = [m for m in net.model if not isinstance(m, nn.Identity)][-1]
    assert isinstance(tail, InstanceNormAct) and getattr(tail, "pad", 0) == 0
    back = [m for m in net.model1_2 if isinstance(m, ResnetBlock)]
    assert [b.padded_input for b in back] == [False, True]
    assert [b.conv_block[-1].pad for b in back] == [1, 0]
    assert not any(type(m) is nn.ReflectionPad2d for m in net.model1_2)
    x = torch.randn(1, 5, 32, 32)
    assert _block_output_sizes(net, x) == [(10, 10), (8, 8), (18, 18), (16, 16)]


@pytest.mark.parametrize(
    "build",
    [
        lambda ops: GlobalGenerator(5, 3, 4, 0, 2, "instance", ops=ops),  # blocks right after the first norm
        lambda ops: GlobalGenerator(5, 3, 4, 1, 0, "instance", ops=ops),  # no blocks: only the output pad
        lambda ops: define_G(5, 3, 2, "local", 1, 2, 2, 2, ops=ops),  # two enhancers
        lambda ops: ResnetBlock(6, "reflect", "instance", ops=ops),  # a block on its own
    ],
    ids=["global-no-down", "global-no-blocks", "local2", "block"],
)
def test_fused_networks_match_reference(seed, build):
    ref, fast = _pair(build)
    x = torch.randn(2, 6 if isinstance(ref, ResnetBlock) else 5, 16, 16)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-5)
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.to(memory_format=torch.channels_last)(xc), ref(x), atol=1e-5, rtol=1e-5)
    _check_grads_fp64(ref, fast, x)


@pytest.mark.parametrize("net_g", ["global", "local", "encoder"])
def test_fuse_pads_off_keeps_pad_modules_with_the_same_outputs(seed, net_g):
    """fuse_pads=False (the benchmark's ablation) keeps every reflection pad as a module beside unpadded fused norms,
    with the same keys and outputs as the padded-output networks."""
    args = (5, 3, 4, net_g, 1, 2, 1, 1)
    fused = define_G(*args, ops="fast")
    plain = define_G(*args, ops="fast", fuse_pads=False)
    assert _padded_norms(fused) and not _padded_norms(plain)
    assert not any(isinstance(m, ResnetBlock) and m.padded_input for m in plain.modules())
    n_pads = sum(type(m) is nn.ReflectionPad2d for m in plain.modules())
    assert n_pads == sum(type(m) is nn.ReflectionPad2d for m in define_G(*args, ops="reference").modules())
    plain.load_state_dict(fused.state_dict())  # strict: the same keys
    x = torch.randn(2, 5, 16, 16)
    if net_g == "encoder":
        inst = torch.randint(0, 4, (2, 1, 16, 16))
        torch.testing.assert_close(plain(x, inst), fused(x, inst), atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(plain(x), fused(x), atol=1e-5, rtol=1e-5)
