"""The pix2pixHD networks, state_dict-compatible with NVIDIA/pix2pixHD's ``models/networks.py``.

Constructor arguments, defaults, module layout and therefore ``state_dict`` keys follow the reference
implementation, so ``latest_net_G.pth`` / ``latest_net_D.pth`` / ``latest_net_E.pth`` trained there load here
with strict key matching (see :mod:`pix2pixhd_fast.models.checkpoint`) and checkpoints trained here load there.

Every network takes ``ops='fast' | 'reference'``:

- ``'fast'`` (default): each instance-norm + activation pair runs as one fused
  :class:`~pix2pixhd_fast.nn.InstanceNormAct` (``instance_norm_act``) placed in the norm's Sequential slot, and
  the activation's slot holds ``nn.Identity`` (so indices and keys stay those of the reference). ReLU becomes
  slope 0.0, the discriminator's LeakyReLU(0.2) slope 0.2, and the ResnetBlock's second norm (no activation)
  slope 1.0. The Encoder pools with the ``instance_avg_pool`` kernel. Every ``ReflectionPad2d`` that reads a
  fused norm's output is folded into it (``InstanceNormActPad``: the norm writes the padded buffer the next
  convolution reads; the pad's slot holds ``nn.Identity``), and with reflection padding a chain of ResnetBlocks
  passes its activations padded: each block's last norm adds the skip input and writes the block output already
  padded for the next block (see :class:`ResnetBlock`).
- ``'reference'``: exactly the reference modules (``nn.InstanceNorm2d`` + ``nn.ReLU``/``nn.LeakyReLU``) and the
  plain-PyTorch pooling of :mod:`pix2pixhd_fast.reference`: the baseline for tests and benchmarks.

Both give identical state_dict keys and (fp32) the same outputs. Batch norm (``norm='batch'``) and
instance norm with running statistics are not fused: they keep the reference modules in both modes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from .. import reference
from ..nn import InstanceNormAct, InstanceNormActPad
from ..nn.convert import activation_slope, fusable_norm, fuse_norm_pads, with_pad
from ..ops import instance_avg_pool

__all__ = [
    "OPS_CHOICES",
    "get_norm_layer",
    "weights_init",
    "ResnetBlock",
    "GlobalGenerator",
    "LocalEnhancer",
    "Encoder",
    "NLayerDiscriminator",
    "MultiscaleDiscriminator",
    "define_G",
    "define_D",
]

OPS_CHOICES = ("fast", "reference")

NormLayer = Callable[[int], nn.Module]


# ----------------------------------------------------------------------------------------------------
# Helpers


def get_norm_layer(norm_type: str = "instance") -> NormLayer:
    """The reference ``--norm`` option as a norm-layer factory ``num_features -> nn.Module``.

    ``'instance'``: ``nn.InstanceNorm2d(affine=False)`` (no state_dict keys); ``'batch'``:
    ``nn.BatchNorm2d(affine=True)``. With ``ops='fast'`` the networks swap the instance norm for the fused module.
    """
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False)
    raise ValueError(f"normalization layer [{norm_type!r}] is not supported: use 'instance' or 'batch'")


def weights_init(m: nn.Module) -> None:
    """The reference initialisation, for ``net.apply``: conv weights ~ N(0, 0.02), BatchNorm2d weight ~ N(1, 0.02).

    Matched by class name as the reference does ('Conv' also matches ConvTranspose2d; conv biases keep
    PyTorch's default init).
    """
    name = type(m).__name__
    if "Conv" in name:
        m.weight.data.normal_(0.0, 0.02)
    elif "BatchNorm2d" in name:
        m.weight.data.normal_(1.0, 0.02)
        m.bias.data.fill_(0)


def _check_ops(ops: str) -> str:
    if ops not in OPS_CHOICES:
        raise ValueError(f"ops must be one of {OPS_CHOICES}, got {ops!r}")
    return ops


def _resolve_norm(norm_layer: NormLayer | str) -> NormLayer:
    """Accept the reference's factories (``nn.BatchNorm2d``, ``functools.partial(...)``) or a ``--norm`` string."""
    if isinstance(norm_layer, str):
        return get_norm_layer(norm_layer)
    if not callable(norm_layer):
        raise TypeError(f"norm_layer must be a callable num_features -> nn.Module or a string, got {norm_layer!r}")
    return norm_layer


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _norm_act(norm_layer: NormLayer, num_features: int, act: nn.Module | None, ops: str) -> list[nn.Module]:
    """The ``[norm, activation]`` pair (or ``[norm]`` when ``act`` is None) in the reference's slots.

    With ``ops='fast'`` an ``nn.InstanceNorm2d`` without running stats followed by ReLU / LeakyReLU / nothing
    becomes one fused InstanceNormAct (same eps, affine and hence state_dict keys) with ``nn.Identity`` in the
    activation's slot. Anything else (batch norm, other activations) keeps the modules as built.
    """
    norm = norm_layer(num_features)
    slope = 1.0 if act is None else activation_slope(act)
    fusable = type(norm) is nn.InstanceNorm2d and not norm.track_running_stats and slope is not None
    if ops == "fast" and fusable:
        fused = InstanceNormAct(num_features, eps=norm.eps, affine=norm.affine, negative_slope=slope)
        return [fused] if act is None else [fused, nn.Identity()]
    return [norm] if act is None else [norm, act]


def _fuse_padded(layers: list[nn.Module]) -> None:
    """Fast networks: pass activations padded wherever a reflection pad reads them (in place, same slots).

    Each run of fused ResnetBlocks is chained: the fused norm before the first block (only Identity slots between)
    writes its output padded by 1, every block but the last writes its output padded by 1 for the next, and the
    last block absorbs a directly following ``ReflectionPad2d(p)``. Then every remaining reflection pad that reads
    a fused norm's output is folded into that norm.
    """
    i = 0
    while i < len(layers):
        if not (isinstance(layers[i], ResnetBlock) and layers[i].fused_residual):
            i += 1
            continue
        k = i
        while k + 1 < len(layers) and isinstance(layers[k + 1], ResnetBlock) and layers[k + 1].fused_residual:
            k += 1
        j = i - 1
        while j >= 0 and type(layers[j]) is nn.Identity:
            j -= 1
        first_padded = j >= 0 and fusable_norm(layers[j])
        if first_padded:
            layers[j] = with_pad(layers[j], 1)
        last_pad = 0
        if k + 1 < len(layers) and type(layers[k + 1]) is nn.ReflectionPad2d:
            left, right, top, bottom = layers[k + 1].padding
            if left == right == top == bottom:
                last_pad = left
                layers[k + 1] = nn.Identity()
        for b in range(i, k + 1):
            layers[b].chain(padded_input=b > i or first_padded, out_pad=1 if b < k else last_pad)
        i = k + 1
    fuse_norm_pads(layers)


def _unpad_tail(layers: list[nn.Module]) -> None:
    """Undo a pad folded into the last fused norm of ``layers`` (its consumer was cut off), in place."""
    j = len(layers) - 1
    while j >= 0 and type(layers[j]) is nn.Identity:
        j -= 1
    if j >= 0 and isinstance(layers[j], InstanceNormActPad):
        layers[j].pad = 0


# ----------------------------------------------------------------------------------------------------
# Generators


class ResnetBlock(nn.Module):
    """Residual block ``x + conv_block(x)``: ``Tensor[N, dim, H, W] -> Tensor[N, dim, H, W]``.

    ``conv_block`` = [pad, Conv3x3, norm, activation, (Dropout 0.5), pad, Conv3x3, norm], where the pads are
    ReflectionPad2d(1) / ReplicationPad2d(1) for ``padding_type`` 'reflect' / 'replicate' and absent for 'zero'
    (the convs pad by 1 instead), so the Sequential indices (keys ``conv_block.1.*``, ``conv_block.5.*`` for
    reflect; ``conv_block.0.*``, ``conv_block.3.*`` for zero) are the reference's.

    With ``ops='fast'``, reflection padding and instance norm, the block is fused: the inner pad is folded into the
    first norm (unless Dropout sits between them), and the last norm (``InstanceNormActPad``, slope 1.0) adds the
    skip input itself, ``pad(norm(conv(...)) + x)``. A generator chains such blocks (:meth:`chain`): a block
    then takes its input already padded by 1 (its first pad slot holds Identity and the skip input is the interior
    view of the input) and writes its output padded for the next block, so each block output is written once.
    """

    def __init__(
        self,
        dim: int,
        padding_type: str,
        norm_layer: NormLayer | str,
        activation: nn.Module | None = None,
        use_dropout: bool = False,
        *,
        ops: str = "fast",
        fuse_pads: bool = True,
    ):
        super().__init__()
        _check_int("dim", dim, 1)
        _check_ops(ops)
        norm_layer = _resolve_norm(norm_layer)
        if activation is None:
            activation = nn.ReLU(True)
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, activation, use_dropout, ops, fuse_pads)
        # Plain attributes (no state): whether the last norm adds the skip input, and whether the input arrives
        # padded by 1.
        self.fused_residual = padding_type == "reflect" and type(self.conv_block[-1]) is InstanceNormActPad
        self.padded_input = False

    @staticmethod
    def _pad(padding_type: str) -> tuple[list[nn.Module], int]:
        if padding_type == "reflect":
            return [nn.ReflectionPad2d(1)], 0
        if padding_type == "replicate":
            return [nn.ReplicationPad2d(1)], 0
        if padding_type == "zero":
            return [], 1
        raise ValueError(f"padding [{padding_type!r}] is not implemented: use 'reflect', 'replicate' or 'zero'")

    def build_conv_block(
        self,
        dim: int,
        padding_type: str,
        norm_layer: NormLayer,
        activation: nn.Module,
        use_dropout: bool,
        ops: str = "fast",
        fuse_pads: bool = True,
    ) -> nn.Sequential:
        """The block's layers as one Sequential (see the class docstring for the layout)."""
        pad, p = self._pad(padding_type)
        layers: list[nn.Module] = [*pad, nn.Conv2d(dim, dim, kernel_size=3, padding=p)]
        layers += _norm_act(norm_layer, dim, activation, ops)
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        pad, p = self._pad(padding_type)
        layers += [*pad, nn.Conv2d(dim, dim, kernel_size=3, padding=p)]
        # The second norm has no activation: fused, it is instance_norm_act with slope 1.0.
        layers += _norm_act(norm_layer, dim, None, ops)
        if ops == "fast" and fuse_pads and padding_type == "reflect" and fusable_norm(layers[-1]):
            # The last norm adds the skip input (pad 0 until a generator chains the block); the inner pad folds
            # into the first norm when only its activation's Identity slot sits between them.
            layers[-1] = with_pad(layers[-1], 0)
            fuse_norm_pads(layers)
        return nn.Sequential(*layers)

    def chain(self, padded_input: bool, out_pad: int) -> None:
        """Fused blocks only: take the input already padded by 1 (``padded_input``; the previous layer wrote it so)
        and write the output padded by ``out_pad`` (1 for a following block, 0 for an unpadded consumer)."""
        if not self.fused_residual:
            raise RuntimeError("ResnetBlock.chain needs a fused block (ops='fast', reflection padding, instance norm)")
        self.padded_input = padded_input
        self.conv_block[0] = nn.Identity() if padded_input else nn.ReflectionPad2d(1)
        self.conv_block[-1].pad = out_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused_residual:
            return x + self.conv_block(x)
        # x is [N, C, H+2, W+2] when padded_input: its interior is the block's input.
        skip = x[:, :, 1:-1, 1:-1] if self.padded_input else x
        h = x
        layers = list(self.conv_block)
        for m in layers[:-1]:
            h = m(h)
        if skip.dtype != h.dtype:  # autocast: a float32 skip input next to bf16 convolutions
            skip = skip.to(h.dtype)
        return layers[-1](h, skip)


