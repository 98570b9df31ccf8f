"""convert_model (InstanceNorm2d [+ ReLU/LeakyReLU] -> InstanceNormAct) and the reference-signature helpers."""

import copy

import pytest
import torch
from torch import nn

from pix2pixhd_fast import reference
from pix2pixhd_fast.models import define_D, define_G
from pix2pixhd_fast.nn import (
    InstanceNormAct,
    convert_model,
    get_edges,
    instance_avg_pool,
)


class NormThenAct(nn.Module):
    """Custom module: separate norm/activation attributes, called norm -> act in forward."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.actvn = nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.actvn(self.norm(self.conv(x)))


class ActThenNorm(nn.Module):
    """Registered norm before act, but forward calls the activation FIRST: fusing them would be wrong."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.InstanceNorm2d(c)
        self.actvn = nn.ReLU()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.conv(self.norm(self.actvn(x))) + x


class Mixed(nn.Module):
    """Every pattern convert_model must handle, with the IN's output directly visible in the result."""

    def __init__(self, c=8):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.InstanceNorm2d(c), nn.ReLU(True))
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.InstanceNorm2d(c, affine=True),
            nn.LeakyReLU(0.2, True),
            nn.Sequential(nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.InstanceNorm2d(c)), nn.LeakyReLU(0.1)),
            nn.Conv2d(c, c, 3, padding=1),
            nn.InstanceNorm2d(c, eps=1e-3),  # lone: followed by a conv
            nn.Conv2d(c, c, 1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
        )
        self.custom = NormThenAct(c)
        self.reversed = ActThenNorm(c)
        self.running = nn.Sequential(nn.Conv2d(c, c, 1), nn.InstanceNorm2d(c, track_running_stats=True), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(c, c, 1), nn.InstanceNorm2d(c, affine=True))  # lone, affine, last

    def forward(self, x):
        return self.tail(self.running(self.reversed(self.custom(self.body(self.head(x))))))


