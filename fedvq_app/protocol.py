"""Custom message types of the methods' protocols: plain strings, importable for free.

The ClientApp must register a handler for every custom message type when it is
imported, before it knows which method a run uses; this module gives it the
types and the client method answering each without importing any method's code
(scikit-learn, torch, ...). The k-means phases and client import them from here.
"""

from __future__ import annotations

KMEANS_HANDSHAKE = "query.kmeans_handshake"
KMEANS_NORMALIZATION = "query.kmeans_normalization"
KMEANS_PCA = "query.kmeans_pca"
KMEANS_INIT = "query.kmeans_init"
KMEANS_STEP = "train.kmeans_step"
KMEANS_EVALUATION = "evaluate.kmeans_evaluation"

#: k-means message type -> KMeansClient method answering it
KMEANS_ACTIONS = {
    KMEANS_HANDSHAKE: "handshake",
    KMEANS_NORMALIZATION: "normalization_stats",
    KMEANS_PCA: "covariance_stats",
    KMEANS_INIT: "init_summaries",
    KMEANS_STEP: "lloyd_step",
    KMEANS_EVALUATION: "final_evaluation",
}