class GlobalGenerator(nn.Module):
    """The global generator G1: ``Tensor[N, input_nc, H, W] -> Tensor[N, output_nc, H, W]`` in [-1, 1].

    One ``self.model`` Sequential: ReflectionPad2d(3), Conv7x7(input_nc -> ngf), norm, ReLU; ``n_downsampling``
    x [Conv3x3 stride 2 (channels x2), norm, ReLU]; ``n_blocks`` ResnetBlocks at ``ngf * 2**n_downsampling``
    channels; ``n_downsampling`` x [ConvTranspose3x3 stride 2 (channels / 2), norm, ReLU]; ReflectionPad2d(3),
    Conv7x7(ngf -> output_nc), Tanh. H and W should be divisible by ``2**n_downsampling`` (else the output size
    differs from the input's, as in the reference).

    ``norm_layer`` defaults to ``nn.BatchNorm2d`` as in the reference class; ``define_G`` defaults to instance norm.
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 64,
        n_downsampling: int = 3,
        n_blocks: int = 9,
        norm_layer: NormLayer | str = nn.BatchNorm2d,
        padding_type: str = "reflect",
        *,
        ops: str = "fast",
        fuse_pads: bool = True,
    ):
        super().__init__()
        for name, value, minimum in (
            ("input_nc", input_nc, 1),
            ("output_nc", output_nc, 1),
            ("ngf", ngf, 1),
            ("n_downsampling", n_downsampling, 0),
            ("n_blocks", n_blocks, 0),
        ):
            _check_int(name, value, minimum)
        self.ops = _check_ops(ops)
        norm_layer = _resolve_norm(norm_layer)
        ResnetBlock._pad(padding_type)  # validate early, even when n_blocks == 0

        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0)]
        layers += _norm_act(norm_layer, ngf, nn.ReLU(True), ops)
        for i in range(n_downsampling):
            c = ngf * 2**i
            layers.append(nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1))
            layers += _norm_act(norm_layer, c * 2, nn.ReLU(True), ops)
        c = ngf * 2**n_downsampling
        for _ in range(n_blocks):
            layers.append(ResnetBlock(c, padding_type, norm_layer, nn.ReLU(True), ops=ops, fuse_pads=fuse_pads))
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            layers.append(nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1))
            layers += _norm_act(norm_layer, c // 2, nn.ReLU(True), ops)
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        if ops == "fast" and fuse_pads:
            _fuse_padded(layers)
        self.model = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)


class LocalEnhancer(nn.Module):
    """Coarse-to-fine generator G1 + ``n_local_enhancers`` local enhancers: ``[N, input_nc, H, W] -> [N, output_nc,
    H, W]``.

    ``self.model`` is a GlobalGenerator with ``ngf * 2**n_local_enhancers`` filters minus its last three modules
    (pad, conv, tanh), run on the input downsampled ``n_local_enhancers`` times by
    ``AvgPool2d(3, 2, 1, count_include_pad=False)``. Enhancer n (1..N, ``ngf * 2**(N - n)`` filters) has a front end
    ``model{n}_1`` on the input downsampled ``N - n`` times, whose output is summed element-wise with the previous
    stage's last feature map and fed to ``model{n}_2`` (ResnetBlocks + transposed conv; the last one ends with
    the output layers). H and W should be divisible by ``2**(n_local_enhancers + n_downsample_global)``.

    As in the reference, the global part always uses reflection padding (``padding_type`` applies to the local
    ResnetBlocks only), so checkpoints line up key for key.
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 32,
        n_downsample_global: int = 3,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        norm_layer: NormLayer | str = nn.BatchNorm2d,
        padding_type: str = "reflect",
        *,
        ops: str = "fast",
        fuse_pads: bool = True,
    ):
        super().__init__()
        _check_int("ngf", ngf, 1)
        _check_int("n_local_enhancers", n_local_enhancers, 1)
        _check_int("n_blocks_local", n_blocks_local, 0)
        self.ops = _check_ops(ops)
        norm_layer = _resolve_norm(norm_layer)
        ResnetBlock._pad(padding_type)
        self.n_local_enhancers = n_local_enhancers

        ngf_global = ngf * 2**n_local_enhancers
        global_layers = GlobalGenerator(
            input_nc,
            output_nc,
            ngf_global,
            n_downsample_global,
            n_blocks_global,
            norm_layer,
            ops=ops,
            fuse_pads=fuse_pads,
        ).model
        layers = list(global_layers)[:-3]
        _unpad_tail(layers)  # its output is summed with the first enhancer's front end, unpadded
        self.model = nn.Sequential(*layers)

        for n in range(1, n_local_enhancers + 1):
            c = ngf * 2 ** (n_local_enhancers - n)
            front: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, c, kernel_size=7, padding=0)]
            front += _norm_act(norm_layer, c, nn.ReLU(True), ops)
            front.append(nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1))
            front += _norm_act(norm_layer, c * 2, nn.ReLU(True), ops)
            back: list[nn.Module] = [
                ResnetBlock(c * 2, padding_type, norm_layer, nn.ReLU(True), ops=ops, fuse_pads=fuse_pads)
                for _ in range(n_blocks_local)
            ]
            back.append(nn.ConvTranspose2d(c * 2, c, kernel_size=3, stride=2, padding=1, output_padding=1))
            back += _norm_act(norm_layer, c, nn.ReLU(True), ops)
            if n == n_local_enhancers:
                back += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
            if ops == "fast" and fuse_pads:
                _fuse_padded(back)
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))

        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        pyramid = [input]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front = getattr(self, f"model{n}_1")
            back = getattr(self, f"model{n}_2")
            out = back(front(pyramid[self.n_local_enhancers - n]) + out)
        return out


