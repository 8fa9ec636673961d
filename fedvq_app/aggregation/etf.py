"""FedLoGe's pure math: the sparse simplex ETF, GLA-FR realignment, long-tail groups.

No torch and no flwr here: everything is a numpy function unit-tested on its own.

* :func:`reference_sse_c` -- the static classifier SSE-C as FedLoGe's reference code
  builds it: a simplex equiangular tight frame (class vectors with pairwise cosine
  -1/(C-1)) with a random 60 % of its entries zeroed, then every class vector pulled
  to norm 0.1 with the angles of the frame kept on the surviving entries
  (:func:`frame_on_support`), plus a random bias; both frozen.
* :func:`sparse_etf` -- the project's first SSE-C: the largest-magnitude entries of
  every class vector kept, rows rescaled to unit norm, no bias.
* :func:`realign_global` / :func:`realign_local` -- GLA-FR: the global head's
  class rows rescaled to one norm ``tau``; a client's local head made of the global
  head's rows times the norms of the client's own local-head rows.
* :func:`shot_groups` -- head / medium / tail classes by cumulative share of the
  training samples (FedLoGe's reference uses 75 % and 95 %).
* :func:`class_hits`, :func:`group_accuracy`, :func:`mode_summary` -- accuracy
  overall and per group, from per-class correct/total counts.
* :func:`proportional_counts`, :func:`personal_test_rows` -- a client's own
  long-tailed test set: test images drawn so that they follow the client's
  training label mix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GROUPS = ("head", "medium", "tail")
HEAD, MEDIUM, TAIL = range(3)
_EPS = 1e-12


# ----------------------------------------------------------------------------
# SSE-C: sparse simplex ETF
# ----------------------------------------------------------------------------
def simplex_etf(feature_dim: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(C, d) class vectors of unit norm whose pairwise cosines are all -1/(C-1).

    M = sqrt(C/(C-1)) * (I - 11^T/C) P^T with P a random (d, C) matrix of
    orthonormal columns (QR of a Gaussian matrix), so it needs d >= C.
    """
    if num_classes < 2:
        raise ValueError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    if feature_dim < num_classes:
        raise ValueError(
            f"a simplex ETF of {num_classes} classes needs a feature dimension >= {num_classes}, "
            f"the backbone gives {feature_dim}"
        )
    basis, _ = np.linalg.qr(rng.standard_normal((feature_dim, num_classes)))
    centering = np.eye(num_classes) - np.full((num_classes, num_classes), 1.0 / num_classes)
    return np.sqrt(num_classes / (num_classes - 1)) * centering @ basis.T


