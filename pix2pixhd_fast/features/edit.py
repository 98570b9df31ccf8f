"""Build the generator's feature input from cluster centres: a random style per instance, or the user's choice.

``feature_map(label, inst, clusters)`` draws, for every instance of every image, one centre of its class's clusters
(uniformly, from a seeded generator) and paints it over the instance's pixels. ``choice={id: k}`` picks centre k
of that instance's class instead, ``choice={id: vector}`` sets the vector outright; everything else is unchanged,
so an edit changes only the chosen instance's pixels. Classes without clusters get zeros (the reference left such
pixels uninitialised).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .clusters import FeatureClusters
from .instances import InstanceTable, instance_table

__all__ = ["feature_map", "parse_feat_edit", "image_seed", "Choice"]

#: A choice for one instance: a cluster index of its class, or an explicit ``feat_num`` vector.
Choice = int | Sequence[float] | np.ndarray | torch.Tensor


def image_seed(seed: int, index: int) -> int:
    """The sampling seed of image ``index`` in a run seeded with ``seed`` (independent of the other images)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()  # fresh OS entropy: unseeded calls differ
    else:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
        g.manual_seed(int(seed))
    return g


def _match(table: InstanceTable, key) -> torch.Tensor:
    """Rows of ``table`` selected by a choice key: an instance id (every image) or ``(image, id)``."""
    if isinstance(key, tuple):
        if len(key) != 2 or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in key):
            raise ValueError(f"choice key {key!r}: use an instance id or an (image index, instance id) pair")
        return (table.image == int(key[0])) & (table.ids == int(key[1]))
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise ValueError(f"choice key {key!r}: use an instance id (int) or an (image index, instance id) pair")
    return table.ids == int(key)


