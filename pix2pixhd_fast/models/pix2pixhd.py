"""The pix2pixHD model: generator, multiscale discriminator, optional feature encoder, input encoding and losses.

This is the reference ``Pix2PixHDModel`` restated on our operators: the one-hot label map, the instance boundary
map and the encoded features are built on the device in one ``encode_input`` call; the discriminator passes on
real and generated images are batched into one call when instance norm makes that exact (per-sample
statistics); the generator's adversarial pass runs with D's parameters frozen, so no gradient is computed for D
weights that the reference would zero before D's own step. The training loop (optimizers, AMP, checkpoints)
lives in :mod:`pix2pixhd_fast.train`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import ops, reference
from .losses import GANLoss, VGGLoss, feature_matching_loss
from .networks import define_D, define_G

__all__ = ["Pix2PixHDModel", "ImagePool", "LossTerms", "input_channels"]


def input_channels(opt: argparse.Namespace) -> tuple[int, int]:
    """(label channels fed to G and D, extra feature channels fed to G) for the options."""
    label = opt.label_nc if opt.label_nc != 0 else opt.input_nc
    if not opt.no_instance:
        label += 1
    return label, (opt.feat_num if opt.use_features else 0)


@dataclass
class LossTerms:
    """The five loss terms of one iteration (0-d float32 tensors; VGG/FM are zeros when disabled)."""

    G_GAN: torch.Tensor
    G_GAN_Feat: torch.Tensor
    G_VGG: torch.Tensor
    D_real: torch.Tensor
    D_fake: torch.Tensor

    @property
    def loss_G(self) -> torch.Tensor:
        return self.G_GAN + self.G_GAN_Feat + self.G_VGG

    @property
    def loss_D(self) -> torch.Tensor:
        return (self.D_fake + self.D_real) * 0.5

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake")}


class ImagePool:
    """The reference's history of generated images (``--pool_size``): with a full pool, each query returns a
    random older image half of the time (and stores the new one in its place). Seeded by ``generator``."""

    def __init__(self, pool_size: int, generator: torch.Generator | None = None):
        self.pool_size = int(pool_size)
        self.images: list[torch.Tensor] = []
        self.generator = generator

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        out = []
        for img in images.detach().unbind(0):
            img = img.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(img)
                out.append(img)
            elif torch.rand((), generator=self.generator).item() > 0.5:
                k = int(torch.randint(0, self.pool_size, (), generator=self.generator))
                out.append(self.images[k].clone())
                self.images[k] = img
            else:
                out.append(img)
        return torch.cat(out, 0)


class Pix2PixHDModel(nn.Module):
    """pix2pixHD's networks and losses, built from reference-style options.

    Args:
        opt: options as produced by :func:`pix2pixhd_fast.options.parse_train` (or ``parse_test``): label_nc,
            input_nc, output_nc, netG, ngf, n_downsample_global, n_blocks_global, n_local_enhancers,
            n_blocks_local, norm, no_instance, instance_feat/label_feat, feat_num, nef, n_downsample_E, and for
            training num_D, n_layers_D, ndf, gan_mode, no_ganFeat_loss, no_vgg_loss, lambda_feat, pool_size,
            vgg_weights; plus ``ops`` ('fast' | 'reference').
        is_train: build D and the losses (otherwise only G, and E when features are generated).

    Inputs of :meth:`encode` / :meth:`compute_losses`: ``label`` ``Tensor[N, 1, H, W]`` integer class ids (or
    ``Tensor[N, input_nc, H, W]`` float when label_nc == 0), ``inst`` ``Tensor[N, 1, H, W]`` integer instance ids,
    ``image`` ``Tensor[N, output_nc, H, W]`` in [-1, 1], ``feat`` ``Tensor[N, feat_num, H, W]`` precomputed
    features (``--load_features``).
    """

    def __init__(self, opt: argparse.Namespace, is_train: bool = True):
        super().__init__()
        self.opt = opt
        self.is_train = is_train
        self.use_ops = getattr(opt, "ops", "fast")
        self.check_inputs = True  # label range / id checks in encode_input (the trainer turns them off)
        label_ch, feat_ch = input_channels(opt)
        self.label_channels = label_ch
        g_kwargs = dict(
            n_downsample_global=opt.n_downsample_global,
            n_blocks_global=opt.n_blocks_global,
            n_local_enhancers=opt.n_local_enhancers,
            n_blocks_local=opt.n_blocks_local,
            norm=opt.norm,
            ops=self.use_ops,
            fuse_pads=not getattr(opt, "no_fuse_pads", False),
        )
        self.netG = define_G(label_ch + feat_ch, opt.output_nc, opt.ngf, opt.netG, **g_kwargs)
        self.netE = None
        if opt.gen_features:
            self.netE = define_G(
                opt.output_nc,
                opt.feat_num,
                opt.nef,
                "encoder",
                opt.n_downsample_E,
                norm=opt.norm,
                ops=self.use_ops,
                fuse_pads=g_kwargs["fuse_pads"],
            )
        self.netD = None
        if is_train:
            self.netD = define_D(
                label_ch + opt.output_nc,
                opt.ndf,
                opt.n_layers_D,
                opt.norm,
                use_sigmoid=False,  # vanilla GAN runs on logits (BCE-with-logits: same loss, autocast-safe)
                num_D=opt.num_D,
                getIntermFeat=not opt.no_ganFeat_loss,
                ops=self.use_ops,
            )
            self.criterionGAN = GANLoss(opt.gan_mode)
            self.criterionVGG = None if opt.no_vgg_loss else VGGLoss(opt.vgg_weights)
            self.fake_pool = ImagePool(opt.pool_size)

    # ---------------------------------------------------------------------------------------------------------
    def _edges(self, inst: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.use_ops == "fast":
            return ops.instance_boundary(inst, dtype)
        return reference.instance_boundary(inst, dtype)

    def encode(
        self,
        label: torch.Tensor,
        inst: torch.Tensor | None,
        feat: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build G's input and the label part of D's input.

        Returns ``(g_input [N, label_ch + feat_ch, H, W], d_label [N, label_ch, H, W])``, both ``dtype`` (``d_label``
        is a view of ``g_input``'s first channels). ``feat`` (if any) is differentiable: gradients reach E.
        """
        opt = self.opt
        inst = None if opt.no_instance else inst
        if not opt.no_instance and inst is None:
            raise ValueError("the model uses instance maps (no --no_instance) but no instance map was given")
        if opt.label_nc == 0:
            parts = [label.to(dtype)]
            if inst is not None:
                parts.append(self._edges(inst, dtype))
            if feat is not None:
                parts.append(feat.to(dtype))
            g_input = torch.cat(parts, 1)
            if channels_last:
                g_input = g_input.contiguous(memory_format=torch.channels_last)
        else:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            if self.use_ops == "fast":
                # check=False: the dataset already verified label < label_nc on load; on CUDA the check would
                # cost a host sync every iteration.
                g_input = ops.encode_input(label, inst, opt.label_nc, feat, dtype, fmt, check=self.check_inputs)
            else:
                g_input = reference.encode_input(label, inst, opt.label_nc, feat, dtype, fmt)
        # The label channels carry no gradient; detaching keeps D's graph apart from E's (G's backward frees it).
        return g_input, g_input[:, : self.label_channels].detach()

    def encode_features(self, image: torch.Tensor, inst: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """E(image) pooled per instance (``--instance_feat``) or per label (``--label_feat``): [N, feat_num, H, W]."""
        return self.netE(image, label if self.opt.label_feat else inst)

    def _features(self, label, inst, image, feat):
        if not self.opt.use_features:
            return None
        if self.opt.load_features:
            if feat is None:
                raise ValueError("--load_features: the batch has no precomputed 'feat' map")
            return feat
        if image is None:
            raise ValueError("generated features need the real image (or pass feat=)")
        return self.encode_features(image, inst, label)

    # ---------------------------------------------------------------------------------------------------------
    def set_generator_discriminator(self, net: nn.Module | None) -> None:
        """The D module the generator's adversarial pass calls (default: ``netD``). The trainer passes the plain
        module when ``netD`` is wrapped in DistributedDataParallel: that pass must not arm DDP's gradient hooks
        (its D gradients are never used). Kept out of the module tree (no state_dict keys)."""
        self.__dict__["_d_for_g"] = net

    def discriminate(
        self, d_label: torch.Tensor, images: torch.Tensor, net: nn.Module | None = None
    ) -> list[list[torch.Tensor]]:
        """D on ``cat(d_label, images)``; ``images`` may hold k times d_label's batch (real and fake stacked)."""
        reps = images.size(0) // d_label.size(0)
        lab = d_label if reps == 1 else d_label.repeat(reps, 1, 1, 1)
        x = torch.cat([lab, images.to(lab.dtype)], 1)
        out = (net if net is not None else self.netD)(x)  # not `or`: a compiled module's bool() calls len()
        return [o if isinstance(o, list) else [o] for o in out]

    def compute_losses(
        self,
        label: torch.Tensor,
        inst: torch.Tensor | None,
        image: torch.Tensor,
        feat: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> tuple[LossTerms, torch.Tensor]:
        """One iteration's forward: returns the loss terms and the generated image ``[N, output_nc, H, W]``.

        D's parameters must be trainable on entry; the generator's adversarial pass freezes them for its own
        duration (its gradients w.r.t. D weights would be discarded anyway).
        """
        opt = self.opt
        feat_map = self._features(label, inst, image, feat)
        g_input, d_label = self.encode(label, inst, feat_map, dtype, channels_last)
        real = image.to(dtype)
        if channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        fake = self.netG(g_input)

        # D on detached fake (possibly from the history pool) and on real: one batched call when exact.
        fake_d = self.fake_pool.query(fake.detach()) if opt.pool_size > 0 else fake.detach()
        n = real.size(0)
        if opt.norm == "instance":
            both = self.discriminate(d_label, torch.cat([fake_d, real.to(fake_d.dtype)], 0))
            pred_fake_pool = [[t[:n] for t in s] for s in both]
            pred_real = [[t[n:] for t in s] for s in both]
        else:  # batch statistics differ between a joint and separate batches: keep the reference's two calls
            pred_fake_pool = self.discriminate(d_label, fake_d)
            pred_real = self.discriminate(d_label, real)
        loss_D_fake = self.criterionGAN(pred_fake_pool, False)
        loss_D_real = self.criterionGAN(pred_real, True)

        net_g = self.__dict__.get("_d_for_g")
        net_g = self.netD if net_g is None else net_g
        req = [p.requires_grad for p in net_g.parameters()]
        for p in net_g.parameters():
            p.requires_grad_(False)
        try:
            pred_fake = self.discriminate(d_label, fake, net_g)
        finally:
            for p, r in zip(net_g.parameters(), req, strict=True):
                p.requires_grad_(r)
        return self.loss_terms(pred_fake, pred_real, fake, real, loss_D_real, loss_D_fake), fake

    def loss_terms(self, pred_fake, pred_real, fake, real, loss_D_real, loss_D_fake) -> LossTerms:
        """G's losses from D's outputs on the fake (``pred_fake``, through D for G) and the real image: adversarial,
        feature matching (unless ``--no_ganFeat_loss``) and VGG (when built), with D's two losses."""
        opt = self.opt
        loss_G_GAN = self.criterionGAN(pred_fake, True, for_discriminator=False)
        zero = loss_G_GAN.new_zeros(())
        loss_G_feat = zero
        if not opt.no_ganFeat_loss:
            loss_G_feat = feature_matching_loss(pred_fake, pred_real, opt.num_D, opt.n_layers_D, opt.lambda_feat)
        loss_G_vgg = zero
        if self.criterionVGG is not None:
            loss_G_vgg = self.criterionVGG(fake, real) * opt.lambda_feat
        return LossTerms(loss_G_GAN, loss_G_feat, loss_G_vgg, loss_D_real, loss_D_fake)

    @torch.no_grad()
    def inference(
        self,
        label: torch.Tensor,
        inst: torch.Tensor | None,
        image: torch.Tensor | None = None,
        feat: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """Generate ``[N, output_nc, H, W]`` images. With features: ``feat`` if given, else E(image) (the
        reference's ``--use_encoded_image``); without either, zeros (see pix2pixhd_fast.features for sampling)."""
        feat_map = None
        if self.opt.use_features:
            if feat is not None:
                feat_map = feat
            elif image is not None and self.netE is not None:
                feat_map = self.encode_features(image, inst, label)
            else:
                n, _, h, w = label.shape
                feat_map = torch.zeros(n, self.opt.feat_num, h, w, device=label.device)
        g_input, _ = self.encode(label, inst, feat_map, dtype, channels_last)
        return self.netG(g_input)
