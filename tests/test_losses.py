"""Losses: GAN (lsgan / vanilla / hinge), feature matching, VGG19 perceptual loss, against hand-derived values."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pix2pixhd_fast.models.losses import (
    VGG19,
    FeatureMatchingLoss,
    GANLoss,
    VGGLoss,
    feature_matching_loss,
    find_vgg19_weights,
)

# One fixed prediction map: values chosen so every formula below is easy to check by hand.
X = torch.tensor([[[[-2.0, 0.0], [0.5, 3.0]]]])  # [1,1,2,2]


def _t(v):
    return torch.tensor(v, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------
# GANLoss


def test_lsgan_values():
    loss = GANLoss()
    # real: mean((x - 1)^2) = (9 + 1 + 0.25 + 4) / 4; fake: mean(x^2) = (4 + 0 + 0.25 + 9) / 4
    assert loss(X, True).item() == pytest.approx(14.25 / 4)
    assert loss(X, False).item() == pytest.approx(13.25 / 4)
    # custom target labels (e.g. one-sided label smoothing): mean((x - 0.9)^2)
    smooth = GANLoss("lsgan", target_real_label=0.9, target_fake_label=0.1)
    assert smooth(X, True).item() == pytest.approx(sum((v - 0.9) ** 2 for v in (-2, 0, 0.5, 3)) / 4)
    assert smooth(X, False).item() == pytest.approx(sum((v - 0.1) ** 2 for v in (-2, 0, 0.5, 3)) / 4)


def test_lsgan_gradient():
    x = X.clone().requires_grad_(True)
    GANLoss()(x, True).backward()
    torch.testing.assert_close(x.grad, 2 * (X - 1) / 4)


def _bce_by_hand(logits, y):
    total = 0.0
    for v in logits:
        p = 1 / (1 + math.exp(-v))
        total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    return total / len(logits)


@pytest.mark.parametrize("real", [True, False])
def test_vanilla_logits_and_probabilities(real):
    vals = [-2.0, 0.0, 0.5, 3.0]
    expected = _bce_by_hand(vals, 1.0 if real else 0.0)
    assert GANLoss("vanilla")(X, real).item() == pytest.approx(expected, rel=1e-6)
    probs = torch.sigmoid(X)
    assert GANLoss("vanilla", from_logits=False)(probs, real).item() == pytest.approx(expected, rel=1e-5)
    # logit 0 <=> probability 1/2: log 2 either way
    assert GANLoss("vanilla")(torch.zeros(3, 1, 4, 4), real).item() == pytest.approx(math.log(2))


def test_reference_constructor_forms():
    assert GANLoss().mode == "lsgan"
    assert GANLoss(True).mode == "lsgan"
    assert GANLoss(False).mode == "vanilla"
    assert GANLoss(use_lsgan=False, tensor=torch.FloatTensor).mode == "vanilla"
    assert GANLoss(use_lsgan=True, target_real_label=0.8).real_label == 0.8
    with pytest.raises(ValueError, match="mode"):
        GANLoss("wgan")
    with pytest.raises(ValueError, match="not both"):
        GANLoss("hinge", use_lsgan=True)


def test_hinge_values():
    loss = GANLoss("hinge")
    # D real: relu(1 - x) = [3, 1, 0.5, 0]; D fake: relu(1 + x) = [0, 1, 1.5, 4]; G: -mean(x)
    assert loss(X, True).item() == pytest.approx(4.5 / 4)
    assert loss(X, False).item() == pytest.approx(6.5 / 4)
    assert loss(X, True, for_discriminator=False).item() == pytest.approx(-1.5 / 4)
    with pytest.raises(ValueError, match="target_is_real=True"):
        loss(X, False, for_discriminator=False)


@pytest.mark.parametrize("mode", ["lsgan", "vanilla", "hinge"])
def test_multiscale_sums_last_entry_of_each_scale(mode, seed):
    loss = GANLoss(mode)
    finals = [torch.randn(2, 1, 6, 6), torch.randn(2, 1, 3, 3), torch.randn(2, 1, 2, 2)]
    # Intermediate features (huge values) must not enter the GAN loss.
    pred = [[torch.full((2, 4, 6, 6), 1e3), finals[0]], [finals[1]], [torch.full((2, 8, 3, 3), -1e3), finals[2]]]
    for real in (True, False):
        expected = sum(loss(f, real).item() for f in finals)
        assert loss(pred, real).item() == pytest.approx(expected, rel=1e-6)
    # One discriminator's per-layer list: its last entry is scored (the reference's non-nested branch).
    assert loss([pred[0][0], finals[0]], True).item() == pytest.approx(loss(finals[0], True).item())


def test_low_precision_predictions_give_fp32_loss(seed):
    x = torch.randn(2, 1, 8, 8)
    for mode in ("lsgan", "vanilla", "hinge"):
        ref = GANLoss(mode)(x, True)
        got = GANLoss(mode)(x.bfloat16(), True)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, GANLoss(mode)(x.bfloat16().float(), True))
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=1e-2)


def test_probabilities_under_autocast(seed):
    p = torch.rand(2, 1, 8, 8) * 0.98 + 0.01
    ref = GANLoss("vanilla", from_logits=False)(p, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = GANLoss("vanilla", from_logits=False)(p.bfloat16(), False)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=0)


def test_gan_loss_bad_input():
    loss = GANLoss()
    with pytest.raises(TypeError):
        loss([], True)
    with pytest.raises(TypeError):
        loss([[]], True)
    with pytest.raises(TypeError, match="floating"):
        loss(torch.ones(2, 2, dtype=torch.long), True)


# ----------------------------------------------------------------------------------------------------
# Feature matching


def _two_scale_features(requires_grad=False):
    """num_D = 2 scales with 2 intermediate layers + a final prediction each; L1 per layer known by hand."""

    def full(shape, v):
        return torch.full(shape, float(v), requires_grad=requires_grad)

    fake = [
        [full((1, 2, 4, 4), 1.0), full((1, 3, 2, 2), 0.5), full((1, 1, 2, 2), 100.0)],
        [full((1, 2, 2, 2), -1.0), full((1, 3, 1, 1), 2.0), full((1, 1, 1, 1), -100.0)],
    ]
    real = [
        [full((1, 2, 4, 4), 0.0), full((1, 3, 2, 2), 0.25), full((1, 1, 2, 2), 0.0)],
        [full((1, 2, 2, 2), 1.0), full((1, 3, 1, 1), 2.0), full((1, 1, 1, 1), 0.0)],
    ]
    l1 = [1.0, 0.25, 2.0, 0.0]  # per intermediate layer; the finals (100, -100) are excluded
    return fake, real, l1


@pytest.mark.parametrize("n_layers_D,lambda_feat", [(2, 10.0), (3, 10.0), (3, 1.5)])
def test_feature_matching_weights(n_layers_D, lambda_feat):
    fake, real, l1 = _two_scale_features()
    expected = (4.0 / (n_layers_D + 1)) * (1.0 / 2) * lambda_feat * sum(l1)
    got = feature_matching_loss(fake, real, num_D=2, n_layers_D=n_layers_D, lambda_feat=lambda_feat)
    assert got.item() == pytest.approx(expected)
    module = FeatureMatchingLoss(num_D=2, n_layers_D=n_layers_D, lambda_feat=lambda_feat)
    assert module(fake, real).item() == pytest.approx(expected)


def test_feature_matching_detaches_real():
    fake, real, _ = _two_scale_features(requires_grad=True)
    feature_matching_loss(fake, real, num_D=2, n_layers_D=3).backward()
    assert all(t.grad is None for scale in real for t in scale)
    w = (4.0 / 4) * (1.0 / 2) * 10.0
    # d|f - r| / df = sign(f - r) / numel; zero difference -> zero gradient; finals get none.
    torch.testing.assert_close(fake[0][0].grad, torch.full_like(fake[0][0], w / 32))
    torch.testing.assert_close(fake[0][1].grad, torch.full_like(fake[0][1], w / 12))
    torch.testing.assert_close(fake[1][0].grad, torch.full_like(fake[1][0], -w / 8))
    torch.testing.assert_close(fake[1][1].grad, torch.zeros_like(fake[1][1]))
    assert fake[0][2].grad is None and fake[1][2].grad is None


def test_feature_matching_equals_l1_on_random(seed):
    fake = [[torch.randn(2, 4, 8, 8), torch.randn(2, 1, 7, 7)], [torch.randn(2, 4, 4, 4), torch.randn(2, 1, 3, 3)]]
    real = [[torch.randn_like(t) for t in s] for s in fake]
    expected = sum(4 / 4 * 0.5 * 10 * F.l1_loss(fake[i][0], real[i][0]) for i in range(2))
    torch.testing.assert_close(feature_matching_loss(fake, real, 2, 3), expected)
    # bf16 features: fp32 result, close to the fp32 one
    got = feature_matching_loss([[t.bfloat16() for t in s] for s in fake], real, 2, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=0)


def test_feature_matching_no_intermediate_features_is_zero():
    pred = [[torch.ones(1, 1, 2, 2)], [torch.ones(1, 1, 1, 1)]]
    assert feature_matching_loss(pred, pred, 2, 3).item() == 0.0


def test_feature_matching_bad_input():
    fake, real, _ = _two_scale_features()
    with pytest.raises(ValueError, match="num_D=3"):
        feature_matching_loss(fake, real, num_D=3, n_layers_D=3)
    with pytest.raises(ValueError, match="layers"):
        feature_matching_loss(fake, [real[0], real[1][:2]], num_D=2, n_layers_D=3)
    with pytest.raises(ValueError, match="shapes differ"):
        feature_matching_loss(fake, [real[1], real[0]], num_D=2, n_layers_D=3)
    with pytest.raises(TypeError):
        feature_matching_loss(fake[0], real[0], num_D=3, n_layers_D=3)


# ----------------------------------------------------------------------------------------------------
# VGG19 perceptual loss


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A randomly initialised torchvision vgg19 saved as a state_dict like vgg19-dcbb9e9d.pth.

    The real classifier (120M parameters) would make the file ~550 MB: tiny stand-ins keep its keys.
    Returns (path, torchvision features module).
    """
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        net = torchvision.models.vgg19(weights=None)
    state = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
    for i in (0, 3, 6):
        state[f"classifier.{i}.weight"] = torch.zeros(2, 2)
        state[f"classifier.{i}.bias"] = torch.zeros(2)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    return path, net.features.eval()