def sparsify_rows(matrix: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the smallest-magnitude ``sparsity`` share of every row; rows keep their norm.

    At least one entry per row survives, so a class vector never vanishes.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    rows, cols = matrix.shape
    keep = max(1, int(round((1.0 - sparsity) * cols)))
    order = np.argsort(-np.abs(matrix), axis=1, kind="stable")[:, :keep]
    sparse = np.zeros_like(matrix)
    np.put_along_axis(sparse, order, np.take_along_axis(matrix, order, axis=1), axis=1)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    kept = np.linalg.norm(sparse, axis=1, keepdims=True)
    return sparse * (norms / np.maximum(kept, _EPS))


def sparse_etf(feature_dim: int, num_classes: int, sparsity: float, seed: int) -> np.ndarray:
    """SSE-C weights (C, d), float32, the same on every node for the same seed."""
    rng = np.random.default_rng([seed, feature_dim, num_classes])
    return sparsify_rows(simplex_etf(feature_dim, num_classes, rng), sparsity).astype(np.float32)


def random_support(shape: tuple[int, int], sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask with ``int(sparsity * size)`` entries zeroed at uniformly random positions of the matrix."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    mask = np.ones(shape[0] * shape[1], dtype=bool)
    mask[rng.choice(mask.size, int(sparsity * mask.size), replace=False)] = False
    mask = mask.reshape(shape)
    empty = np.flatnonzero(~mask.any(axis=1))
    if len(empty):
        raise ValueError(f"sparsity {sparsity} leaves class vector(s) {empty.tolist()} without any entry")
    return mask


def frame_on_support(frame: np.ndarray, support: np.ndarray, norm: float) -> np.ndarray:
    """Class vectors restricted to ``support`` with row norm ``norm`` and the Gram (angles) of ``frame``.

    Zeroing entries of an ETF moves its angles; FedLoGe's reference code pulls them
    back with masked Adam steps on a norm + minimum-angle loss. This solves for the
    same target directly: it minimises ||W W^T - norm^2 cos(frame)||^2 over the
    entries of ``support`` (scipy's L-BFGS-B), started from the zeroed frame scaled to
    ``norm``. Where the support admits the frame (d well above C, as for every backbone
    here) the result has exactly the frame's cosines.
    """
    from scipy.optimize import minimize  # noqa: PLC0415 (scipy is slow to import)

    unit = frame / np.maximum(np.linalg.norm(frame, axis=1, keepdims=True), _EPS)
    target = unit @ unit.T
    start = frame * support
    start = start / np.maximum(np.linalg.norm(start, axis=1, keepdims=True), _EPS)
    free = np.flatnonzero(support)

    def mismatch(values: np.ndarray) -> tuple[float, np.ndarray]:
        weights = np.zeros(support.size)
        weights[free] = values
        weights = weights.reshape(support.shape)
        residual = weights @ weights.T - target
        return float((residual * residual).sum()), (4.0 * residual @ weights).ravel()[free]

    result = minimize(
        mismatch,
        start.ravel()[free],
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 3000, "ftol": 1e-16, "gtol": 1e-12},
    )
    solved = np.zeros(support.size)
    solved[free] = result.x
    solved = solved.reshape(support.shape)
    return solved * (norm / np.maximum(np.linalg.norm(solved, axis=1, keepdims=True), _EPS))


REFERENCE_NORM = 0.1  # the reference pulls every SSE-C class vector to this norm


def reference_sse_c(feature_dim: int, num_classes: int, sparsity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(weights (C, d), bias (C,)) float32 of the reference's SSE-C, the same on every node for a seed.

    The bias is what the reference's ``nn.Linear`` starts with and never trains:
    uniform in +-1/sqrt(d).
    """
    rng = np.random.default_rng([seed, feature_dim, num_classes, 1])
    frame = simplex_etf(feature_dim, num_classes, rng)
    weights = frame_on_support(frame, random_support(frame.shape, sparsity, rng), REFERENCE_NORM)
    bound = 1.0 / np.sqrt(feature_dim)
    bias = rng.uniform(-bound, bound, size=num_classes)
    return weights.astype(np.float32), bias.astype(np.float32)


def cosine_matrix(matrix: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity of the rows."""
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), _EPS)
    return unit @ unit.T


def etf_statistics(matrix: np.ndarray) -> dict[str, float]:
    """How far a (sparsified) ETF is from the ideal: cosines, norms, zero share."""
    cos = cosine_matrix(matrix)
    off = cos[~np.eye(len(cos), dtype=bool)]
    return {
        "ideal_cosine": -1.0 / (len(matrix) - 1),
        "mean_cosine": float(off.mean()),
        "max_cosine": float(off.max()),
        "min_angle_deg": float(np.degrees(np.arccos(np.clip(off.max(), -1.0, 1.0)))),
        "zero_share": float((matrix == 0).mean()),
        "row_norm_min": float(np.linalg.norm(matrix, axis=1).min()),
        "row_norm_max": float(np.linalg.norm(matrix, axis=1).max()),
    }


# ----------------------------------------------------------------------------
# GLA-FR
# ----------------------------------------------------------------------------
def row_norms(weight: np.ndarray) -> np.ndarray:
    """L2 norm of every class row."""
    return np.linalg.norm(weight, axis=1)


def realign_global(weight: np.ndarray, tau: float) -> np.ndarray:
    """Global realignment: every class row rescaled to norm ``tau`` (zero rows stay zero).

    A head trained on long-tailed data grows long rows for frequent classes;
    equal norms remove that prior and keep only the learned directions.
    """
    norms = row_norms(weight)[:, None]
    return np.where(norms > _EPS, weight * (tau / np.maximum(norms, _EPS)), 0.0).astype(weight.dtype)


def realign_local(global_weight: np.ndarray, local_weight: np.ndarray) -> np.ndarray:
    """Local realignment: the global head's row c times the norm of local row c.

    The local head's norms encode the client's own label prior; the global head
    brings directions learned from everyone's data (the reference multiplies the
    raw global rows, not unit ones, and so does this).
    """
    if global_weight.shape != local_weight.shape:
        raise ValueError(f"head shapes differ: {global_weight.shape} vs {local_weight.shape}")
    return (global_weight * row_norms(local_weight)[:, None]).astype(global_weight.dtype)


