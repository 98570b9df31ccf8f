"""pix2pixHD losses: GAN (LSGAN / vanilla BCE / hinge), discriminator feature matching, VGG19 perceptual loss.

Semantics follow the reference pix2pixHD (least-squares GAN by default, feature matching weighted
``lambda_feat * 4 / (n_layers_D + 1) / num_D`` per layer, VGG loss on relu1_1..relu5_1 with weights
1/32..1). The implementation is written for mixed precision: every loss is reduced in float32 whatever the
dtype of its inputs, targets are built with ``full_like`` on the prediction's device (no cached tensors, no
host synchronisation), and nothing here ever downloads weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GANLoss",
    "feature_matching_loss",
    "FeatureMatchingLoss",
    "VGG19",
    "VGGLoss",
    "find_vgg19_weights",
    "VGG_WEIGHTS_FILE",
]

# torchvision's ImageNet VGG19 weights (torchvision.models.VGG19_Weights.IMAGENET1K_V1).
VGG_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"

_NO_WEIGHTS_MESSAGE = (
    "the VGG loss needs VGG19 weights: pass --vgg_weights PATH (torchvision vgg19-dcbb9e9d.pth) "
    "or disable it with --no_vgg_loss"
)

_GAN_MODES = ("lsgan", "vanilla", "hinge")


def _mean_f32(x: torch.Tensor) -> torch.Tensor:
    """Mean accumulated and returned in float32 (fp64 stays fp64), without an fp32 copy of a low-precision ``x``."""
    return x.mean(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _l1_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``F.l1_loss(a, b)`` (mean reduction) with float32 accumulation: a large bf16 feature map keeps its dtype
    for the difference while the mean stays exact to fp32."""
    return _mean_f32((a - b).abs())


def _final_predictions(pred: torch.Tensor | Sequence) -> list[torch.Tensor]:
    """The tensors a GAN loss scores: the discriminator's final output of every scale.

    Accepts a tensor, a list of per-layer outputs of one discriminator (the last one is scored), or the
    multiscale discriminator's list (per scale) of lists (per layer).
    """
    if isinstance(pred, torch.Tensor):
        return [pred]
    if not isinstance(pred, (list, tuple)) or len(pred) == 0:
        raise TypeError(
            "pred must be a tensor, a non-empty list of per-layer tensors or a list (per scale) of such lists, "
            f"got {type(pred).__name__}" + (" of length 0" if isinstance(pred, (list, tuple)) else "")
        )
    if isinstance(pred[0], (list, tuple)):
        finals = []
        for i, scale in enumerate(pred):
            if not isinstance(scale, (list, tuple)) or len(scale) == 0 or not isinstance(scale[-1], torch.Tensor):
                raise TypeError(f"pred[{i}] must be a non-empty list of tensors (one scale's per-layer outputs)")
            finals.append(scale[-1])
        return finals
    if not isinstance(pred[-1], torch.Tensor):
        raise TypeError(f"pred[-1] must be a tensor, got {type(pred[-1]).__name__}")
    return [pred[-1]]