def feature_map(
    label: torch.Tensor,
    inst: torch.Tensor,
    clusters: FeatureClusters,
    *,
    choice: Mapping[int | tuple[int, int], Choice] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    base: torch.Tensor | None = None,
    strict: bool = True,
) -> torch.Tensor:
    """The feature input ``Tensor[N, feat_num, H, W]`` (float32, on ``inst``'s device) for a batch of maps.

    Args:
        label: ``Tensor[N, 1, H, W]`` class ids (an instance's class is the label covering most of it).
        inst: ``Tensor[N, 1, H, W]`` instance ids (with ``--label_feat`` models, pass the label map here too).
        clusters: the per-class centres (:func:`~pix2pixhd_fast.features.cluster_features` or a loaded file).
        choice: ``{instance id or (image index, instance id): cluster index | vector}``: cluster index ``k`` picks
            centre k of the instance's class (0 = its most populated cluster in our files), a vector (``feat_num``
            floats) is used as is.
        seed: seed of the random centres (same seed and maps -> same output); None: fresh entropy each call.
        generator: a ``torch.Generator`` (CPU) to draw from instead of ``seed``.
        base: ``Tensor[N, feat_num, H, W]`` to start from instead of random centres (e.g. the encoded real image):
            only the chosen instances change.
        strict: a choice key that matches no instance is an error (else ignored, e.g. over many images).

    Draws: one uniform number per instance in (image, id) order, so with a fixed seed an instance's centre does not
    depend on choices made for other instances.

    Raises:
        ValueError: bad shapes, a choice for an unknown instance (strict), a cluster index the class does not have, a
        vector of the wrong length or non-finite.
    """
    if not isinstance(clusters, FeatureClusters):
        raise TypeError(f"clusters must be FeatureClusters, got {type(clusters).__name__}")
    table = instance_table(inst, label)
    device, f = table.inverse.device, clusters.feat_num
    n, h, w = table.inverse.shape
    centers, ks = clusters.table(device)
    cls = table.classes
    in_table = (cls >= 0) & (cls < ks.numel())
    k = torch.where(in_table, ks[cls.clamp(0, ks.numel() - 1)], torch.zeros_like(cls))
    if base is not None:
        if not isinstance(base, torch.Tensor) or base.shape != (n, f, h, w):
            shape = tuple(base.shape) if isinstance(base, torch.Tensor) else type(base).__name__
            raise ValueError(f"base must be a Tensor[{n}, {f}, {h}, {w}], got {shape}")
        out = base.detach().to(device, torch.float32).clone()
    else:
        g = _generator(seed, generator)
        u = torch.rand(len(table), generator=g, dtype=torch.float64).to(device)
        idx = torch.minimum((u * k).long(), (k - 1).clamp(min=0))
        vec = centers[cls.clamp(0, centers.shape[0] - 1), idx]  # [U, F]
        vec = torch.where((k > 0).unsqueeze(1), vec, torch.zeros_like(vec))
        out = vec[table.inverse].permute(0, 3, 1, 2).contiguous()
    if not choice:
        return out
    if not isinstance(choice, Mapping):
        raise TypeError(f"choice must be a dict {{instance id: cluster index or vector}}, got {type(choice).__name__}")
    for key, value in choice.items():
        rows = _match(table, key).nonzero().flatten()
        if rows.numel() == 0:
            if strict:
                raise ValueError(f"feature edit: instance {key!r} is not in the instance map")
            continue
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            j = int(value)
            kr, cr = k[rows], cls[rows]
            bad = (j < 0) | (j >= kr)
            if bool(bad.any()):
                c, kk = int(cr[bad][0]), int(kr[bad][0])
                what = f"has {kk} cluster(s) (indices 0..{kk - 1})" if kk else "has no clusters (give a vector instead)"
                raise ValueError(f"feature edit: instance {key!r} (class {c}) {what}; got index {j}")
            vec = centers[cr, j]  # [R, F]
        else:
            try:
                v = (
                    value.detach().double()
                    if isinstance(value, torch.Tensor)
                    else torch.as_tensor(np.asarray(value, dtype=np.float64))
                )
            except (TypeError, ValueError, RuntimeError):
                v = None
            if v is None or v.dim() != 1 or v.numel() != f:
                raise ValueError(
                    f"feature edit: instance {key!r}: give a cluster index (int) or a vector of feat_num={f} numbers, "
                    f"got {value!r}"
                )
            v = v.to(device, torch.float32)
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"feature edit: instance {key!r}: the vector holds non-finite values")
            vec = v.expand(rows.numel(), f)
        # Paint the chosen rows' pixels: a per-row replacement table, applied where the pixel's row was chosen.
        pick = torch.full((len(table),), -1, dtype=torch.int64, device=device)
        pick[rows] = torch.arange(rows.numel(), device=device)
        where = pick[table.inverse]  # [N, H, W]
        mask = where >= 0
        out.permute(0, 2, 3, 1)[mask] = vec[where[mask]]
    return out


def parse_feat_edit(text: str | None) -> dict[int, Choice]:
    """Parse ``--feat_edit``: comma-separated ``ID:K`` (cluster index K for instance ID) or ``ID:V1/V2/...`` (an
    explicit vector), e.g. ``"26001:3,26002:7,24000:0.5/-0.2/0.1"``. Empty or None -> ``{}``.

    Raises:
        ValueError: malformed entry or a repeated id (the message names it).
    """
    out: dict[int, Choice] = {}
    if not text or not text.strip():
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition(":")
        try:
            if not sep:
                raise ValueError
            iid = int(key)
            if "/" in val or "." in val or "e" in val.lower():
                value: Choice = [float(x) for x in val.split("/")]
            else:
                value = int(val)
        except ValueError:
            raise ValueError(
                f"--feat_edit entry {part!r}: use ID:CLUSTER (e.g. 26001:3) or ID:V1/V2/... (an explicit vector)"
            ) from None
        if iid in out:
            raise ValueError(f"--feat_edit: instance {iid} is given twice")
        out[iid] = value
    return out