class Encoder(nn.Module):
    """Instance-wise feature encoder E: ``(Tensor[N, input_nc, H, W], inst) -> Tensor[N, output_nc, H, W]``.

    An encoder-decoder (``n_downsampling`` strided convs, as many transposed convs, Tanh) whose output is
    averaged per instance: every pixel gets the mean, per channel, of the pixels of its image with the same id
    in ``inst`` (``Tensor[N, 1, H, W]`` or ``[N, H, W]`` of integer ids, or float holding integers). ``ops='fast'``
    pools with the ``instance_avg_pool`` kernel (no Python loop, no host sync).
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: int = 32,
        n_downsampling: int = 4,
        norm_layer: NormLayer | str = nn.BatchNorm2d,
        *,
        ops: str = "fast",
        fuse_pads: bool = True,
    ):
        super().__init__()
        for name, value, minimum in (
            ("input_nc", input_nc, 1),
            ("output_nc", output_nc, 1),
            ("ngf", ngf, 1),
            ("n_downsampling", n_downsampling, 0),
        ):
            _check_int(name, value, minimum)
        self.ops = _check_ops(ops)
        norm_layer = _resolve_norm(norm_layer)
        self.output_nc = output_nc

        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0)]
        layers += _norm_act(norm_layer, ngf, nn.ReLU(True), ops)
        for i in range(n_downsampling):
            c = ngf * 2**i
            layers.append(nn.Conv2d(c, c * 2, kernel_size=3, stride=2, padding=1))
            layers += _norm_act(norm_layer, c * 2, nn.ReLU(True), ops)
        for i in range(n_downsampling):
            c = ngf * 2 ** (n_downsampling - i)
            layers.append(nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1))
            layers += _norm_act(norm_layer, c // 2, nn.ReLU(True), ops)
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        if ops == "fast" and fuse_pads:
            _fuse_padded(layers)
        self.model = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        out = self.model(input)
        if not isinstance(inst, torch.Tensor):
            raise TypeError(f"inst must be a torch.Tensor, got {type(inst).__name__}")
        if inst.shape[0] != out.shape[0] or inst.shape[-2:] != out.shape[-2:]:
            raise ValueError(
                f"Encoder: inst {tuple(inst.shape)} must match the output's batch and size "
                f"{(out.shape[0], 1, *out.shape[-2:])} (H and W divisible by 2**n_downsampling)"
            )
        if self.ops == "fast":
            return instance_avg_pool(out, inst)
        return reference.instance_avg_pool(out, inst)


# ----------------------------------------------------------------------------------------------------
# Discriminators


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator: ``Tensor[N, input_nc, H, W] -> Tensor[N, 1, H', W']`` (or a list of features).

    Groups: [Conv4x4 s2, LeakyReLU 0.2]; ``n_layers - 1`` x [Conv4x4 s2, norm, LeakyReLU] doubling the filters
    up to 512; [Conv4x4 s1, norm, LeakyReLU]; [Conv4x4 s1 -> 1 channel]; plus [Sigmoid] with ``use_sigmoid``
    (all convs pad 2). With ``getIntermFeat`` each group is a Sequential ``model{k}`` and ``forward`` returns the
    list of the outputs of groups ``0 .. n_layers + 1``; the Sigmoid group, when there is one, is then *not*
    applied (the reference's behaviour, kept for parity). Otherwise the groups form one ``self.model``.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: NormLayer | str = nn.BatchNorm2d,
        use_sigmoid: bool = False,
        getIntermFeat: bool = False,  # noqa: N803 (the reference's name)
        *,
        ops: str = "fast",
    ):
        super().__init__()
        _check_int("input_nc", input_nc, 1)
        _check_int("ndf", ndf, 1)
        _check_int("n_layers", n_layers, 1)
        self.ops = _check_ops(ops)
        norm_layer = _resolve_norm(norm_layer)
        self.getIntermFeat = getIntermFeat
        self.n_layers = n_layers

        kw, padw = 4, 2

        def lrelu() -> nn.Module:
            return nn.LeakyReLU(0.2, True)

        groups: list[list[nn.Module]] = [[nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), lrelu()]]
        nf = ndf
        for _ in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            conv = nn.Conv2d(nf_prev, nf, kw, stride=2, padding=padw)
            groups.append([conv, *_norm_act(norm_layer, nf, lrelu(), ops)])
        nf_prev, nf = nf, min(nf * 2, 512)
        conv = nn.Conv2d(nf_prev, nf, kw, stride=1, padding=padw)
        groups.append([conv, *_norm_act(norm_layer, nf, lrelu(), ops)])
        groups.append([nn.Conv2d(nf, 1, kw, stride=1, padding=padw)])
        if use_sigmoid:
            groups.append([nn.Sigmoid()])

        if getIntermFeat:
            for k, group in enumerate(groups):
                setattr(self, f"model{k}", nn.Sequential(*group))
        else:
            self.model = nn.Sequential(*[m for group in groups for m in group])

    def forward(self, input: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not self.getIntermFeat:
            return self.model(input)
        feats = []
        x = input
        for k in range(self.n_layers + 2):
            x = getattr(self, f"model{k}")(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGAN discriminators on the input downsampled 0, 1, ... times.

    ``forward(Tensor[N, input_nc, H, W]) -> list`` of ``num_D`` lists: entry i comes from the input downsampled i
    times (``AvgPool2d(3, 2, 1, count_include_pad=False)``), judged by the discriminator registered with index
    ``num_D - 1 - i`` (the reference's ordering), and holds its intermediate features (``getIntermFeat``,
    ``n_layers + 2`` tensors, the last being the prediction) or ``[prediction]``. Modules are registered as
    ``scale{i}_layer{j}`` (getIntermFeat) or ``layer{i}``, as in the reference.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm_layer: NormLayer | str = nn.BatchNorm2d,
        use_sigmoid: bool = False,
        num_D: int = 3,  # noqa: N803
        getIntermFeat: bool = False,  # noqa: N803
        *,
        ops: str = "fast",
    ):
        super().__init__()
        _check_int("num_D", num_D, 1)
        self.ops = _check_ops(ops)
        norm_layer = _resolve_norm(norm_layer)
        self.num_D = num_D
        self.n_layers = n_layers
        self.getIntermFeat = getIntermFeat

        for i in range(num_D):
            net = NLayerDiscriminator(input_nc, ndf, n_layers, norm_layer, use_sigmoid, getIntermFeat, ops=ops)
            if getIntermFeat:
                for j in range(n_layers + 2):
                    setattr(self, f"scale{i}_layer{j}", getattr(net, f"model{j}"))
            else:
                setattr(self, f"layer{i}", net.model)
        self.downsample = nn.AvgPool2d(3, stride=2, padding=[1, 1], count_include_pad=False)

    def _layers(self, i: int) -> list[nn.Module]:
        if self.getIntermFeat:
            return [getattr(self, f"scale{i}_layer{j}") for j in range(self.n_layers + 2)]
        return [getattr(self, f"layer{i}")]

    def forward(self, input: torch.Tensor) -> list[list[torch.Tensor]]:
        result = []
        x = input
        for i in range(self.num_D):
            feats = []
            h = x
            for layer in self._layers(self.num_D - 1 - i):
                h = layer(h)
                feats.append(h)
            result.append(feats)
            if i != self.num_D - 1:
                x = self.downsample(x)
        return result


# ----------------------------------------------------------------------------------------------------
# Factories (the reference's argument order)


def _to_gpu(net: nn.Module, gpu_ids: list[int] | tuple[int, ...] | None) -> nn.Module:
    if gpu_ids:
        if not torch.cuda.is_available():
            raise RuntimeError(f"gpu_ids={list(gpu_ids)} given but CUDA is not available (pass gpu_ids=[] for CPU)")
        net = net.to(torch.device("cuda", gpu_ids[0]))
    return net


def define_G(  # noqa: N802 (the reference's name)
    input_nc: int,
    output_nc: int,
    ngf: int,
    netG: str,  # noqa: N803
    n_downsample_global: int = 3,
    n_blocks_global: int = 9,
    n_local_enhancers: int = 1,
    n_blocks_local: int = 3,
    norm: str = "instance",
    gpu_ids: list[int] | tuple[int, ...] | None = None,
    *,
    ops: str = "fast",
    fuse_pads: bool = True,
) -> nn.Module:
    """Build and initialise a generator as the reference ``define_G`` does (``--netG global | local | encoder``).

    'encoder' builds :class:`Encoder` with ``n_downsample_global`` as its ``n_downsampling``. Weights follow
    :func:`weights_init`; with ``gpu_ids`` the network moves to ``cuda:gpu_ids[0]``. ``fuse_pads=False`` keeps
    the reflection pads as modules beside the fused norms (``ops='fast'`` only): the benchmark's ablation of the
    padded-output kernels; outputs and keys are the same either way.
    """
    norm_layer = get_norm_layer(norm)
    if netG == "global":
        net: nn.Module = GlobalGenerator(
            input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, norm_layer, ops=ops, fuse_pads=fuse_pads
        )
    elif netG == "local":
        net = LocalEnhancer(
            input_nc,
            output_nc,
            ngf,
            n_downsample_global,
            n_blocks_global,
            n_local_enhancers,
            n_blocks_local,
            norm_layer,
            ops=ops,
            fuse_pads=fuse_pads,
        )
    elif netG == "encoder":
        net = Encoder(input_nc, output_nc, ngf, n_downsample_global, norm_layer, ops=ops, fuse_pads=fuse_pads)
    else:
        raise ValueError(f"generator {netG!r} is not implemented: use 'global', 'local' or 'encoder'")
    net = _to_gpu(net, gpu_ids)
    net.apply(weights_init)
    return net


def define_D(  # noqa: N802
    input_nc: int,
    ndf: int,
    n_layers_D: int,  # noqa: N803
    norm: str = "instance",
    use_sigmoid: bool = False,
    num_D: int = 1,  # noqa: N803
    getIntermFeat: bool = False,  # noqa: N803
    gpu_ids: list[int] | tuple[int, ...] | None = None,
    *,
    ops: str = "fast",
) -> MultiscaleDiscriminator:
    """Build and initialise a :class:`MultiscaleDiscriminator` as the reference ``define_D`` does."""
    net = MultiscaleDiscriminator(
        input_nc, ndf, n_layers_D, get_norm_layer(norm), use_sigmoid, num_D, getIntermFeat, ops=ops
    )
    net = _to_gpu(net, gpu_ids)
    net.apply(weights_init)
    return net
