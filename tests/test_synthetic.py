"""Synthetic street scenes: determinism, Cityscapes encodings, appearance that follows labels and instances."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pix2pixhd_fast.data import (
    CITYSCAPES_IDS,
    CITYSCAPES_THING_IDS,
    Pix2PixHDDataset,
    make_synthetic_dataset,
    parse_size,
    render_scene,
)

CAR, PERSON = CITYSCAPES_IDS["car"], CITYSCAPES_IDS["person"]
SCENE_W, SCENE_H = 128, 64


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(np.random.default_rng(s), SCENE_H, SCENE_W) for s in range(8)]


def test_render_scene_is_deterministic_and_seed_dependent():
    a = render_scene(np.random.default_rng(11), 48, 96)
    b = render_scene(np.random.default_rng(11), 48, 96)
    c = render_scene(np.random.default_rng(12), 48, 96)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[2], c[2])
    label, inst, image = a
    assert label.dtype == np.uint8 and label.shape == (48, 96)
    assert inst.dtype == np.int32 and inst.shape == (48, 96)
    assert image.dtype == np.uint8 and image.shape == (48, 96, 3)


def test_instance_encoding_follows_cityscapes(scenes):
    for label, inst, _ in scenes:
        thing = np.isin(label, list(CITYSCAPES_THING_IDS))
        assert thing.any()
        assert np.array_equal(inst[~thing], label[~thing].astype(np.int32))  # stuff: the class id
        assert np.array_equal(inst[thing] // 1000, label[thing].astype(np.int32))  # things: class*1000 + k
        assert label.max() < 35
        for cls in np.unique(label[thing]):
            ks = np.unique(inst[label == cls]) - 1000 * int(cls)
            assert np.array_equal(ks, np.arange(ks.size)), (cls, ks)  # k = 0, 1, ... per class
        n_cars = np.unique(inst[label == CAR]).size
        n_people = np.unique(inst[label == PERSON]).size
        assert n_cars >= 2 and n_people >= 2, (n_cars, n_people)


def test_hidden_objects_leave_no_gap_in_k():
    from pix2pixhd_fast.data.synthetic import _renumber_instances

    # Objects 26001, 26003 and 24000 were painted over entirely: the visible ones are renumbered from 0.
    inst = np.array([[7, 26002, 26005, 24001], [23, 26002, 26000, 24004]], np.int32)
    expected = np.array([[7, 26001, 26002, 24000], [23, 26001, 26000, 24001]], np.int32)
    assert np.array_equal(_renumber_instances(inst), expected)


def test_scenes_hold_the_street_classes(scenes):
    seen = set()
    for label, _, _ in scenes:
        present = set(np.unique(label).tolist())
        assert {CITYSCAPES_IDS[n] for n in ("road", "sky", "car", "person")} <= present
        seen |= present
    expected = {"road", "sidewalk", "building", "vegetation", "sky", "pole", "car", "person", "terrain"}
    assert {CITYSCAPES_IDS[n] for n in expected} <= seen


def test_photo_follows_the_labels(scenes):
    means: dict[str, list[np.ndarray]] = {"sky": [], "road": [], "vegetation": []}
    for label, _, image in scenes:
        for name in means:
            m = label == CITYSCAPES_IDS[name]
            if m.sum() > 20:
                means[name].append(image[m].astype(np.float64).mean(0))
    sky, road, veg = (np.mean(means[n], axis=0) for n in ("sky", "road", "vegetation"))
    assert sky[2] > sky[0] and sky.mean() > road.mean() + 30  # bright, bluish sky over a dark road
    assert np.ptp(road) < 20  # grey asphalt
    assert veg[1] > veg[0] and veg[1] > veg[2]  # green foliage


def test_each_car_has_its_own_paint(scenes):
    for label, inst, image in scenes:
        ids, counts = np.unique(inst[label == CAR], return_counts=True)
        big = ids[np.argsort(counts)[::-1][:2]]
        m0, m1 = (image[inst == i].astype(np.float64).mean(0) for i in big)
        assert np.abs(m0 - m1).max() > 10, (m0, m1)
    # ...and the photo depends on the instance, not only on the label: within a scene, pixels of one class
    # vary much more across instances than within each instance.
    label, inst, image = scenes[0]
    ids = np.unique(inst[label == CAR])
    per = np.array([image[inst == i].astype(np.float64).mean(0) for i in ids])
    assert per.std(0).max() > 10


def test_make_synthetic_dataset_is_byte_deterministic(tmp_path):
    kw = {"n": 3, "n_test": 1, "size": (32, 64)}
    s1 = make_synthetic_dataset(tmp_path / "a", seed=5, **kw)
    make_synthetic_dataset(tmp_path / "b", seed=5, **kw)
    make_synthetic_dataset(tmp_path / "c", seed=6, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 3 * (3 + 1)
    assert str(files[0]) == "test_img/synth_000000_leftImg8bit.png"
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files]
    differ = [(tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files]
    assert all(same) and all(differ)
    assert s1["phases"] == {"train": 3, "test": 1} and s1["label_nc"] == 35 and s1["size"] == [32, 64]
    assert s1["instances"]["car"] >= 2 * 4
    saved = json.loads((tmp_path / "a" / "synthetic.json").read_text())
    assert saved == {k: v for k, v in s1.items() if k != "seconds"}
    # Scenes depend on (seed, phase, index) only: a larger dataset starts with the same files.
    make_synthetic_dataset(tmp_path / "d", seed=5, n=4, n_test=0, size=(32, 64))
    f = "train_img/synth_000002_leftImg8bit.png"
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "d" / f).read_bytes()


def test_synthetic_output_loads_as_a_dataset(tmp_path):
    make_synthetic_dataset(tmp_path, n=2, n_test=1, size=(32, 64), seed=1)
    ds = Pix2PixHDDataset(tmp_path, label_nc=35, resize_or_crop="none", n_downsample=2)
    assert len(ds) == 2
    item = ds[(0, 0)]
    assert item["label"].shape == (1, 32, 64) and int(item["label"].max()) < 35
    assert int(item["inst"].max()) >= 24000  # things survive the 16-bit PNG round trip
    assert len(Pix2PixHDDataset(tmp_path, "test", isTrain=False)) == 1


def test_overwrite_and_bad_arguments(tmp_path):
    make_synthetic_dataset(tmp_path, phases={"train": 1}, size=(32, 64))
    with pytest.raises(ValueError, match="overwrite"):
        make_synthetic_dataset(tmp_path, phases={"train": 1}, size=(32, 64))
    make_synthetic_dataset(tmp_path, phases={"train": 1}, size=(32, 64), seed=3, overwrite=True)
    assert len(list((tmp_path / "train_img").iterdir())) == 1
    with pytest.raises(ValueError, match="size"):
        make_synthetic_dataset(tmp_path / "x", n=1, size=(8, 8))
    with pytest.raises(ValueError, match=r"\(height >= 16, width >= 32\).*did you mean \(16, 64\)"):
        make_synthetic_dataset(tmp_path / "x", n=1, size=(64, 16))
    with pytest.raises(ValueError, match="seed"):
        make_synthetic_dataset(tmp_path / "x", n=1, seed=-1)
    with pytest.raises(TypeError, match="Generator"):
        render_scene(0, 32, 64)
    with pytest.raises(ValueError, match="height"):
        render_scene(np.random.default_rng(0), 4, 64)


def test_parse_size():
    assert parse_size("256x128") == (256, 128)
    assert parse_size("64X32") == (64, 32)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        parse_size("256")