def _randomise(model):
    """Non-trivial affine parameters and BatchNorm statistics (defaults 1/0 would hide a lost copy)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def models(seed):
    ref = _randomise(Mixed()).eval()
    fast, report = convert_model(ref, inplace=False, return_report=True)
    return ref, fast, report


def test_structure_and_report(models):
    ref, fast, report = models
    assert report.fused == [
        ("head.1", "head.2", 0.0),
        ("body.1", "body.2", 0.2),
        ("body.3.0.1", "body.3.1", 0.1),
    ]
    assert sorted(report.norm_only) == ["body.5", "custom.norm", "reversed.norm", "tail.1"]
    assert [p for p, _ in report.skipped] == ["running.1"]
    assert "track_running_stats" in report.skipped[0][1]
    assert report.count == 7

    def slope(m):
        assert type(m) is InstanceNormAct
        return m.negative_slope

    assert slope(fast.head[1]) == 0.0 and isinstance(fast.head[2], nn.Identity)
    assert slope(fast.body[1]) == 0.2 and isinstance(fast.body[2], nn.Identity)
    assert slope(fast.body[3][0][1]) == 0.1 and isinstance(fast.body[3][1], nn.Identity)
    assert slope(fast.body[5]) == 1.0 and fast.body[5].eps == 1e-3
    assert slope(fast.custom.norm) == 1.0 and type(fast.custom.actvn) is nn.LeakyReLU
    assert slope(fast.reversed.norm) == 1.0 and type(fast.reversed.actvn) is nn.ReLU
    assert slope(fast.tail[1]) == 1.0 and fast.tail[1].affine
    assert type(fast.body[7]) is nn.BatchNorm2d and type(fast.body[8]) is nn.ReLU
    assert type(fast.running[1]) is nn.InstanceNorm2d and type(fast.running[2]) is nn.ReLU
    # inplace=False left the original alone
    assert type(ref.head[1]) is nn.InstanceNorm2d and type(ref.head[2]) is nn.ReLU


def _draw_away_from_kinks(model, shape, margin=2e-5, tries=200):
    """Random input whose every ReLU/LeakyReLU input in ``model`` is at least ``margin`` from 0.

    The fused and the stock model differ by fp32 rounding (~4e-6 here); an activation input closer to 0 than that
    can take the other branch in one of them, and its gradient then differs by O(1) and spreads through every
    convolution after it: a true difference of the two models, but not of their ops.
    """
    probe = copy.deepcopy(model)  # training-mode forwards update BatchNorm statistics: keep the model's
    smallest = []
    for m in probe.modules():
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)):  # a pre-hook: ReLU(inplace=True) overwrites its input
            m.register_forward_pre_hook(lambda mod, inp: smallest.append(inp[0].abs().min().item()))
    with torch.no_grad():
        for _ in range(tries):
            x = torch.randn(shape)
            smallest.clear()
            probe(x)
            if min(smallest) > margin:
                return x
    raise AssertionError(f"no input kept every activation input {margin} away from 0 in {tries} draws")


@pytest.mark.parametrize("train", [False, True])
def test_outputs_and_gradients_equal(models, train):
    ref, fast, _ = models
    ref.train(train)
    fast.train(train)
    x = _draw_away_from_kinks(ref, (2, 3, 16, 16))
    x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fast = ref(x_ref), fast(x_fast)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_fast * w).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    grads_ref = {n: p.grad for n, p in ref.named_parameters()}
    # A conv bias right before an instance norm has an exactly-zero gradient in exact arithmetic: what both
    # sides compute there is rounding noise, so the absolute tolerance is relative to the largest gradient.
    atol = 1e-6 * max(g.abs().max().item() for g in grads_ref.values())
    for n, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[n], rtol=1e-4, atol=atol, msg=n)


def test_state_dict_round_trip(models, seed):
    ref, fast, _ = models
    sd_ref, sd_fast = ref.state_dict(), fast.state_dict()
    assert list(sd_ref) == list(sd_fast)
    assert all(sd_ref[k].shape == sd_fast[k].shape for k in sd_ref)
    # saved before the conversion -> loads strict after it, and the other way round
    other = convert_model(_randomise(Mixed()).eval(), inplace=False)
    other.load_state_dict(sd_ref, strict=True)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(other(x), ref(x), rtol=1e-5, atol=1e-5)
    plain = _randomise(Mixed()).eval()
    plain.load_state_dict(fast.state_dict(), strict=True)
    torch.testing.assert_close(plain(x), fast(x), rtol=1e-5, atol=1e-5)


def test_inplace_keeps_parameter_objects(seed):
    model = _randomise(Mixed())
    before = dict(model.named_parameters())
    out = convert_model(model)
    assert out is model
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()
    assert all(after[k] is before[k] for k in before)


def test_spade_style_discriminator_intermediate_features(seed):
    """Sequential(Sequential(conv, IN), LeakyReLU) blocks whose outputs are collected one by one."""

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.model0 = nn.Sequential(nn.Conv2d(3, 8, 4, 2, 2), nn.LeakyReLU(0.2, False))
            self.model1 = nn.Sequential(
                nn.Sequential(nn.Conv2d(8, 16, 4, 2, 2, bias=False), nn.InstanceNorm2d(16)), nn.LeakyReLU(0.2, False)
            )
            self.model2 = nn.Sequential(nn.Conv2d(16, 1, 4, 1, 2))

        def forward(self, x):
            results = [x]
            for sub in self.children():
                results.append(sub(results[-1]))
            return results[1:]

    ref = D()
    fast, report = convert_model(ref, inplace=False, return_report=True)
    assert report.fused == [("model1.0.1", "model1.1", 0.2)] and not report.norm_only
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(fast(x), ref(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_shared_inner_container_is_not_fused_across(seed):
    inner = nn.Sequential(nn.Conv2d(4, 4, 1), nn.InstanceNorm2d(4))
    model = nn.Sequential(inner, nn.ReLU(), inner)  # the second use is not followed by a ReLU
    ref = copy.deepcopy(model)
    _, report = convert_model(model, return_report=True)
    assert report.fused == [] and report.norm_only == ["0.1"]
    assert type(model[1]) is nn.ReLU
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_tied_affine_norm_stays_tied(seed):
    norm = _randomise(nn.Sequential(nn.InstanceNorm2d(4, affine=True)))[0]
    model = nn.Sequential(nn.Conv2d(4, 4, 1), norm, nn.ReLU(), nn.Conv2d(4, 4, 1), norm)
    ref = copy.deepcopy(model)
    convert_model(model)
    assert model[1].weight is model[4].weight and model[1].negative_slope == 0.0 and model[4].negative_slope == 1.0
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_left_alone(seed):
    class MyNorm(nn.InstanceNorm2d):
        pass

    hooked = nn.InstanceNorm2d(4)
    hooked.register_forward_hook(lambda m, i, o: None)
    hooked_act = nn.ReLU()
    hooked_act.register_forward_hook(lambda m, i, o: None)
    model = nn.Sequential(MyNorm(4), nn.ReLU(), hooked, nn.ReLU(), nn.InstanceNorm2d(4), hooked_act, nn.Tanh())
    _, report = convert_model(model, return_report=True)
    assert [p for p, _ in report.skipped] == ["0", "2"]
    assert report.fused == [] and report.norm_only == ["4"]  # the hooked activation keeps its slot
    assert type(model[0]) is MyNorm and model[2] is hooked and model[5] is hooked_act


def test_root_norm_and_sequential_subclass(seed):
    from torchvision.ops.misc import Conv2dNormActivation

    out = convert_model(nn.InstanceNorm2d(3, affine=True))
    assert type(out) is InstanceNormAct and out.negative_slope == 1.0
    block = Conv2dNormActivation(3, 8, norm_layer=nn.InstanceNorm2d, activation_layer=nn.ReLU)
    ref = copy.deepcopy(block)
    _, report = convert_model(block, return_report=True)
    assert report.fused == [("1", "2", 0.0)]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(block(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="nn.Module"):
        convert_model(lambda x: x)


def test_convert_logs_summary(caplog):
    with caplog.at_level("INFO", logger="pix2pixhd_fast.nn.convert"):
        convert_model(nn.Sequential(nn.InstanceNorm2d(2), nn.ReLU()))
    assert "fused 1 InstanceNorm2d+activation pair" in caplog.text


# ----------------------------------------------------------------------------------------------------
# get_edges / instance_avg_pool


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float32, torch.float64, torch.bool])
def test_get_edges_equals_reference(dtype, seed):
    hi = 2 if dtype == torch.bool else 5
    t = torch.randint(0, hi, (3, 1, 9, 13)).to(dtype)
    out = get_edges(t)
    expected = reference.get_edges(t)
    assert out.dtype == torch.float32 == expected.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(get_edges(t, torch.float16), expected.half(), rtol=0, atol=0)


def test_get_edges_large_ids_channels_and_errors(seed):
    t = torch.randint(26000, 26003, (2, 1, 8, 8)).float()  # adjacent large ids: would collide in fp16
    torch.testing.assert_close(get_edges(t), reference.get_edges(t), rtol=0, atol=0)
    multi = torch.randint(0, 3, (2, 3, 7, 5))
    torch.testing.assert_close(get_edges(multi), reference.get_edges(multi), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\[N,C,H,W\]"):
        get_edges(torch.zeros(4, 4))
    with pytest.raises(TypeError):
        get_edges([[0, 1]])
    with pytest.raises((ValueError, RuntimeError), match="fractional"):  # the CPU kernel's check: RuntimeError
        get_edges(torch.full((1, 1, 2, 2), 0.5))


def test_instance_avg_pool_equals_reference_loop(seed):
    feat = torch.randn(2, 3, 10, 12)
    inst = torch.randint(0, 6, (2, 1, 10, 12)).float()
    torch.testing.assert_close(
        instance_avg_pool(feat, inst), reference.instance_avg_pool_loop(feat, inst), rtol=1e-5, atol=1e-6
    )


# ----------------------------------------------------------------------------------------------------
# The pix2pixHD networks: converting the plain-module ('reference') build gives the layout of the fused one.


def _layout(model):
    return {n: (type(m).__name__, getattr(m, "negative_slope", None)) for n, m in model.named_modules()}


@pytest.mark.parametrize(
    "build",
    [
        lambda ops: define_G(4, 3, 8, "global", 2, 1, ops=ops),
        lambda ops: define_D(4, 8, 2, num_D=2, getIntermFeat=True, ops=ops),
        lambda ops: define_D(4, 8, 2, num_D=2, getIntermFeat=False, ops=ops),
    ],
    ids=["G-global", "D-intermfeat", "D-flat"],
)
def test_pix2pixhd_networks(build, seed):
    torch.manual_seed(seed)
    ref = build("reference")
    torch.manual_seed(seed)
    fast = build("fast")
    converted, report = convert_model(ref, inplace=False, return_report=True)
    assert report.count > 0 and not report.skipped
    got, want = _layout(converted), _layout(fast)
    assert got.keys() == want.keys()
    # convert_model cannot fuse a ResnetBlock's residual sum (it lives in forward). The fast generator chains its
    # blocks: each differs in its first pad slot (Identity: the input arrives padded) and its last norm
    # (InstanceNormActPad adding the skip input), and the norm before the first block pads its output.
    chained = {
        (("ReflectionPad2d", None), ("Identity", None)),
        *((("InstanceNormAct", s), ("InstanceNormActPad", s)) for s in (0.0, 1.0)),
    }
    diff = [(got[k], want[k]) for k in got if got[k] != want[k]]
    assert all(d in chained for d in diff), diff
    n_blocks = sum(type(m).__name__ == "ResnetBlock" for m in fast.modules())
    assert len(diff) == (2 * n_blocks + 1 if n_blocks else 0)
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in converted.modules())
    x = torch.randn(1, 4, 32, 32)
    torch.testing.assert_close(converted(x), ref(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Reflection pads folded into the converted norm


class PaddedStack(nn.Module):
    """CycleGAN-style Sequential: norm, act, ReflectionPad2d, conv (several pad widths, a norm without activation,
    a pad that does not read a norm, an unequal pad, and a residual block whose sum lives in forward)."""

    def __init__(self, c=6):
        super().__init__()
        self.model = nn.Sequential(
            nn.ReflectionPad2d(3),  # reads the input: stays
            nn.Conv2d(3, c, 7),
            nn.InstanceNorm2d(c),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),  # folded into model.2 (pad 1)
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c, affine=True),  # no activation: slope 1.0
            nn.ReflectionPad2d(2),  # folded into model.6 (pad 2)
            nn.Conv2d(c, c, 5),
            nn.InstanceNorm2d(c),
            nn.LeakyReLU(0.2),
            nn.ReflectionPad2d((1, 0, 1, 0)),  # unequal sides: stays
            nn.Conv2d(c, c, 2),
        )
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(c, c, 3),
            nn.InstanceNorm2d(c),
        )

    def forward(self, x):
        h = self.model(x)
        return h + self.block(h)


def test_reflection_pads_folded_into_norms(seed):
    from pix2pixhd_fast.nn import InstanceNormActPad

    ref = _randomise(PaddedStack())
    fast, report = convert_model(ref, inplace=False, return_report=True)
    assert report.padded == [("model.2", "model.4", 1), ("model.6", "model.7", 2), ("block.2", "block.4", 1)]
    assert "folded 3 ReflectionPad2d" in str(report)
    assert type(fast.model[0]) is nn.ReflectionPad2d and type(fast.model[11]) is nn.ReflectionPad2d
    for i, p, slope in ((2, 1, 0.0), (6, 2, 1.0)):
        assert type(fast.model[i]) is InstanceNormActPad and fast.model[i].pad == p
        assert fast.model[i].negative_slope == slope
    assert type(fast.model[4]) is nn.Identity and type(fast.model[7]) is nn.Identity
    assert type(fast.model[9]) is InstanceNormAct  # followed by an unequal pad
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert fast.model[6].weight is not ref.model[6].weight  # inplace=False: a copy
    x = torch.randn(2, 3, 12, 14)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    # Gradients in float64: in fp32 a pre-activation within rounding of the ReLU's kink may fall on either side.
    ref, fast, x = ref.double(), fast.double(), x.double()
    x_ref, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_fast = ref(x_ref), fast(x_fast)
    w = torch.randn_like(y_ref)
    (y_ref * w).sum().backward()
    (y_fast * w).sum().backward()
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-8, atol=1e-10)
    grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-8, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
