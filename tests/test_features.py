"""Instance-level features (pix2pixhd_fast.features): instance tables, k-means clusters and their files (ours and the
reference's pickled .npy, read without executing it), seeded sampling and per-instance edits, encoding a dataset
(area threshold, classes from the label map), precomputed feature maps, and the CLI end to end on tiny data.

Expectations are computed independently: per-instance loops over ``np.unique`` ids, planted cluster centres,
hand-written files. Everything is CPU and tiny (64x32 scenes, ngf 8, one thread).
"""

from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from pix2pixhd_fast import cli, ops
from pix2pixhd_fast.data import Pix2PixHDDataset, make_synthetic_dataset, read_instance, read_label
from pix2pixhd_fast.features import (
    FeatureBank,
    FeatureClusters,
    class_of_id,
    cluster_features,
    encode_features,
    feature_map,
    image_seed,
    instance_table,
    load_clusters,
    load_reference_clusters,
    parse_feat_edit,
    precompute_feature_maps,
)
from pix2pixhd_fast.options import parse_features, parse_test

# Shared fixtures (tests/conftest.py): `data` (tiny synthetic dataset per module), `restore_threads`.
pytestmark = pytest.mark.usefixtures("restore_threads")


def random_maps(gen: torch.Generator, n: int = 2, h: int = 12, w: int = 16, n_ids: int = 7):
    """Blocky random instance maps (ids of classes 24 and 26 as things, 7 and 11 as stuff) and matching labels."""
    pool = torch.tensor([7, 11, 24000, 24001, 26000, 26001, 26002, 26003, 26004][:n_ids])
    blocks = torch.randint(0, len(pool), (n, 1, h // 4, w // 4), generator=gen)
    inst = pool[blocks].repeat_interleave(4, 2).repeat_interleave(4, 3).to(torch.int32)
    label = class_of_id(inst.long()).to(torch.uint8)
    return label, inst


def loop_instances(label: np.ndarray, inst: np.ndarray):
    """Per (image, id) in sorted order: (image, id, majority class with the smallest label on ties, pixel count)."""
    rows = []
    for n in range(inst.shape[0]):
        for i in np.unique(inst[n]):
            mask = inst[n] == i
            counts = np.bincount(label[n][mask].astype(np.int64))
            rows.append((n, int(i), int(counts.argmax()), int(mask.sum())))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Instance tables


def test_instance_table_matches_a_per_instance_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    inst = torch.randint(-3, 5, (3, 1, 9, 11), generator=gen) * 70001  # negative and large sparse ids
    label = torch.randint(0, 4, (3, 1, 9, 11), generator=gen)
    table = instance_table(inst, label)
    expected = loop_instances(label[:, 0].numpy(), inst[:, 0].numpy())
    got = list(
        zip(table.image.tolist(), table.ids.tolist(), table.classes.tolist(), table.counts.tolist(), strict=True)
    )
    assert got == expected
    # every pixel points at its own row; the first pixel of a row lies in that row
    flat_ids = inst[:, 0].reshape(-1)
    assert torch.equal(table.ids[table.inverse.reshape(-1)], flat_ids)
    assert torch.equal(table.inverse.reshape(-1)[table.first_pixel()], torch.arange(len(table)))
    # float ids holding integers (the reference passes float maps) give the same table; fractional ones are refused
    t2 = instance_table(inst.double(), label)
    assert torch.equal(t2.ids, table.ids) and torch.equal(t2.inverse, table.inverse)
    with pytest.raises(ValueError, match="non-integral"):
        instance_table(inst.double() + 0.5)
    with pytest.raises(ValueError, match="same shape"):
        instance_table(inst, label[:, :, :5])


def test_classes_without_a_label_map_follow_the_reference_id_rule():
    inst = torch.tensor([[[[7, 26000, 26001, 33999, 999, 1000]]]])
    assert instance_table(inst).classes.tolist() == [7, 999, 1, 26, 26, 33]
    # majority vote with ties to the smallest label
    label = torch.tensor([[[[3, 5, 5, 3]]]])
    assert instance_table(torch.zeros_like(label), label).classes.tolist() == [3]


# ---------------------------------------------------------------------------------------------------------------
# Clustering and files


def planted_bank(seed: int, per_cluster: int = 25) -> tuple[FeatureBank, dict[int, np.ndarray]]:
    """Class 7: 4 planted centres, class 26: 3, class 11: only 2 distinct instances (fewer than k)."""
    rng = np.random.default_rng(seed)
    planted = {7: rng.uniform(-1, 1, (4, 3)), 26: rng.uniform(-1, 1, (3, 3))}
    feats, labels = [], []
    for c, centres in planted.items():
        for centre in centres:
            feats.append(centre + rng.normal(0, 0.003, (per_cluster, 3)))
            labels += [c] * per_cluster
    two = rng.uniform(-1, 1, (2, 3))
    feats.append(np.repeat(two, 3, axis=0))  # 6 instances, 2 distinct vectors
    labels += [11] * 6
    f = np.concatenate(feats).astype(np.float32)
    m = len(f)
    bank = FeatureBank(f, np.array(labels), np.full(m, 0.1), np.arange(m), np.arange(m))
    planted[11] = two
    return bank, planted


def test_kmeans_recovers_planted_clusters(seed):
    bank, planted = planted_bank(seed % 10_000)
    clusters = cluster_features(bank, n_clusters=4, seed=0)
    assert clusters.labels == [7, 11, 26] and clusters.feat_num == 3
    for c, centres in planted.items():
        got = clusters.centers[c]
        assert got.shape == (2 if c == 11 else 4, 3)  # class 11: 2 distinct vectors, fewer than k
        if c == 26:  # 3 planted clusters, k=4: one planted cluster is split in two; every centre stays close
            assert all(np.abs(centres - g).max(1).min() < 0.02 for g in got)
            continue
        # one recovered centre per planted one
        d = np.abs(got[:, None] - centres[None]).max(2)
        assert sorted(d.argmin(1).tolist()) == list(range(len(centres))), d
        assert d.min(1).max() < 0.01
    assert clusters.counts[7].tolist() == [25, 25, 25, 25]
    assert clusters.counts[11].tolist() == [3, 3]
    assert clusters.counts[26].sum() == 75 and np.all(np.diff(clusters.counts[26]) <= 0)  # most populated first
    # the seed fixes the result
    again = cluster_features(bank, n_clusters=4, seed=0)
    assert all(np.array_equal(again.centers[c], clusters.centers[c]) for c in clusters.labels)


def test_kmeans_with_one_cluster_is_the_class_mean(seed):
    bank, _ = planted_bank(seed % 10_000)
    clusters = cluster_features(bank, n_clusters=1)
    for c in (7, 11, 26):
        np.testing.assert_allclose(clusters.centers[c][0], bank.features[bank.labels == c].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_features(bank, n_clusters=0)
    with pytest.raises(TypeError, match="FeatureBank"):
        cluster_features({"features": 1})


def test_saved_format_round_trips_without_pickles(tmp_path, seed):
    bank, _ = planted_bank(seed % 10_000)
    clusters = cluster_features(bank, n_clusters=3, seed=5)
    path = clusters.save(tmp_path / "features_clustered_003.npz")
    assert sorted(os.listdir(tmp_path)) == ["features_clustered_003.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as z:  # plain arrays: loads with pickles refused
        assert str(z["format"]) == "pix2pixhd_fast.feature_clusters" and int(z["feat_num"]) == 3
        assert z["labels"].tolist() == [7, 11, 26] and z["centers_7"].dtype == np.float32
        assert int(z["n_clusters"]) == 3 and int(z["seed"]) == 5
    back = load_clusters(path)
    assert back.labels == clusters.labels and back.feat_num == 3
    for c in clusters.labels:
        assert np.array_equal(back.centers[c], clusters.centers[c])
        assert np.array_equal(back.counts[c], clusters.counts[c])
    assert back.meta["n_clusters"] == 3 and back.meta["seed"] == 5
    assert back.meta["min_area_frac"] == pytest.approx(bank.min_area_frac)
    # the bank's own file round-trips too
    bank2 = FeatureBank.load(bank.save(tmp_path / "features.npz"))
    assert np.array_equal(bank2.features, bank.features) and np.array_equal(bank2.labels, bank.labels)

    with pytest.raises(ValueError, match="feat_num 4"):
        load_clusters(path, feat_num=4)
    with pytest.raises(FileNotFoundError, match="no feature clusters file"):
        load_clusters(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a pix2pixhd_fast feature-clusters file"):
        load_clusters(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_clusters(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match=r"shape \[k >= 1, feat_num=3\]"):
        FeatureClusters({7: np.zeros((2, 4))}, 3)


def write_npy_pickle(path, obj, protocol: int) -> None:
    """A .npy holding a pickled 0-d object array, as ``np.save(path, dict)`` writes it, at a chosen protocol."""
    arr = np.empty((), dtype=object)
    arr[()] = obj
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(arr, f, protocol=protocol)


def test_reference_npy_files_load_safely(tmp_path):
    rng = np.random.default_rng(0)
    ref = {7: rng.normal(size=(10, 3)), 26: rng.normal(size=(4, 3)), 11: np.zeros((0, 3))}
    path = tmp_path / "features_clustered_010.npy"
    np.save(path, ref, allow_pickle=True)  # exactly what the reference's encode_features.py does
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(path)  # what current NumPy does with it
    for loaded in (load_reference_clusters(path), load_clusters(path, feat_num=3)):
        assert loaded.labels == [7, 26] and loaded.feat_num == 3 and loaded.counts is None  # empty class 11 dropped
        for c in (7, 26):
            np.testing.assert_allclose(loaded.centers[c], ref[c], rtol=1e-6)
    # protocol 2 (Python 2 era writers) parses too
    p2 = tmp_path / "p2.npy"
    write_npy_pickle(p2, ref, protocol=2)
    np.testing.assert_allclose(load_reference_clusters(p2).centers[26], ref[26], rtol=1e-6)
    # the unclustered features.npy layout: feat_num + 1 columns, the last (area) dropped
    wide = {7: np.hstack([ref[7], np.full((10, 1), 9.0)])}
    np.save(tmp_path / "wide.npy", wide, allow_pickle=True)
    np.testing.assert_allclose(load_reference_clusters(tmp_path / "wide.npy", 3).centers[7], ref[7], rtol=1e-6)
    with pytest.raises(ValueError, match="columns"):
        load_reference_clusters(tmp_path / "wide.npy", 2)
    # a plain array is not a clusters file
    np.save(tmp_path / "plain.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="not the pickled dict"):
        load_clusters(tmp_path / "plain.npy")


class _RunsCode:
    """Unpickling this would run a command that creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reference_loader_refuses_code_in_the_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    write_npy_pickle(path, {7: np.zeros((2, 3)), 8: _RunsCode(str(marker))}, protocol=3)
    with pytest.raises(ValueError, match="refusing to load .*system"):
        load_clusters(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Sampling and editing


def make_clusters(feat_num: int = 3) -> FeatureClusters:
    rng = np.random.default_rng(1)
    # class 11 (stuff) and 26 (cars) have clusters; 7 and 24 have none
    return FeatureClusters({11: rng.uniform(-1, 1, (2, feat_num)), 26: rng.uniform(-1, 1, (10, feat_num))}, feat_num)


def test_sampled_maps_hold_one_class_centre_per_instance_and_zeros_without_clusters(seed):
    gen = torch.Generator().manual_seed(seed)
    label, inst = random_maps(gen)
    clusters = make_clusters()
    fmap = feature_map(label, inst, clusters, seed=3)
    assert fmap.shape == (2, 3, 12, 16) and fmap.dtype == torch.float32
    for n, i, c, _ in loop_instances(label[:, 0].numpy(), inst[:, 0].numpy()):
        mask = inst[n, 0] == i
        vals = fmap[n][:, mask].T  # [pixels, 3]
        assert torch.equal(vals, vals[:1].expand_as(vals)), "not constant over the instance"
        if c in clusters.centers:
            centres = torch.from_numpy(clusters.centers[c])
            assert (centres == vals[0]).all(1).any(), f"instance {i} got no centre of class {c}"
        else:
            assert torch.equal(vals, torch.zeros_like(vals)), f"class {c} has no clusters: zeros expected"


def test_seeded_sampling_is_reproducible_and_unseeded_varies(seed):
    gen = torch.Generator().manual_seed(seed)
    label, inst = random_maps(gen, n=4, h=32, w=32, n_ids=9)
    clusters = make_clusters()
    a = feature_map(label, inst, clusters, seed=11)
    assert torch.equal(a, feature_map(label, inst, clusters, seed=11))
    assert torch.equal(a, feature_map(label, inst, clusters, generator=torch.Generator().manual_seed(11)))
    # 4 images x up to 5 cars x 10 clusters: another seed changes some car's centre (odds of equality ~1e-13)
    assert not torch.equal(a, feature_map(label, inst, clusters, seed=12))
    unseeded = [feature_map(label, inst, clusters) for _ in range(3)]
    assert not all(torch.equal(unseeded[0], u) for u in unseeded[1:])
    assert image_seed(0, 1) != image_seed(0, 2) and image_seed(0, 1) == image_seed(0, 1)
    with pytest.raises(ValueError, match="either seed or generator"):
        feature_map(label, inst, clusters, seed=1, generator=torch.Generator())


def test_editing_one_instance_changes_only_its_pixels(seed):
    gen = torch.Generator().manual_seed(seed)
    label, inst = random_maps(gen, n=2, h=16, w=16, n_ids=9)
    clusters = make_clusters()
    car = int(inst[0, 0, 0, 0]) if int(inst[0, 0, 0, 0]) >= 26000 else None
    if car is None:  # make sure an instance of class 26 exists at the top-left corner
        inst[0, 0, :4, :4], label[0, 0, :4, :4], car = 26003, 26, 26003
    before = feature_map(label, inst, clusters, seed=5)
    centres = torch.from_numpy(clusters.centers[26])
    for j in (0, 7, 9):
        after = feature_map(label, inst, clusters, seed=5, choice={car: j})
        mask = (inst == car).expand(-1, 3, -1, -1)
        assert torch.equal(after[~mask], before[~mask]), "pixels of other instances changed"
        assert torch.equal(after.permute(0, 2, 3, 1)[inst[:, 0] == car], centres[j].expand(int(mask[:, 0].sum()), 3))
    # an explicit vector, and an (image, id) key that leaves image 1 alone
    vec = [0.25, -0.5, 0.75]
    after = feature_map(label, inst, clusters, seed=5, choice={(0, car): vec})
    in0 = inst[0, 0] == car
    assert torch.equal(after[0][:, in0].T, torch.tensor(vec).expand(int(in0.sum()), 3))
    assert torch.equal(after[1], before[1]) and torch.equal(after[0][:, ~in0], before[0][:, ~in0])
    # edits on top of a given base map (e.g. E(real image)) change only the chosen instance
    base = torch.randn(2, 3, 16, 16, generator=gen)
    edited = feature_map(label, inst, clusters, base=base, choice={car: 2})
    m = (inst == car).expand(-1, 3, -1, -1)
    assert torch.equal(edited[~m], base[~m]) and not torch.equal(edited[m], base[m])

    with pytest.raises(ValueError, match=r"has 10 cluster\(s\).*got index 10"):
        feature_map(label, inst, clusters, seed=5, choice={car: 10})
    with pytest.raises(ValueError, match="not in the instance map"):
        feature_map(label, inst, clusters, seed=5, choice={123456: 0})
    assert torch.equal(feature_map(label, inst, clusters, seed=5, choice={123456: 0}, strict=False), before)
    with pytest.raises(ValueError, match="feat_num=3"):
        feature_map(label, inst, clusters, seed=5, choice={car: [1.0, 2.0]})
    inst[0, 0, -4:, -4:], label[0, 0, -4:, -4:] = 7, 7  # a class without clusters: an index is refused, a vector works
    with pytest.raises(ValueError, match="no clusters"):
        feature_map(label, inst, clusters, seed=5, choice={7: 0})
    out = feature_map(label, inst, clusters, seed=5, choice={7: vec})
    assert torch.equal(out[0, :, -1, -1], torch.tensor(vec))


def test_parse_feat_edit():
    assert parse_feat_edit("26001:3, 26002:7") == {26001: 3, 26002: 7}
    assert parse_feat_edit("24000:0.5/-0.25/1") == {24000: [0.5, -0.25, 1.0]}
    assert parse_feat_edit(None) == {} and parse_feat_edit(" ") == {}
    for bad in ("26001", "car:3", "26001:x", "1:2/a"):
        with pytest.raises(ValueError, match="--feat_edit entry"):
            parse_feat_edit(bad)
    with pytest.raises(ValueError, match="given twice"):
        parse_feat_edit("5:1,5:2")


# ---------------------------------------------------------------------------------------------------------------
# Encoding a dataset


class MeanColour(nn.Module):
    """A stand-in encoder with a known output: the photo averaged per instance (3 channels)."""

    output_nc = 3

    def forward(self, image: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        return ops.instance_avg_pool(image, inst)


def loop_encoding(dataset: Pix2PixHDDataset, min_area_frac: float, label_feat: bool = False):
    """The reference's per-instance loop: rows (image, id, class, area, mean colour) above the threshold."""
    rows = []
    for n in range(len(dataset)):
        item = dataset.get_item(n, seed=0)
        label, image = item["label"][0].numpy(), item["image"].numpy()
        inst = label if label_feat else item["inst"][0].numpy()
        for i in np.unique(inst):
            mask = inst == i
            area = mask.sum() / mask.size
            if area > min_area_frac:
                cls = int(np.bincount(label[mask]).argmax())
                rows.append((n, int(i), cls, float(area), image[:, mask].mean(1)))
    return rows


@pytest.mark.parametrize("label_feat", [False, True])
def test_encode_features_matches_a_loop_and_applies_the_area_threshold(data, label_feat):
    ds = Pix2PixHDDataset(data, "train", label_nc=35, resize_or_crop="none", isTrain=False, n_downsample_global=2)
    for frac in (1 / 64, 0.0):
        expected = loop_encoding(ds, frac, label_feat)
        for batch_size in (1, 3):
            bank = encode_features(
                MeanColour(), ds, device="cpu", batch_size=batch_size, min_area_frac=frac, label_feat=label_feat
            )
            assert len(bank) == len(expected)
            assert bank.image_index.tolist() == [r[0] for r in expected]
            assert bank.instance_ids.tolist() == [r[1] for r in expected]
            assert bank.labels.tolist() == [r[2] for r in expected]
            np.testing.assert_allclose(bank.areas, [r[3] for r in expected], rtol=1e-6)
            np.testing.assert_allclose(bank.features, np.stack([r[4] for r in expected]), atol=1e-5)
            assert (bank.areas > frac).all() and bank.label_feat == label_feat
        if frac == 0.0:
            everything = len(expected)
        else:
            small = len(loop_encoding(ds, 0.0, label_feat)) - len(expected)
    assert small > 0 and everything > small, "the threshold must drop some, not all, instances of the scenes"
    if not label_feat:  # cars are things: class 26 from the label map, ids 26000+
        cars = bank.labels == 26
        assert cars.any() and (bank.instance_ids[cars] // 1000 == 26).all()
    with pytest.raises(ValueError, match="min_area_frac"):
        encode_features(MeanColour(), ds, device="cpu", min_area_frac=1.5)
    with pytest.raises(ValueError, match="no feature encoder"):
        encode_features(type("M", (nn.Module,), {"netE": None})(), ds, device="cpu")


def test_precomputed_feature_maps_load_back_as_the_encoder_output(data, tmp_path):
    ds = Pix2PixHDDataset(data, "train", label_nc=35, resize_or_crop="none", isTrain=False, n_downsample_global=2)
    out = tmp_path / "train_feat"
    paths = precompute_feature_maps(MeanColour(), ds, out, device="cpu")
    assert len(paths) == len(ds) and all(p.startswith(str(out)) for p in paths)
    # decoded as the loader decodes feature files ([-1, 1]), they hold E's output within rounding, at the files' size
    for n in range(len(ds)):
        item = ds.get_item(n, seed=0)
        pooled = MeanColour()(item["image"][None], item["inst"][None])[0]
        stored = np.asarray(Image.open(paths[n]).convert("RGB"))
        assert stored.shape[:2] == read_label(ds.samples[n].label, 35).shape
        assert read_instance(ds.samples[n].inst).shape == stored.shape[:2]
        decoded = torch.from_numpy(stored.transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1
        assert (decoded - pooled).abs().max() <= 0.5 / 127.5 + 1e-6
    with pytest.raises(ValueError, match="feat_num 3"):
        precompute_feature_maps(type("E4", (MeanColour,), {"output_nc": 4})(), ds, out, device="cpu")


# ---------------------------------------------------------------------------------------------------------------
# CLI end to end


def net_args(root: str, ckpt, name: str = "feat") -> list[str]:
    return [
        "--name", name, "--dataroot", root, "--checkpoints_dir", str(ckpt), "--label_nc", "35",
        "--resize_or_crop", "none", "--netG", "global", "--ngf", "8", "--n_downsample_global", "2",
        "--n_blocks_global", "1", "--instance_feat", "--nef", "8", "--n_downsample_E", "2", "--device", "cpu",
        "--num_threads", "1", "--nThreads", "0",
    ]  # fmt: skip


def last_json(text: str) -> dict:
    return json.loads(text[text.rfind("\n{") + 1 :] if not text.startswith("{") else text)


def test_cli_train_encode_test_sample_and_edit(tmp_path, capsys):
    root = str(tmp_path / "data")
    make_synthetic_dataset(root, n=4, size=(32, 64), seed=0, n_test=2)
    ckpt = tmp_path / "ckpt"
    base = net_args(root, ckpt)
    train = ["--ndf", "8", "--num_D", "1", "--n_layers_D", "2", "--no_vgg_loss", "--no_progress", "--niter", "1",
             "--niter_decay", "0", "--no_html", "--amp", "off"]  # fmt: skip
    assert cli.main(["train", *base, *train]) == 0
    capsys.readouterr()

    # sampling before the clusters exist: a clear error naming the file and the command that creates it
    assert cli.main(["test", *base, "--results_dir", str(tmp_path / "r0")]) == 2
    err = capsys.readouterr().err
    assert "features_clustered_010.npz" in err and "pix2pixhd-fast encode-features" in err

    assert cli.main(["encode-features", *base, "--n_clusters", "3", "--min_area_frac", "0.002"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["images"] == 4 and summary["instances"] > 0 and summary["clusters_file"].endswith("_003.npz")
    clusters = load_clusters(summary["clusters_file"], feat_num=3)
    assert "26" in summary["instances_per_class"] and clusters.num_clusters(26) == 3
    assert sum(summary["instances_per_class"].values()) == summary["instances"]
    assert os.path.isfile(ckpt / "feat" / "features.npz")

    def run_test(results: str, *extra: str) -> tuple[dict, np.ndarray]:
        assert cli.main(["test", *base, "--n_clusters", "3", "--results_dir", str(tmp_path / results), *extra]) == 0
        capsys.readouterr()
        folder = tmp_path / results / "feat" / "test_latest"
        metrics = json.loads((folder / "metrics.json").read_text())
        imgs = sorted(f for f in os.listdir(folder / "images") if f.endswith("synthesized_image.png"))
        return metrics, np.stack([np.asarray(Image.open(folder / "images" / f)) for f in imgs])

    m1, a = run_test("s0", "--seed", "0")
    assert m1["features"] == "sampled cluster centres" and m1["feature_seed"] == 0 and m1["images"] == 2
    assert math.isfinite(m1["psnr_mean"])
    _, a_again = run_test("s0b", "--seed", "0")
    assert np.array_equal(a, a_again)  # same seed, same styles
    seeds = [run_test(f"s{s}", "--seed", str(s))[1] for s in (1, 2, 3)]
    assert any(not np.array_equal(a, b) for b in seeds)  # other seeds, other styles

    # --feat_edit: a car of the first test scene gets each of its class's 3 clusters in turn
    ds = Pix2PixHDDataset(root, "test", label_nc=35, resize_or_crop="none", isTrain=False, n_downsample_global=2)
    cars = [int(i) for i in np.unique(ds.get_item(0, seed=0)["inst"]) if i // 1000 == 26]
    assert cars, "the first test scene has no car"
    edited = []
    for k in range(3):
        m, img = run_test(f"e{k}", "--seed", "0", "--feat_edit", f"{cars[0]}:{k},424242:0")
        assert m["feat_edit"] == {str(cars[0]): k, "424242": 0} and m["feat_edit_unmatched"] == [424242]
        edited.append(img)
    assert any(not np.array_equal(edited[0][0], e[0]) for e in edited[1:])  # the car's style reaches the image
    # an index the class does not have is an error, not a silent clamp
    assert cli.main(["test", *base, "--n_clusters", "3", "--feat_edit", f"{cars[0]}:3"]) == 2
    assert "has 3 cluster(s)" in capsys.readouterr().err
    # features of the real image still work, and need no clusters file
    m_enc, _ = run_test("enc", "--use_encoded_image", "--n_clusters", "7")
    assert m_enc["features"] == "encoded real image" and "clusters_file" not in m_enc

    # the demo's styles section on this model: one scene, 4 seeds + encoded, one car through its clusters
    from pix2pixhd_fast.demo import render_styles

    opt = parse_test([*base, "--use_encoded_image", "--how_many", "2"])
    rows, info = render_styles(opt, clusters, str(tmp_path / "styles"))
    assert [len(r[1]) for r in rows] == [7, 3] and info["car"] // 1000 == 26
    imgs = {c: np.asarray(Image.open(tmp_path / "styles" / rel)) for r in rows for c, rel in r[1]}
    seeds = [imgs[f"sampled clusters, seed {s}"] for s in range(4)]
    assert any(not np.array_equal(seeds[0], x) for x in seeds[1:])
    walk = [imgs[f"--feat_edit {info['car']}:{k}"] for k in range(3)]
    assert any(not np.array_equal(walk[0], x) for x in walk[1:])


def test_cli_precompute_feature_maps_feed_load_features_training(tmp_path, capsys):
    root = str(tmp_path / "data")
    make_synthetic_dataset(root, n=2, size=(32, 64), seed=1, n_test=1)
    ckpt = tmp_path / "ckpt"
    base = net_args(root, ckpt, "pre")
    train = ["--ndf", "8", "--num_D", "1", "--n_layers_D", "2", "--no_vgg_loss", "--no_progress", "--no_html",
             "--amp", "off"]  # fmt: skip
    assert cli.main(["train", *base, *train, "--max_iters", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["precompute-feature-maps", *base]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["files"] == 2 and summary["folder"] == os.path.join(root, "train_feat")
    # train a new model on the stored maps (no encoder)
    assert cli.main(["train", *net_args(root, ckpt, "loaded"), *train, "--load_features", "--max_iters", "1"]) == 0
    capsys.readouterr()
    assert not os.path.exists(ckpt / "loaded" / "latest_net_E.pth")
    # feature maps are RGB files: other widths are refused with a clear message
    assert cli.main(["precompute-feature-maps", *net_args(root, ckpt, "pre"), "--feat_num", "4"]) == 2
    assert "feat_num" in capsys.readouterr().err


def test_feature_options():
    opt = parse_features("encode-features", ["--name", "x"])
    assert opt.instance_feat and opt.use_features and opt.phase == "train" and opt.batchSize == 8
    assert opt.min_area_frac == pytest.approx(1 / 64) and opt.n_clusters == 10
    assert parse_features("encode-features", ["--label_feat"]).instance_feat is False
    assert parse_features("precompute-feature-maps", []).batchSize == 1
    with pytest.raises(ValueError, match="min_area_frac"):
        parse_features("encode-features", ["--min_area_frac", "1"])
    t = parse_test(["--instance_feat", "--feat_edit", "26001:3"])
    assert t.feat_edit == "26001:3" and t.cluster_path is None


def test_demo_runs_every_feature_step_with_matching_options(tmp_path, monkeypatch):
    """The demo's command lines (mocked runs): a baseline without features and the feature model, encode-features
    with the feature model's options, tests of each kind with the options of the model they load, three PSNRs."""
    import pix2pixhd_fast.data as data_mod
    import pix2pixhd_fast.demo as demo_mod
    import pix2pixhd_fast.features as features_mod
    import pix2pixhd_fast.infer as infer_mod
    import pix2pixhd_fast.train as train_mod

    calls = []
    monkeypatch.setattr(data_mod, "make_synthetic_dataset", lambda *a, **k: {})
    stats = {"images_per_s": 1.0, "epochs_done": 1, "iterations": 4, "last_losses": {}}
    monkeypatch.setattr(train_mod, "train", lambda opt: calls.append(("train", opt, None)) or stats)
    enc = {"clusters_file": "c", "instances": 5, "instances_per_class": {"26": 5}, "clusters_per_class": {"26": 2}}
    monkeypatch.setattr(features_mod, "run_encode_features", lambda opt: calls.append(("encode", opt, None)) or enc)
    monkeypatch.setattr(features_mod, "load_clusters", lambda path: FeatureClusters({26: np.zeros((2, 3))}, 3))
    monkeypatch.setattr(demo_mod, "render_styles", lambda opt, *a, **k: ([("styles", [("x", "y.png")])], {"car": 1}))
    psnrs = iter([11.0, 12.0, 13.0, 14.0])

    def fake_test(opt, extra_rows=None):
        calls.append(("test", opt, extra_rows))
        value = next(psnrs)
        return {"psnr_mean": value, "psnr_per_image": [value] * 4, "images": 4, "page": f"{opt.results_dir}/p"}

    monkeypatch.setattr(infer_mod, "run_test", fake_test)
    result = demo_mod.run_demo(str(tmp_path / "demo"), quick=True, device="cpu")
    kinds = [(k, o.name) for k, o, _ in calls]
    assert kinds == [("train", "demo_nofeat"), ("test", "demo_nofeat"), ("train", "demo"), ("encode", "demo"),
                     ("test", "demo"), ("test", "demo"), ("test", "demo")]  # fmt: skip
    trained = {o.name: o for k, o, _ in calls if k == "train"}
    arch = ("checkpoints_dir", "dataroot", "label_nc", "netG", "ngf", "n_downsample_global", "n_blocks_global",
            "instance_feat", "feat_num", "nef", "n_downsample_E", "resize_or_crop", "device")  # fmt: skip
    for kind, o, _ in calls[1:]:
        if kind != "train":
            assert {k: getattr(o, k) for k in arch} == {k: getattr(trained[o.name], k) for k in arch}, kind
    assert not trained["demo_nofeat"].instance_feat and trained["demo"].instance_feat
    sampled, zeroed, encoded = (c[1] for c in calls[4:])
    assert not sampled.use_encoded_image and sampled.cluster_path is None
    assert zeroed.cluster_path.endswith("features_none.npz")
    assert load_clusters(zeroed.cluster_path).labels == []  # no class has clusters: all-zero features
    assert encoded.use_encoded_image and calls[-1][2] == [("styles", [("x", "y.png")])]
    assert result["test_psnr_db"] == {
        "no_features_model": 11.0,
        "sampled_cluster_centres": 12.0,
        "zero_features": 13.0,
        "encoded_real_image_features": 14.0,
    }
    assert json.loads((tmp_path / "demo" / "demo_summary.json").read_text())["features"]["instances"] == 5
    calls.clear()
    psnrs = iter([12.0, 13.0, 14.0])
    result = demo_mod.run_demo(str(tmp_path / "demo2"), quick=True, device="cpu", baseline=False)
    assert [o.name for k, o, _ in calls if k == "train"] == ["demo"] and "no_features_model" not in result[
        "test_psnr_db"
    ]