def _manual_vgg_loss(features, x, y, normalize=False):
    if normalize:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x, y = ((x + 1) / 2 - mean) / std, ((y + 1) / 2 - mean) / std
    weights = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    total = 0.0
    for w, (a, b) in zip(weights, [(0, 2), (2, 7), (7, 12), (12, 21), (21, 30)], strict=True):
        x, y = features[a:b](x), features[a:b](y)
        total = total + w * F.l1_loss(x, y.detach())
    return total


@pytest.mark.parametrize("normalize", [False, True])
def test_vgg_loss_matches_torchvision(vgg_file, normalize, seed):
    path, features = vgg_file
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 32, 32) * 2 - 1
    loss = VGGLoss(str(path), normalize_input=normalize)
    got = loss(x, y)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = _manual_vgg_loss(features, x_ref, y, normalize)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    got.backward()
    expected.backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-9)


def test_vgg_frozen_and_target_detached(vgg_file, seed):
    loss = VGGLoss(vgg_file[0])
    assert all(not p.requires_grad for p in loss.parameters())
    assert not loss.vgg.training
    loss.train()  # a surrounding .train() must not put the extractor in training mode
    assert not loss.vgg.training
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    y = torch.randn(1, 3, 32, 32, requires_grad=True)
    loss(x, y).backward()
    assert x.grad is not None and y.grad is None