class GANLoss(nn.Module):
    """Adversarial loss summed over the discriminator scales.

    Args:
        mode: ``'lsgan'`` (mean squared error to the target label; the pix2pixHD default), ``'vanilla'``
            (binary cross-entropy; ``--no_lsgan``) or ``'hinge'``. The reference constructor form is accepted
            too: a bool as first argument or ``use_lsgan=`` (True -> lsgan, False -> vanilla).
        target_real_label, target_fake_label: target values of lsgan/vanilla (1.0 and 0.0).
        from_logits: vanilla only. True (default): ``pred`` holds logits, the loss is
            ``binary_cross_entropy_with_logits`` (numerically stable, autocast-safe): build D **without** the
            final Sigmoid (``use_sigmoid=False``). False: ``pred`` holds probabilities from a D that ends in a
            Sigmoid (the reference's ``use_sigmoid=True`` with ``no_lsgan``); the loss is ``binary_cross_entropy``
            computed in float32 with autocast disabled (it is not autocast-safe in low precision).
        tensor: ignored; accepted for the reference signature ``GANLoss(use_lsgan, ..., tensor=...)``.

    Call: ``loss(pred, target_is_real, for_discriminator=True) -> Tensor[]`` (float32 scalar; float64 for float64
    predictions). ``pred``: a ``Tensor[N, 1, h, w]`` (any shape), a list of one discriminator's per-layer outputs,
    or the multiscale list (per scale) of lists (per layer); only the last entry of each scale is scored and the
    per-scale losses are summed. ``for_discriminator`` matters only for hinge: D uses ``relu(1 - x).mean()`` on
    real and ``relu(1 + x).mean()`` on fake, G uses ``-x.mean()`` (and must pass ``target_is_real=True``).
    """

    def __init__(
        self,
        mode: str | bool = "lsgan",
        target_real_label: float = 1.0,
        target_fake_label: float = 0.0,
        *,
        use_lsgan: bool | None = None,
        from_logits: bool = True,
        tensor: object = None,
    ):
        super().__init__()
        del tensor  # the reference's tensor type; targets here follow the prediction's dtype and device
        if use_lsgan is not None:
            if mode not in ("lsgan", True, False):
                raise ValueError(f"GANLoss: pass either mode={mode!r} or use_lsgan={use_lsgan!r}, not both")
            mode = bool(use_lsgan)
        if isinstance(mode, bool):
            mode = "lsgan" if mode else "vanilla"
        if mode not in _GAN_MODES:
            raise ValueError(f"GANLoss: mode must be one of {_GAN_MODES}, got {mode!r}")
        self.mode = mode
        self.real_label = float(target_real_label)
        self.fake_label = float(target_fake_label)
        self.from_logits = bool(from_logits)

    def extra_repr(self) -> str:
        s = f"mode={self.mode!r}"
        if self.mode != "hinge":
            s += f", real={self.real_label}, fake={self.fake_label}"
        if self.mode == "vanilla":
            s += f", from_logits={self.from_logits}"
        return s

    def _one(self, x: torch.Tensor, target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"GANLoss: predictions must be floating point, got {x.dtype}")
        # D's output is small: compute every loss on it in fp32, so a bf16 prediction does not round the loss.
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        if self.mode == "hinge":
            x = x.to(acc)
            if for_discriminator:
                return F.relu(1.0 - x).mean() if target_is_real else F.relu(1.0 + x).mean()
            if not target_is_real:
                raise ValueError("GANLoss(hinge): the generator loss is -D(fake).mean(); pass target_is_real=True")
            return -x.mean()
        value = self.real_label if target_is_real else self.fake_label
        if self.mode == "lsgan":
            x = x.to(acc)
            return F.mse_loss(x, torch.full_like(x, value))
        if self.from_logits:
            x = x.to(acc)
            return F.binary_cross_entropy_with_logits(x, torch.full_like(x, value))
        # Probabilities: binary_cross_entropy refuses to run under CUDA autocast, so leave autocast for it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(acc)
            return F.binary_cross_entropy(x, torch.full_like(x, value))

    def forward(
        self, pred: torch.Tensor | Sequence, target_is_real: bool, for_discriminator: bool = True
    ) -> torch.Tensor:
        finals = _final_predictions(pred)
        loss = self._one(finals[0], target_is_real, for_discriminator)
        for x in finals[1:]:
            loss = loss + self._one(x, target_is_real, for_discriminator)
        return loss


