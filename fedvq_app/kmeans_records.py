"""k-means' global feature transform on the wire: encoded by the server's phases, read by the client.

Apart from :mod:`fedvq_app.records` because it needs the k-means math (scikit-learn), which a
neural client never imports.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, RecordDict

from fedvq_app.aggregation.kmeans import FeatureTransform
from fedvq_app.protocol import CONFIG, KMEANS_TRANSFORM
from fedvq_app.records import to_numpy, to_record


def transform_record(transform: FeatureTransform) -> tuple[ArrayRecord, dict[str, Any]]:
    """k-means: the global transform as an ArrayRecord plus the config entry naming the cluster space."""
    arrays = {"mean": transform.mean, "std": transform.std}
    if transform.components is not None:
        arrays["components"] = transform.components
    return to_record(arrays), {"cluster-space": "pca" if transform.cluster_on_pca else "normalized"}


def read_transform(content: RecordDict) -> FeatureTransform:
    """k-means: the transform a server message carries (client side; see :func:`transform_record`)."""
    arrays = to_numpy(content[KMEANS_TRANSFORM])
    on_pca = str(content[CONFIG].get("cluster-space", "normalized")) == "pca"
    return FeatureTransform(arrays["mean"], arrays["std"], arrays.get("components"), on_pca)
