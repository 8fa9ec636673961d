"""The k-means phases fed with fake replies, and the client's replies inspected directly."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, Error, Message, MetricRecord, RecordDict

from fedvq_app.aggregation.kmeans import FeatureTransform
from fedvq_app.client_app import app as client_app
from fedvq_app.clients.kmeans import ACTIONS, KMeansClient
from fedvq_app.kmeans_records import read_transform
from fedvq_app.records import to_numpy, to_record
from fedvq_app.registry import load_settings
from fedvq_app.strategies.kmeans_evaluation import KMeansEvaluation
from fedvq_app.strategies.kmeans_handshake import Handshake, HandshakeError
from fedvq_app.strategies.kmeans_init import SummaryInit
from fedvq_app.strategies.kmeans_normalization import Normalization
from fedvq_app.strategies.kmeans_pca import FederatedPCA
from fedvq_app.strategies.kmeans_step import LloydStep

IDENTITY_2D = FeatureTransform(np.zeros(2), np.ones(2))


def _reply(to: Message, metrics: dict, arrays: dict | None = None) -> Message:
    records = {"metrics": MetricRecord(metrics)}
    if arrays is not None:
        records["arrays"] = to_record(arrays)
    return Message(content=RecordDict(records), reply_to=to)


def _handshake_reply(msg: Message, partition: int, features: int, rows: int = 50) -> Message:
    metrics = {"num-examples": rows, "partition-id": partition, "num-features": features, "num-classes": 3}
    return _reply(msg, metrics)


def test_every_phase_message_type_has_a_registered_client_handler():
    phases = (Handshake, Normalization, FederatedPCA, SummaryInit, LloydStep, KMeansEvaluation)
    assert {p.message_type for p in phases} == set(ACTIONS)
    assert {p.message_type.split(".")[0] for p in phases} == {"query", "train", "evaluate"}
    assert all(hasattr(KMeansClient, handler) for handler in ACTIONS.values())
    assert set(ACTIONS) <= set(client_app._registered_funcs)


def test_handshake_mismatch_error_names_the_mismatching_clients():
    phase = Handshake()
    sent = phase.instructions([1, 2, 3])
    assert {m.metadata.message_type for m in sent} == {"query.kmeans_handshake"}
    replies = [_handshake_reply(sent[0], 0, 2), _handshake_reply(sent[1], 1, 2), _handshake_reply(sent[2], 2, 5)]
    with pytest.raises(HandshakeError) as err:
        phase.aggregate(replies)
    message = str(err.value)
    assert "mismatching clients: partition 2 (node 3)" in message
    assert "5 features: partition 2 (node 3)" in message and "(the majority has 2)" in message
    assert "\n" not in message


def test_handshake_agreement_builds_the_federation_and_skips_broken_replies():
    phase = Handshake()
    sent = phase.instructions([1, 2, 3])
    replies = [
        _handshake_reply(sent[0], 0, 4, rows=30),
        _handshake_reply(sent[1], 1, 4, rows=20),
        Message(Error(code=0, reason="disk full"), reply_to=sent[2]),
    ]
    federation = phase.aggregate(replies)
    assert federation.nodes == [1, 2] and federation.num_samples == 50 and federation.num_features == 4
    assert phase.rejections == [(3, "client error: disk full")]


def _step_reply(msg: Message, partition: int, sums, counts, inertia=1.0) -> Message:
    arrays = {
        "sums": np.asarray(sums, dtype=np.float64)[None],
        "counts": np.asarray(counts, dtype=np.int64)[None],
        "inertia": np.array([inertia]),
    }
    return _reply(msg, {"num-examples": int(np.sum(counts)) or 1, "partition-id": partition, "withheld": 0}, arrays)


def test_lloyd_step_merges_sums_and_counts_and_keeps_empty_clusters():
    step = LloydStep(k=3, dim=2, threshold=5, runs=1)
    step.centroids = np.array([[[0.0, 0.0], [10.0, 10.0], [50.0, 50.0]]])
    sent = step.instructions([1, 2], {"server-round": 1}, IDENTITY_2D, {"centroids": step.centroids})
    assert sent[0].metadata.message_type == "train.kmeans_step"
    replies = [
        _step_reply(sent[0], 0, [[6.0, 0.0], [55.0, 55.0], [0, 0]], [6, 5, 0], inertia=2.0),
        _step_reply(sent[1], 1, [[0.0, 12.0], [0.0, 0.0], [0, 0]], [6, 0, 0], inertia=3.0),
    ]
    result = step.aggregate(1, replies)
    np.testing.assert_allclose(step.centroids[0], [[0.5, 1.0], [11.0, 11.0], [50.0, 50.0]])
    assert result.empty[0].tolist() == [False, False, True]
    assert result.inertia.tolist() == [5.0] and result.participating == [0, 1]
    assert result.shift == pytest.approx(np.hypot(1.0, 1.0))
    assert step.round_report()["empty_clusters"] == [2]


def test_lloyd_step_rejects_a_reply_that_leaks_a_small_cluster():
    step = LloydStep(k=2, dim=2, threshold=5, runs=1)
    step.centroids = np.array([[[0.0, 0.0], [10.0, 10.0]]])
    sent = step.instructions([1, 2], {"server-round": 1}, IDENTITY_2D, {"centroids": step.centroids})
    replies = [
        _step_reply(sent[0], 0, [[6.0, 6.0], [50.0, 50.0]], [6, 5]),
        _step_reply(sent[1], 1, [[1.0, 1.0], [20.0, 20.0]], [1, 2]),  # means of 1 and 2 rows: must not count
    ]
    step.aggregate(1, replies)
    assert [n for n, _ in step.rejections] == [2]
    assert "below kmeans.privacy-threshold 5" in step.rejections[0][1]
    np.testing.assert_allclose(step.centroids[0], [[1.0, 1.0], [10.0, 10.0]])


def test_evaluation_sums_statistics_into_inertia_silhouette_and_ari():
    phase = KMeansEvaluation(k=2, num_classes=2, silhouette_sample=10)
    sent = phase.instructions([1, 2], phase.config(), IDENTITY_2D, {"centroids": np.zeros((2, 2))})
    metrics = {"num-examples": 4, "inertia": 1.5, "silhouette-sum": 2.0, "silhouette-count": 4}
    perfect = {"counts": np.array([2, 2]), "contingency": np.array([[2, 0], [0, 2]])}
    result = phase.aggregate(
        [
            _reply(sent[0], {**metrics, "partition-id": 0}, perfect),
            _reply(sent[1], {**metrics, "partition-id": 1}, perfect),
        ]
    )
    assert result["inertia"] == 3.0 and result["silhouette"] == 0.5 and result["ari"] == pytest.approx(1.0)
    assert result["cluster_sizes"] == [4, 4]


# ---------------------------------------------------------------- the client side
@pytest.fixture
def skewed_client_file(tmp_path):
    """One client: 20 rows around (0, 0) and 2 rows around (10, 10)."""
    rng = np.random.default_rng(0)
    rows = np.vstack([rng.normal(0.0, 0.3, (20, 2)), rng.normal(10.0, 0.3, (2, 2))])
    labels = np.array([0] * 20 + [1] * 2)
    np.savez(tmp_path / "client_0.npz", data=rows, labels=labels)
    return tmp_path


def _client(run_config, data_dir, **node_config) -> KMeansClient:
    config = run_config(
        method="kmeans",
        **{
            "kmeans.data-source": "generated",
            "kmeans.data-path": str(data_dir),
            "kmeans.k": 2,
            "kmeans.client-logs": False,
        },
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 1, **node_config},
        state=RecordDict(),
        run_config=config,
    )
    return KMeansClient(load_settings(config, context.node_config), context)


def _step_message(centroids: np.ndarray) -> Message:
    step = LloydStep(k=len(centroids), dim=2, threshold=5)
    return step.instructions([1], {"server-round": 1}, IDENTITY_2D, {"centroids": centroids[None]})[0]


def test_client_privacy_guard_drops_small_clusters_from_the_reply(run_config, skewed_client_file):
    client = _client(run_config, skewed_client_file)
    reply = client.lloyd_step(_step_message(np.array([[0.0, 0.0], [10.0, 10.0]])))
    arrays = to_numpy(reply.content["arrays"])
    assert arrays["counts"].tolist() == [[20, 0]]  # the 2-row cluster is withheld ...
    assert np.all(arrays["sums"][0, 1] == 0.0)  # ... and so is its sum
    np.testing.assert_allclose(arrays["sums"][0, 0], client.data.x[:20].sum(axis=0))
    assert reply.content["metrics"]["withheld"] == 1
    assert set(reply.content.array_records) == {"arrays"}  # nothing else travels


def test_a_site_can_raise_but_not_lower_the_privacy_threshold(run_config, skewed_client_file):
    strict = _client(run_config, skewed_client_file, **{"privacy-threshold": 25})
    reply = strict.lloyd_step(_step_message(np.array([[0.0, 0.0], [10.0, 10.0]])))
    assert to_numpy(reply.content["arrays"])["counts"].tolist() == [[0, 0]]
    lax = _client(run_config, skewed_client_file, **{"privacy-threshold": 1})
    assert lax.threshold == 5


def test_client_handshake_and_statistics_reveal_no_rows(run_config, skewed_client_file):
    client = _client(run_config, skewed_client_file)
    hello = client.handshake(Handshake().instructions([1])[0])
    assert dict(hello.content["metrics"]) == {
        "num-examples": 22,
        "partition-id": 0,
        "num-features": 2,
        "num-classes": 2,
    }
    assert not hello.content.array_records
    stats = to_numpy(client.normalization_stats(Normalization(2).instructions([1])[0]).content["arrays"])
    np.testing.assert_allclose(stats["mean"], client.data.x.mean(axis=0))
    np.testing.assert_allclose(stats["m2"], client.data.x.var(axis=0) * 22)
    pca_msg = FederatedPCA(2, 2).instructions([1], transform=IDENTITY_2D)[0]
    scatter = to_numpy(client.covariance_stats(pca_msg).content["arrays"])["scatter"]
    np.testing.assert_allclose(scatter, np.cov(client.data.x, rowvar=False) * 21)


def test_init_phase_rejects_too_small_local_means_server_side():
    phase = SummaryInit(k=2, local_k=2, dim=2, threshold=5, seed=0, runs=2)
    sent = phase.instructions([1], phase.config(), IDENTITY_2D)
    arrays = {"sums": np.array([[10.0, 0.0], [3.0, 3.0]]), "counts": np.array([10, 3], dtype=np.int64)}
    with pytest.raises(ValueError, match="no client could share a local mean"):
        phase.aggregate([_reply(sent[0], {"num-examples": 13, "partition-id": 0}, arrays)])
    assert "below kmeans.privacy-threshold" in phase.rejections[0][1]


def test_transform_travels_with_each_instruction():
    transform = FeatureTransform(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]), np.eye(3)[:, :2], True)
    msg = Normalization(3).instructions([7], transform=transform)[0]
    received = read_transform(msg.content)
    np.testing.assert_allclose(received.components, transform.components)
    assert received.cluster_on_pca and received.projects
