"""Instance-level feature embedding: encode, cluster, sample and edit a style per object.

After training with ``--instance_feat``, the encoder E maps a photo to a feature map that is constant over each
instance. This package:

- :func:`encode_features` runs E over the training set and records one vector per instance (class, area);
- :func:`cluster_features` runs k-means per class; :class:`FeatureClusters` saves/loads the centres (``.npz``
  without pickles; the reference's ``features_clustered_%03d.npy`` is read safely too);
- :func:`feature_map` builds the generator's feature input for a label/instance map: a seeded random centre per
  instance, or the user's choice (a cluster index or a vector) per instance id;
- :func:`precompute_feature_maps` writes E's maps as ``<phase>_feat`` images for ``--load_features`` training.

Typical use::

    bank = encode_features(model, Pix2PixHDDataset(root, "train", isTrain=False), device="cuda")
    clusters = cluster_features(bank, n_clusters=10, seed=0)
    clusters.save("checkpoints/run/features_clustered_010.npz")
    feat = feature_map(label, inst, clusters, seed=3, choice={26001: 2})   # car 26001 gets its class's cluster 2
    image = model.inference(label, inst, feat=feat)

Command line: ``pix2pixhd-fast encode-features``, ``pix2pixhd-fast test --instance_feat [--seed S]
[--feat_edit 26001:3]``, ``pix2pixhd-fast precompute-feature-maps``.
"""

from .clusters import (
    FORMAT_NAME,
    FeatureClusters,
    cluster_features,
    clusters_filename,
    load_clusters,
    load_reference_clusters,
)
from .commands import find_clusters_file, inference_features, run_encode_features, run_precompute_feature_maps
from .edit import Choice, feature_map, image_seed, parse_feat_edit
from .encode import (
    REFERENCE_MIN_AREA_FRAC,
    FeatureBank,
    encode_features,
    encoded_instances,
    feature_map_to_image,
    load_encoder,
    precompute_feature_maps,
)
from .instances import InstanceTable, class_of_id, instance_table

__all__ = [
    "FORMAT_NAME",
    "REFERENCE_MIN_AREA_FRAC",
    "Choice",
    "FeatureBank",
    "FeatureClusters",
    "InstanceTable",
    "class_of_id",
    "cluster_features",
    "clusters_filename",
    "encode_features",
    "encoded_instances",
    "feature_map",
    "feature_map_to_image",
    "find_clusters_file",
    "image_seed",
    "instance_table",
    "load_clusters",
    "load_encoder",
    "load_reference_clusters",
    "parse_feat_edit",
    "precompute_feature_maps",
    "run_encode_features",
    "run_precompute_feature_maps",
    "inference_features",
]