def test_vgg_weights_file_variants(vgg_file, tmp_path, seed):
    path, _ = vgg_file
    full = torch.load(path, weights_only=True)
    x, y = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    expected = VGGLoss(path)(x, y)
    only_features = {k: v for k, v in full.items() if k.startswith("features.")}
    used = {k: v for k, v in only_features.items() if int(k.split(".")[1]) < 30}
    bare = {k[len("features.") :]: v for k, v in only_features.items()}
    for i, sd in enumerate((only_features, used, bare)):
        p = tmp_path / f"v{i}.pth"
        torch.save(sd, p)
        torch.testing.assert_close(VGGLoss(p)(x, y), expected)
    torch.testing.assert_close(VGGLoss(used)(x, y), expected)  # a mapping works as well as a path


def test_vgg_channels_last_and_autocast(vgg_file, seed):
    loss = VGGLoss(vgg_file[0])
    x, y = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    expected = loss(x, y)
    xc, yc = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    feats = loss.vgg(xc)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats[:4])
    torch.testing.assert_close(loss(xc, yc), expected, rtol=1e-4, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(xc, yc)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.1, atol=0)


def test_vgg_errors(vgg_file, tmp_path):
    with pytest.raises(ValueError, match="--vgg_weights PATH .*--no_vgg_loss"):
        VGGLoss(None)
    missing = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        VGGLoss(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read VGG19 weights from .*garbage.pth"):
        VGGLoss(garbage)
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(ValueError, match="missing keys .*features.0.weight.*unexpected keys .*conv1.weight"):
        VGGLoss(wrong)
    state = torch.load(vgg_file[0], weights_only=True)
    state["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    with pytest.raises(ValueError, match="features.2.weight|2.weight"):
        VGGLoss(state)
    del state["features.5.bias"]
    with pytest.raises(ValueError, match="missing keys .*features.5.bias"):
        VGGLoss(state)
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        VGG19()(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="5 entries"):
        VGGLoss(vgg_file[0], weights=(1.0, 1.0))


def test_find_vgg19_weights_only_looks_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert find_vgg19_weights() is None
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "vgg19_bn-c79401a0.pth").write_bytes(b"")
    assert find_vgg19_weights() is None  # the batch-norm variant is another architecture
    (ckpt / "vgg19-0000.pth").write_bytes(b"")
    assert find_vgg19_weights() == str(ckpt / "vgg19-0000.pth")
    (ckpt / "vgg19-dcbb9e9d.pth").write_bytes(b"")
    assert find_vgg19_weights() == str(ckpt / "vgg19-dcbb9e9d.pth")