# ----------------------------------------------------------------------------
# long-tail groups and accuracies
# ----------------------------------------------------------------------------
def shot_groups(class_counts: Sequence[float], head_share: float = 0.75, medium_share: float = 0.95) -> np.ndarray:
    """Group id per class (0 head, 1 medium, 2 tail) by cumulative share of samples.

    Classes are sorted by count (ties keep class order). The head is the shortest
    prefix holding at least ``head_share`` of all samples, the medium group
    extends it to ``medium_share``, the rest is the tail -- FedLoGe's rule.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if not 0.0 < head_share <= medium_share <= 1.0:
        raise ValueError(f"need 0 < head_share <= medium_share <= 1, got {head_share}, {medium_share}")
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("class counts must be a non-negative vector with a positive total")
    order = np.argsort(-counts, kind="stable")
    cumulative = np.cumsum(counts[order]) / counts.sum()
    head_end = int(np.argmax(cumulative >= head_share - 1e-9))
    medium_end = int(np.argmax(cumulative >= medium_share - 1e-9))
    groups = np.full(len(counts), TAIL, dtype=np.int64)
    groups[order[: medium_end + 1]] = MEDIUM
    groups[order[: head_end + 1]] = HEAD
    return groups


def class_hits(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (correct, total) counts."""
    labels = np.asarray(labels, dtype=np.int64)
    hit = np.asarray(predictions) == labels
    total = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[hit], minlength=num_classes)
    return correct.astype(np.int64), total.astype(np.int64)


def group_accuracy(correct: np.ndarray, total: np.ndarray, groups: np.ndarray) -> dict[str, float | None]:
    """Accuracy over all samples and over the samples of each group (None = no samples)."""
    correct, total = np.asarray(correct), np.asarray(total)
    out: dict[str, float | None] = {"overall": _ratio(correct.sum(), total.sum())}
    for gid, name in enumerate(GROUPS):
        mask = np.asarray(groups) == gid
        out[name] = _ratio(correct[mask].sum(), total[mask].sum())
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def mode_summary(
    per_client_correct: Sequence[np.ndarray], per_client_total: Sequence[np.ndarray], groups: np.ndarray
) -> dict:
    """One inference mode over all clients: means of the per-client accuracies.

    ``overall``/``head``/``medium``/``tail`` average each client's accuracy over
    the clients that have samples of that kind (FedLoGe's reporting); the pooled
    per-class accuracy feeds the plots.
    """
    per_client = [group_accuracy(c, t, groups) for c, t in zip(per_client_correct, per_client_total, strict=True)]
    summary: dict = {}
    for key in ("overall", *GROUPS):
        values = [p[key] for p in per_client if p[key] is not None]
        summary[key] = float(np.mean(values)) if values else None
    correct = np.sum(per_client_correct, axis=0)
    total = np.sum(per_client_total, axis=0)
    summary["class_accuracy"] = [_ratio(c, t) for c, t in zip(correct, total, strict=True)]
    summary["class_total"] = total.tolist()
    return summary


# ----------------------------------------------------------------------------
# personal test sets
# ----------------------------------------------------------------------------
def proportional_counts(train_counts: Sequence[int], available: Sequence[int]) -> np.ndarray:
    """Test images per class for a test set that follows the training label mix.

    Size T is the largest for which every class c gets round(p_c * T) images,
    p_c = train_counts[c] / sum, without using more test images of c than exist
    (and T <= all test images): the client's most demanding class uses all of
    its test images. Classes the client never trained on get none.
    """
    train = np.asarray(train_counts, dtype=np.float64)
    avail = np.asarray(available, dtype=np.int64)
    if train.shape != avail.shape or train.sum() <= 0:
        return np.zeros_like(avail)
    share = train / train.sum()
    present = share > 0
    size = min(float(avail.sum()), float(np.min(avail[present] / share[present])))
    return np.minimum(np.round(share * size).astype(np.int64), avail)


PERSONAL_STREAM = 7  # salt of the personal test set's random stream


def personal_test_rows(
    test_labels: np.ndarray, train_counts: Sequence[int], seed: int, partition_id: int
) -> np.ndarray:
    """Rows of the global test set forming a client's own (long-tailed) test set.

    Per class c, ``proportional_counts`` images (training share of c times the
    largest size the test set allows), drawn without replacement with a stream
    seeded by (seed, partition id): the same set every round and on every node.
    """
    labels = np.asarray(test_labels, dtype=np.int64)
    num_classes = len(train_counts)
    counts = proportional_counts(train_counts, np.bincount(labels, minlength=num_classes))
    rng = np.random.default_rng([seed, partition_id, PERSONAL_STREAM])
    rows = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False) for c, n in enumerate(counts) if n]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)
