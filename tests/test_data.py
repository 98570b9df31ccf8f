"""pix2pixhd_fast.data: pairing, reading errors, transforms (shared crop/flip, sizes), loaders, palettes."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pixhd_fast import ops, reference
from pix2pixhd_fast.data import (
    RESIZE_OR_CROP_MODES,
    Pix2PixHDDataset,
    collate,
    colorize_label,
    label_colormap,
    label_to_image,
    make_dataloader,
    pairing_key,
    plan_transform,
    size_multiple,
    to_uint8_image,
    transform_map,
)


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _positional(w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps that record where each pixel came from: label = x, inst = 1000*y + x, image R = 6x, G = 10y."""
    y, x = np.mgrid[0:h, 0:w]
    label = x.astype(np.uint8)
    inst = (1000 * y + x).astype(np.uint16)
    image = np.stack([6 * x, 10 * y, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    return label, inst, image


def _write_positional(root: Path, n: int = 2, w: int = 40, h: int = 24, phase: str = "train") -> Path:
    label, inst, image = _positional(w, h)
    for i in range(n):
        _save(root / f"{phase}_label" / f"s{i}_gtFine_labelIds.png", label)
        _save(root / f"{phase}_inst" / f"s{i}_gtFine_instanceIds.png", inst)
        _save(root / f"{phase}_img" / f"s{i}_leftImg8bit.png", image)
    return root


def _decode(image: torch.Tensor) -> np.ndarray:
    """float [3,H,W] in [-1,1] -> uint8-valued int array [3,H,W]."""
    return np.rint((image.numpy() + 1) * 127.5).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Pairing


def test_pairing_key():
    assert pairing_key("aachen_000000_000019_gtFine_labelIds.png") == "aachen_000000_000019"
    assert pairing_key("aachen_000000_000019_gtFine_instanceIds.png") == "aachen_000000_000019"
    assert pairing_key("aachen_000000_000019_leftImg8bit.png") == "aachen_000000_000019"
    assert pairing_key("sub/0001.jpg") == "sub/0001"
    assert pairing_key("_leftImg8bit.png") == "_leftImg8bit"  # a suffix alone is a name, not empty
    assert pairing_key("a_leftImg8bit_gtFine_labelIds.png") == "a_leftImg8bit"  # one suffix at most


def test_pairs_by_name_not_sorted_order(tmp_path):
    # Sorted file names disagree between folders ("a2_gt..." < "a_gt..." but "a.png" < "a2.png"):
    # position-based pairing would swap the items; name-based pairing must not.
    for key, value in (("a", 3), ("a2", 5)):
        _save(tmp_path / "train_label" / f"{key}_gtFine_labelIds.png", np.full((8, 16), value, np.uint8))
        _save(tmp_path / "train_img" / f"{key}.png", np.full((8, 16, 3), 20 * value, np.uint8))
    ds = Pix2PixHDDataset(tmp_path, label_nc=10, no_instance=True, resize_or_crop="none", n_downsample=0)
    assert len(ds) == 2
    for i in range(2):
        item = ds[(i, 0)]
        value = int(item["label"][0, 0, 0])
        assert value in (3, 5)
        assert (_decode(item["image"]) == 20 * value).all()
        assert Path(item["path"]).name.startswith("a2_" if value == 5 else "a_")


def test_missing_and_extra_files_are_named(tmp_path):
    _write_positional(tmp_path, n=3)
    (tmp_path / "train_img" / "s1_leftImg8bit.png").unlink()
    with pytest.raises(ValueError, match="s1_gtFine_labelIds.png"):
        Pix2PixHDDataset(tmp_path)
    _save(tmp_path / "train_img" / "s1_leftImg8bit.png", np.zeros((24, 40, 3), np.uint8))
    _save(tmp_path / "train_img" / "stray_leftImg8bit.png", np.zeros((24, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="stray_leftImg8bit.png"):
        Pix2PixHDDataset(tmp_path)
    (tmp_path / "train_img" / "stray_leftImg8bit.png").unlink()
    (tmp_path / "train_inst" / "s2_gtFine_instanceIds.png").unlink()
    with pytest.raises(ValueError, match=r"no instance file.*s2_gtFine_labelIds.png"):
        Pix2PixHDDataset(tmp_path)
    assert len(Pix2PixHDDataset(tmp_path, no_instance=True)) == 3  # instance maps not needed


def test_duplicate_names_and_missing_folders(tmp_path):
    _write_positional(tmp_path, n=1)
    _save(tmp_path / "train_img" / "s0.jpg", np.zeros((24, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"s0_leftImg8bit.png.*s0.jpg|s0.jpg.*s0_leftImg8bit.png"):
        Pix2PixHDDataset(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        Pix2PixHDDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="test_label"):
        Pix2PixHDDataset(tmp_path, phase="test")
    (tmp_path / "train_img" / "s0.jpg").unlink()
    with pytest.raises(ValueError, match="train_feat"):
        Pix2PixHDDataset(tmp_path, no_instance=True, load_features=True)


# ----------------------------------------------------------------------------------------------------
# Reading errors and dtypes


def test_label_out_of_range_names_file(tmp_path):
    _write_positional(tmp_path, n=2)  # labels hold x = 0..39
    ds = Pix2PixHDDataset(tmp_path, label_nc=40, resize_or_crop="none", n_downsample=0)
    ds[(0, 0)]  # max id 39 < 40 is fine
    ds = Pix2PixHDDataset(tmp_path, label_nc=39, resize_or_crop="none", n_downsample=0)
    with pytest.raises(ValueError, match=r"s0_gtFine_labelIds.png.*id 39 >= label_nc 39"):
        ds[(0, 0)]


def test_unreadable_and_truncated_images_name_the_file(tmp_path):
    _write_positional(tmp_path, n=2)
    bad = tmp_path / "train_img" / "s0_leftImg8bit.png"
    bad.write_bytes(b"this is not a png")
    good = (tmp_path / "train_img" / "s1_leftImg8bit.png").read_bytes()
    (tmp_path / "train_img" / "s1_leftImg8bit.png").write_bytes(good[: len(good) // 2])
    ds = Pix2PixHDDataset(tmp_path, label_nc=40)
    with pytest.raises(ValueError, match=r"cannot read image file .*s0_leftImg8bit.png"):
        ds[(0, 0)]
    with pytest.raises(ValueError, match=r"cannot read image file .*s1_leftImg8bit.png"):
        ds[(1, 0)]


def test_size_mismatch_names_both_files(tmp_path):
    _write_positional(tmp_path, n=2)
    _save(tmp_path / "train_img" / "s1_leftImg8bit.png", np.zeros((24, 41, 3), np.uint8))
    _save(tmp_path / "train_inst" / "s0_gtFine_instanceIds.png", np.zeros((23, 40), np.uint16))
    ds = Pix2PixHDDataset(tmp_path, label_nc=40)
    with pytest.raises(ValueError, match=r"size mismatch.*s1_gtFine_labelIds.png.*40x24.*s1_leftImg8bit.png.*41x24"):
        ds[(1, 0)]
    with pytest.raises(ValueError, match=r"size mismatch.*instance map.*s0_gtFine_instanceIds.png"):
        ds[(0, 0)]


def test_rgb_label_rejected_and_palette_label_accepted(tmp_path):
    _save(tmp_path / "train_label" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _save(tmp_path / "train_img" / "a.png", np.zeros((8, 8, 3), np.uint8))
    ds = Pix2PixHDDataset(tmp_path, label_nc=35, no_instance=True, resize_or_crop="none", n_downsample=0)
    with pytest.raises(ValueError, match=r"a.png has PIL mode 'RGB'.*label_nc=0"):
        ds[(0, 0)]
    # A palette PNG: the indices are the ids (not the palette colours' luminance).
    ids = np.arange(64, dtype=np.uint8).reshape(8, 8) % 7
    pal = Image.frombytes("P", (8, 8), ids.tobytes())
    pal.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    pal.save(tmp_path / "train_label" / "a.png")
    assert np.array_equal(ds[(0, 0)]["label"][0].numpy(), ids)


def test_16bit_instance_ids_survive(tmp_path):
    inst = np.array([[7, 26000, 26001], [33000, 33001, 65535]], np.uint16).repeat(4, 0).repeat(4, 1)
    _save(tmp_path / "train_label" / "a.png", np.full(inst.shape, 7, np.uint8))
    _save(tmp_path / "train_inst" / "a.png", inst)
    _save(tmp_path / "train_img" / "a.png", np.zeros((*inst.shape, 3), np.uint8))
    item = Pix2PixHDDataset(tmp_path, resize_or_crop="none", n_downsample=0)[(0, 0)]
    assert item["inst"].dtype == torch.int32 and item["label"].dtype == torch.uint8
    assert np.array_equal(item["inst"][0].numpy(), inst.astype(np.int32))


# ----------------------------------------------------------------------------------------------------
# Transforms


@pytest.mark.parametrize("mode", ["crop", "none"])
def test_one_crop_and_flip_shared_by_all_maps(tmp_path, mode, seed):
    w, h = 40, 24
    _write_positional(tmp_path, n=1, w=w, h=h)
    ds = Pix2PixHDDataset(tmp_path, label_nc=64, resize_or_crop=mode, fineSize=16, n_downsample=2)
    flips, offsets = set(), set()
    rng = np.random.default_rng(seed)
    for s in rng.integers(0, 2**62, 24):
        item = ds[(0, int(s))]
        label = item["label"][0].numpy().astype(np.int64)
        inst = item["inst"][0].numpy()
        rgb = _decode(item["image"])
        assert rgb[0].max() <= 255
        # The image, the label and the instance map record the same source pixel everywhere.
        assert np.array_equal(rgb[0], 6 * label)
        assert np.array_equal(inst % 1000, label)
        assert np.array_equal(rgb[1], 10 * (inst // 1000))
        flipped = label[0, 0] > label[0, -1]
        flips.add(bool(flipped))
        offsets.add((int(label[:, :].min()), int((inst // 1000).min())))
        step = -1 if flipped else 1
        assert (np.diff(label, axis=1) == step).all() and (np.diff(inst // 1000, axis=0) == 1).all()
        assert label.shape == ((16, 16) if mode == "crop" else (h, w))
    assert flips == {False, True}
    if mode == "crop":
        assert len(offsets) > 3  # the window moves
    else:
        assert offsets == {(0, 0)}


def test_no_flip_and_test_phase_never_flip(tmp_path):
    _write_positional(tmp_path, n=1)
    for kwargs in ({"no_flip": True}, {"isTrain": False}):
        ds = Pix2PixHDDataset(tmp_path, label_nc=64, resize_or_crop="none", n_downsample=0, **kwargs)
        for s in range(16):
            label = ds[(0, s)]["label"][0].numpy()
            assert label[0, 0] == 0 and label[0, -1] == 39


@pytest.mark.parametrize("mode", ["resize_and_crop", "scale_width", "scale_width_and_crop"])
def test_resized_image_follows_the_label_geometry(tmp_path, mode):
    # Bicubic resampling reproduces a linear ramp away from the borders, so the image's R channel still
    # tells the source column; it must agree with the nearest-resized label (within a pixel) everywhere
    # inside, flip and crop included.
    w, h = 40, 24
    _write_positional(tmp_path, n=1, w=w, h=h)
    ds = Pix2PixHDDataset(tmp_path, label_nc=64, resize_or_crop=mode, loadSize=31, fineSize=20, n_downsample=0)
    for s in range(12):
        item = ds[(0, s)]
        label = item["label"][0].numpy().astype(np.float64)
        src_x = (item["image"][0].numpy().astype(np.float64) + 1) * 127.5 / 6
        inner = (slice(3, -3), slice(3, -3))
        assert np.abs(src_x[inner] - label[inner]).max() <= 1.01, s
        src_y = (item["image"][1].numpy().astype(np.float64) + 1) * 127.5 / 10
        assert np.abs(src_y[inner] - item["inst"][0].numpy()[inner] // 1000).max() <= 1.01, s


def test_nearest_resize_creates_no_new_ids(seed):
    rng = np.random.default_rng(seed)
    ids = np.array([0, 3, 7, 26, 34], np.uint8)
    label = ids[rng.integers(0, len(ids), (37, 53))]
    inst = rng.choice(np.array([7, 26000, 26001, 26002, 33005], np.int32), (37, 53))
    for out_w in (17, 53, 80, 131):
        plan = plan_transform((53, 37), resize_or_crop="scale_width", load_size=out_w, rng=rng)
        out_l, out_i = transform_map(label, plan), transform_map(inst, plan)
        assert out_l.dtype == np.uint8 and out_i.dtype == np.int32
        assert set(np.unique(out_l)) <= set(ids.tolist()) and set(np.unique(out_i)) <= set(np.unique(inst))
        assert out_l.shape == (out_w * 37 // 53, out_w)
    # Nearest keeps the pixel-centre correspondence: an exact 2x upscale repeats every pixel twice.
    plan = plan_transform((53, 37), resize_or_crop="scale_width", load_size=106, rng=rng)
    assert np.array_equal(transform_map(label, plan), label.repeat(2, 0).repeat(2, 1))


# (mode, loadSize, fineSize, multiple) -> expected (W, H) from a 100x65 source, derived by hand.
_SIZES = [
    ("resize_and_crop", 64, 32, 4, (32, 32)),  # 64x64 then a 32x32 window
    ("crop", 64, 32, 4, (32, 32)),  # a 32x32 window of the source
    ("crop", 64, 30, 4, (28, 28)),  # the window is rounded down to a multiple of 4
    ("crop", 64, 80, 4, (80, 64)),  # window 80x65 clipped to the image, rounded down: 80x64
    ("scale_width", 64, 32, 4, (64, 40)),  # 64 x (64*65//100 = 41) -> 41 rounds to 40
    ("scale_width", 64, 32, 1, (64, 41)),
    ("scale_width", 60, 32, 4, (60, 40)),  # 60 x 39 -> 39/4 = 9.75 rounds up to 40
    ("scale_width_and_crop", 64, 32, 4, (32, 32)),  # 64x41 then a 32x32 window
    ("none", 64, 32, 4, (100, 64)),  # 65 rounds to 64, 100 stays
    ("none", 64, 32, 16, (96, 64)),  # 100/16 = 6.25 -> 96; 65/16 = 4.06 -> 64
    ("none", 64, 32, 128, (128, 128)),  # never below one multiple
    ("none", 64, 32, 8, (96, 64)),  # 100/8 = 12.5 -> 12 (Python's round, as the reference) -> 96
]


@pytest.mark.parametrize("mode,load,fine,multiple,expected", _SIZES)
def test_output_size_per_mode(tmp_path, mode, load, fine, multiple, expected):
    plan = plan_transform(
        (100, 65), resize_or_crop=mode, load_size=load, fine_size=fine, multiple=multiple,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    assert plan.out_size == expected
    # The whole item agrees: label, instance map and image all have that size.
    _save(tmp_path / "train_label" / "a.png", np.zeros((65, 100), np.uint8))
    _save(tmp_path / "train_inst" / "a.png", np.zeros((65, 100), np.uint16))
    _save(tmp_path / "train_img" / "a.png", np.zeros((65, 100, 3), np.uint8))
    n_down = int(np.log2(multiple))
    item = Pix2PixHDDataset(tmp_path, resize_or_crop=mode, loadSize=load, fineSize=fine, n_downsample=n_down)[(0, 1)]
    for key in ("label", "inst", "image"):
        assert tuple(item[key].shape[1:]) == (expected[1], expected[0]), key


def test_sizes_divisible_by_the_generator_factor(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        mode = RESIZE_OR_CROP_MODES[rng.integers(len(RESIZE_OR_CROP_MODES))]
        multiple = 2 ** int(rng.integers(0, 6))
        size = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        load, fine = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        plan = plan_transform(size, resize_or_crop=mode, load_size=load, fine_size=fine, multiple=multiple, rng=rng)
        w, h = plan.out_size
        assert w % multiple == 0 and h % multiple == 0 and w > 0 and h > 0, (mode, size, load, fine, multiple)
        arr = np.zeros((size[1], size[0]), np.uint8)
        assert transform_map(arr, plan).shape == (h, w)


def test_size_multiple_matches_reference_rule():
    assert size_multiple(4, "global", 1) == 16
    assert size_multiple(4, "local", 1) == 32
    assert size_multiple(3, "local", 2) == 32
    assert size_multiple(0) == 1


def test_bad_transform_options(tmp_path):
    with pytest.raises(ValueError, match="resize_or_crop must be one of"):
        plan_transform((10, 10), resize_or_crop="zoom")
    with pytest.raises(ValueError, match="fineSize"):
        plan_transform((10, 10), fine_size=0)
    _write_positional(tmp_path, n=1)
    with pytest.raises(ValueError, match="resize_or_crop"):
        Pix2PixHDDataset(tmp_path, resize_or_crop="zoom")
    with pytest.raises(ValueError, match="label_nc"):
        Pix2PixHDDataset(tmp_path, label_nc=-1)


# ----------------------------------------------------------------------------------------------------
# Other layouts and options


def test_label_nc_zero_uses_a_b_folders(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    _save(tmp_path / "train_A" / "x.png", a)
    _save(tmp_path / "train_B" / "x.png", a[::-1].copy())
    item = Pix2PixHDDataset(tmp_path, label_nc=0, no_instance=True, resize_or_crop="none", n_downsample=0)[(0, 0)]
    assert item["label"].dtype == torch.float32 and item["label"].shape == (3, 16, 32)
    expect_a, expect_b = a.transpose(2, 0, 1), a[::-1].transpose(2, 0, 1)
    flipped = not np.array_equal(_decode(item["label"]), expect_a)
    if flipped:
        expect_a, expect_b = expect_a[..., ::-1], expect_b[..., ::-1]
    assert np.array_equal(_decode(item["label"]), expect_a) and np.array_equal(_decode(item["image"]), expect_b)
    assert np.array_equal(label_to_image(item["label"], 0), expect_a.transpose(1, 2, 0))


def test_features_no_instance_and_test_phase_without_photos(tmp_path):
    _write_positional(tmp_path, n=2, phase="test")
    feat = np.zeros((24, 40, 3), np.uint8)
    feat[:, 20:] = (10, 200, 90)
    for i in range(2):
        _save(tmp_path / "test_feat" / f"s{i}.png", feat)
    ds = Pix2PixHDDataset(tmp_path, "test", label_nc=40, isTrain=False, load_features=True, no_instance=True,
                          resize_or_crop="none", n_downsample=0)  # fmt: skip
    item = ds[0]
    assert "inst" not in item and "image" in item  # photos are loaded when present
    assert np.array_equal(_decode(item["feat"]), feat.transpose(2, 0, 1))
    (tmp_path / "test_img").rename(tmp_path / "elsewhere")
    item = Pix2PixHDDataset(tmp_path, "test", label_nc=40, isTrain=False, resize_or_crop="none", n_downsample=0)[0]
    assert "image" not in item and item["inst"].shape == (1, 24, 40)
    with pytest.raises(ValueError, match="test_img"):
        Pix2PixHDDataset(tmp_path, "test", label_nc=40, isTrain=True)


def test_from_options_and_max_dataset_size(tmp_path):
    _write_positional(tmp_path, n=3)
    opt = argparse.Namespace(
        dataroot=str(tmp_path), phase="train", label_nc=40, no_instance=False, resize_or_crop="crop", loadSize=40,
        fineSize=16, no_flip=True, isTrain=True, n_downsample_global=2, netG="global", n_local_enhancers=1,
        max_dataset_size=2, batchSize=4, unrelated="x",
    )  # fmt: skip
    ds = Pix2PixHDDataset.from_options(opt)
    assert len(ds) == 2 and ds.multiple == 4 and ds.label_nc == 40 and not ds.allow_flip
    assert ds[0]["label"].shape == (1, 16, 16)
    assert Pix2PixHDDataset.from_options(opt, max_dataset_size=float("inf")).__len__() == 3
    opt.netG = "local"
    assert Pix2PixHDDataset.from_options(opt).multiple == 8


# ----------------------------------------------------------------------------------------------------
# Loading


def _batches(loader) -> list[dict]:
    return list(loader)


def _same(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x["path"] != y["path"]:
            return False
        for k in ("label", "inst", "image"):
            if not torch.equal(x[k], y[k]):
                return False
    return True


def test_dataloader_round_trip_is_reproducible_across_workers(tmp_path):
    _write_positional(tmp_path, n=5)
    ds = Pix2PixHDDataset(tmp_path, label_nc=40, resize_or_crop="crop", fineSize=16, n_downsample=2)
    runs = {nw: _batches(make_dataloader(ds, batch_size=2, num_workers=nw, seed=7)) for nw in (0, 2)}
    b = runs[0][0]
    assert b["label"].shape == (2, 1, 16, 16) and b["label"].dtype == torch.uint8
    assert b["inst"].shape == (2, 1, 16, 16) and b["inst"].dtype == torch.int32
    assert b["image"].shape == (2, 3, 16, 16) and b["image"].dtype == torch.float32
    assert -1.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
    assert len(runs[0]) == 3 and sum(len(x["path"]) for x in runs[0]) == 5
    assert _same(runs[0], runs[2])  # batches do not depend on the number of workers
    # The batch encodes on the device side as the reference does.
    x = ops.encode_input(b["label"], b["inst"], 40)
    torch.testing.assert_close(x, reference.encode_input(b["label"], b["inst"], 40))
    assert x.shape == (2, 41, 16, 16)


def test_sampler_epochs_and_seeds(tmp_path):
    _write_positional(tmp_path, n=6)
    ds = Pix2PixHDDataset(tmp_path, label_nc=40, resize_or_crop="crop", fineSize=16, n_downsample=2)
    loader = make_dataloader(ds, batch_size=3, seed=1)
    e0, e1 = _batches(loader), _batches(loader)  # consecutive passes advance the epoch
    assert not _same(e0, e1)
    loader.sampler.set_epoch(1)
    assert _same(_batches(loader), e1)  # a resume at epoch 1 sees the same data
    assert not _same(_batches(make_dataloader(ds, batch_size=3, seed=2)), e0)
    loader.sampler.set_epoch(1, start=3)  # resume in the middle of epoch 1: its second batch onwards
    assert _same(_batches(loader), e1[1:]) and len(loader) == 2
    with pytest.raises(ValueError, match="start"):
        loader.sampler.set_epoch(0, start=-1)
    ordered = _batches(make_dataloader(ds, batch_size=6, shuffle=False, seed=1))[0]["path"]
    assert ordered == sorted(ordered)


def test_distributed_split(tmp_path):
    _write_positional(tmp_path, n=5)
    ds = Pix2PixHDDataset(tmp_path, label_nc=40, resize_or_crop="crop", fineSize=16, n_downsample=2)
    seen = []
    for rank in range(2):
        loader = make_dataloader(ds, batch_size=1, distributed=True, num_replicas=2, rank=rank, seed=3)
        assert len(loader) == 3  # 5 items padded to 6 (DistributedSampler semantics)
        seen.append([p for b in loader for p in b["path"]])
    assert set(seen[0]) | set(seen[1]) == {str(s.label) for s in ds.samples}
    with pytest.raises(ValueError, match="process group"):
        make_dataloader(ds, distributed=True)
    with pytest.raises(ValueError, match="rank"):
        make_dataloader(ds, distributed=True, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataloader(ds, batch_size=0)


def test_collate_errors():
    a = {"label": torch.zeros(1, 4, 4), "path": "a.png"}
    b = {"label": torch.zeros(1, 4, 8), "path": "b.png"}
    with pytest.raises(ValueError, match=r"cannot batch 'label'.*a.png.*b.png"):
        collate([a, b])
    with pytest.raises(ValueError, match="different keys"):
        collate([a, {"label": torch.zeros(1, 4, 4)}])
    with pytest.raises(ValueError, match="empty"):
        collate([])
    batch = collate([a, a])
    assert batch["label"].shape == (2, 1, 4, 4) and batch["path"] == ["a.png", "a.png"]


def test_index_errors(tmp_path):
    _write_positional(tmp_path, n=2)
    ds = Pix2PixHDDataset(tmp_path, label_nc=40)
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(TypeError):
        ds["0"]


# ----------------------------------------------------------------------------------------------------
# Palettes and display helpers


def test_cityscapes_colours_and_unknown_ids():
    label = torch.tensor([[7, 26, 23, 34], [0, 255, 8, 21]], dtype=torch.uint8)
    rgb = colorize_label(label, 35)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert tuple(rgb[0, 0]) == (128, 64, 128)  # road
    assert tuple(rgb[0, 1]) == (0, 0, 142)  # car
    assert tuple(rgb[0, 2]) == (70, 130, 180)  # sky
    assert tuple(rgb[1, 2]) == (244, 35, 232)  # sidewalk
    assert tuple(rgb[1, 3]) == (107, 142, 35)  # vegetation
    assert tuple(rgb[0, 3]) == (0, 0, 0) and tuple(rgb[1, 1]) == (0, 0, 0)  # 34 has no colour; 255 is unknown
    assert np.array_equal(colorize_label(label[None].float(), 35), rgb)  # [1,H,W] float ids too
    with pytest.raises(ValueError, match="non-integral"):
        colorize_label(torch.tensor([[0.5]]), 35)


def test_generic_palette_is_distinct():
    cmap = label_colormap(200)
    assert cmap.shape == (200, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[0]) == (0, 0, 0)
    assert len({tuple(c) for c in cmap}) == 200
    assert tuple(cmap[1]) == (128, 0, 0) and tuple(cmap[2]) == (0, 128, 0) and tuple(cmap[3]) == (128, 128, 0)


def test_to_uint8_image():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, -3.0]).view(1, 1, 5).expand(3, 1, 5)
    out = to_uint8_image(x)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255, 255, 0]
    grey = to_uint8_image(torch.zeros(2, 2, dtype=torch.bfloat16))
    assert grey.shape == (2, 2, 3) and (grey == 128).all()
    with pytest.raises(ValueError, match="shape"):
        to_uint8_image(torch.zeros(4, 2, 2))