def feature_matching_loss(
    pred_fake: Sequence[Sequence[torch.Tensor]],
    pred_real: Sequence[Sequence[torch.Tensor]],
    num_D: int,
    n_layers_D: int,
    lambda_feat: float = 10.0,
) -> torch.Tensor:
    """Discriminator feature-matching loss of pix2pixHD.

    ``sum_i sum_j (4 / (n_layers_D + 1)) * (1 / num_D) * lambda_feat * L1(pred_fake[i][j], pred_real[i][j])``
    over the scales i < num_D and every layer j of a scale except the last (the final prediction). L1 is the
    mean absolute difference; the real features are detached (no gradient flows into D's real pass).

    Args:
        pred_fake, pred_real: the multiscale discriminator's outputs with intermediate features
            (``getIntermFeat=True``): a list of ``num_D`` lists of ``Tensor[N, C_j, h_j, w_j]``.
        num_D: number of discriminator scales. n_layers_D: the discriminator's ``n_layers``.
        lambda_feat: weight of the loss (pix2pixHD: 10).

    Returns:
        A float32 scalar tensor (float64 for float64 features).
    """
    if not isinstance(num_D, int) or num_D < 1:
        raise ValueError(f"num_D must be a positive int, got {num_D!r}")
    if not isinstance(n_layers_D, int) or n_layers_D < 0:
        raise ValueError(f"n_layers_D must be a non-negative int, got {n_layers_D!r}")
    for name, p in (("pred_fake", pred_fake), ("pred_real", pred_real)):
        if not isinstance(p, (list, tuple)) or any(not isinstance(s, (list, tuple)) for s in p):
            raise TypeError(f"{name} must be a list (per scale) of lists (per layer) of tensors")
        if len(p) != num_D:
            raise ValueError(f"{name} has {len(p)} scales, expected num_D={num_D}")
    weight = (4.0 / (n_layers_D + 1)) * (1.0 / num_D) * float(lambda_feat)
    loss: torch.Tensor | None = None
    for i, (fake_i, real_i) in enumerate(zip(pred_fake, pred_real, strict=True)):
        if len(fake_i) != len(real_i) or len(fake_i) == 0:
            raise ValueError(f"scale {i}: pred_fake has {len(fake_i)} layers, pred_real has {len(real_i)}")
        for j in range(len(fake_i) - 1):
            fake, real = fake_i[j], real_i[j]
            if fake.shape != real.shape:
                raise ValueError(f"scale {i} layer {j}: shapes differ, {tuple(fake.shape)} vs {tuple(real.shape)}")
            term = _l1_f32(fake, real.detach()) * weight
            loss = term if loss is None else loss + term
    if loss is None:  # only final predictions (getIntermFeat=False): nothing to match
        return torch.zeros((), device=pred_fake[0][-1].device)
    return loss


class FeatureMatchingLoss(nn.Module):
    """Module form of :func:`feature_matching_loss`: ``FeatureMatchingLoss(num_D, n_layers_D, lambda_feat=10.0)``,
    called as ``loss(pred_fake, pred_real) -> Tensor[]``."""

    def __init__(self, num_D: int, n_layers_D: int, lambda_feat: float = 10.0):
        super().__init__()
        self.num_D = num_D
        self.n_layers_D = n_layers_D
        self.lambda_feat = lambda_feat

    def extra_repr(self) -> str:
        return f"num_D={self.num_D}, n_layers_D={self.n_layers_D}, lambda_feat={self.lambda_feat}"

    def forward(
        self, pred_fake: Sequence[Sequence[torch.Tensor]], pred_real: Sequence[Sequence[torch.Tensor]]
    ) -> torch.Tensor:
        return feature_matching_loss(pred_fake, pred_real, self.num_D, self.n_layers_D, self.lambda_feat)


# ----------------------------------------------------------------------------------------------------
# VGG19 perceptual loss

# End indices (exclusive) in torchvision's vgg19().features of the slices ending at relu1_1 .. relu5_1.
_VGG_SLICE_ENDS = (2, 7, 12, 21, 30)
# Every conv index of vgg19().features (cfg "E"); the ones below 30 are used, 30..34 exist in the file.
_VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_VGG_UNUSED_CONVS = tuple(i for i in _VGG_CONVS if i >= _VGG_SLICE_ENDS[-1])


def _vgg19_features() -> nn.Sequential:
    """torchvision's ``vgg19(weights=None).features`` (randomly initialised, never downloaded)."""
    from torchvision.models import vgg

    try:  # only the convolutional part: vgg19() would also initialise a 120M-parameter classifier
        return vgg.make_layers(vgg.cfgs["E"], batch_norm=False)
    except (AttributeError, KeyError, TypeError):  # torchvision moved its helpers: take the public constructor
        return vgg.vgg19(weights=None).features


def find_vgg19_weights() -> str | None:
    """Look for torchvision's VGG19 weights in the local torch hub caches; never downloads.

    Searched, in order: ``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME``),
    ``$TORCH_HOME/hub/checkpoints`` and ``~/.cache/torch/hub/checkpoints``. Prefers ``vgg19-dcbb9e9d.pth``,
    then any other ``vgg19-*.pth`` (never ``vgg19_bn``).

    Returns:
        The file's path as a string, or None when none exists.
    """
    dirs: list[Path] = []
    try:
        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    except Exception:  # an odd hub configuration must not break a local lookup
        pass
    if os.environ.get("TORCH_HOME"):
        dirs.append(Path(os.environ["TORCH_HOME"]).expanduser() / "hub" / "checkpoints")
    dirs.append(Path("~/.cache/torch/hub/checkpoints").expanduser())
    for d in dirs:
        exact = d / VGG_WEIGHTS_FILE
        if exact.is_file():
            return str(exact)
    for d in dirs:
        if d.is_dir():
            found = sorted(p for p in d.glob("vgg19-*.pth") if p.is_file())
            if found:
                return str(found[0])
    return None


def _load_vgg19_state(weights: str | os.PathLike | Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Read a VGG19 state dict (path or mapping) -> ``{"features.N.weight": ...}`` restricted to the used convs."""
    if weights is None:
        raise ValueError(_NO_WEIGHTS_MESSAGE)
    if isinstance(weights, Mapping):
        state, where = dict(weights), "the given state dict"
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        where = f"'{path}'"
        if not path.is_file():
            raise FileNotFoundError(f"VGG19 weights file not found: {path} ({_NO_WEIGHTS_MESSAGE})")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any reader failure (pickle, zip, unsafe global) becomes one clear message
            raise ValueError(
                f"could not read VGG19 weights from {path}: {type(e).__name__}: {e}. Expected a torchvision "
                f"state_dict such as {VGG_WEIGHTS_FILE}"
            ) from e
        if not isinstance(state, Mapping):
            raise ValueError(f"VGG19 weights in {path} must be a state_dict (a dict of tensors), got {type(state)}")
    else:
        raise TypeError(f"VGG weights must be a path or a state dict, got {type(weights).__name__}")

    # A bare `vgg.features.state_dict()` has keys "0.weight": give them the "features." prefix.
    if state and all(k.split(".", 1)[0].isdigit() for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    expected = {f"features.{i}.{p}" for i in _VGG_CONVS if i < _VGG_SLICE_ENDS[-1] for p in ("weight", "bias")}
    allowed_extra = {f"features.{i}.{p}" for i in _VGG_UNUSED_CONVS for p in ("weight", "bias")}
    missing = sorted(expected - state.keys(), key=_key_order)
    unexpected = sorted(
        (k for k in state if k not in expected and k not in allowed_extra and not k.startswith("classifier.")),
        key=_key_order,
    )
    if missing or unexpected:
        raise ValueError(
            f"{where} is not a torchvision VGG19 state_dict: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    return {k: state[k] for k in expected}


def _key_order(k: str) -> tuple:
    parts = k.split(".")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


class VGG19(nn.Module):
    """Frozen VGG19 feature extractor: the activations relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.

    The layers are torchvision's ``vgg19(weights=None).features[0:30]`` (state_dict keys ``features.N.*`` as in
    torchvision's file); parameters have ``requires_grad=False`` and the module stays in eval mode.

    Args:
        weights: path of a torchvision VGG19 state_dict (``vgg19-dcbb9e9d.pth``: keys ``features.*`` and
            ``classifier.*``), a file/mapping with only the ``features.*`` keys, or None for random weights
            (tests only: a perceptual loss needs trained weights).

    Call: ``Tensor[N, 3, H, W] -> list of 5 Tensor[N, C_k, H / 2**k, W / 2**k]`` (C = 64, 128, 256, 512, 512), in
    the input's memory format (channels-last stays channels-last) and, under autocast, its compute dtype.
    Call ``.to(memory_format=torch.channels_last)`` once to store the weights channels-last too.
    """

    def __init__(self, weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        self.features = nn.Sequential(*list(_vgg19_features().children())[: _VGG_SLICE_ENDS[-1]])
        if weights is not None:
            state = {k[len("features.") :]: v for k, v in _load_vgg19_state(weights).items()}
            try:
                self.features.load_state_dict(state, strict=True)
            except RuntimeError as e:  # size mismatches: report them without the torch traceback noise
                raise ValueError(f"VGG19 weights do not fit torchvision's VGG19 architecture: {e}") from e
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19:
        # Frozen feature extractor: stays in eval mode whatever the surrounding model does.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f"VGG19 expects images of shape [N,3,H,W], got {tuple(x.shape)}")
        outs = []
        start = 0
        for end in _VGG_SLICE_ENDS:
            for i in range(start, end):
                x = self.features[i](x)
            outs.append(x)
            start = end
        return outs


class VGGLoss(nn.Module):
    """VGG19 perceptual loss: ``sum_k w_k * L1(vgg(x)_k, vgg(y)_k)`` over relu1_1..relu5_1, target detached.

    Args:
        weights_path: torchvision VGG19 weights (``vgg19-dcbb9e9d.pth``) or a ``features.*``-only state dict
            (path or mapping); loaded with ``torch.load(weights_only=True)``. Required: None raises a
            ValueError saying how to pass weights or turn the loss off. Use :func:`find_vgg19_weights` to
            locate a copy in the local torch hub cache; nothing is ever downloaded.
        weights: per-layer weights (pix2pixHD: 1/32, 1/16, 1/8, 1/4, 1).
        normalize_input: False (the reference): images in [-1, 1] go to VGG as they are. True: map [-1, 1] to
            [0, 1] and then to ImageNet mean/std first (what the VGG weights were trained on).

    Call: ``loss(x, y) -> Tensor[]`` (float32) with x, y ``Tensor[N, 3, H, W]`` in [-1, 1]; x is the generated
    image (gradients flow into it), y the real one (its features are computed without autograd). Works under
    autocast and with channels-last inputs.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike | Mapping[str, torch.Tensor] | None,
        weights: Sequence[float] = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0),
        normalize_input: bool = False,
    ):
        super().__init__()
        if weights_path is None:
            raise ValueError(_NO_WEIGHTS_MESSAGE)
        if len(weights) != len(_VGG_SLICE_ENDS):
            raise ValueError(f"VGGLoss: weights must have {len(_VGG_SLICE_ENDS)} entries, got {len(weights)}")
        self.vgg = VGG19(weights_path)
        self.layer_weights = tuple(float(w) for w in weights)
        self.normalize_input = bool(normalize_input)
        # Non-persistent: the loss's state_dict holds only the VGG weights.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"weights={self.layer_weights}, normalize_input={self.normalize_input}"

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize_input:
            return x
        return ((x + 1.0) * 0.5 - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"VGGLoss: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        fx = self.vgg(self._prepare(x))
        # The target's features are detached in the loss anyway: skip recording its graph.
        with torch.no_grad():
            fy = self.vgg(self._prepare(y))
        loss = self.layer_weights[0] * _l1_f32(fx[0], fy[0])
        for w, a, b in zip(self.layer_weights[1:], fx[1:], fy[1:], strict=True):
            loss = loss + w * _l1_f32(a, b)
        return loss
