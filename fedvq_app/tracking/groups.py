"""Head / medium / tail accuracy of a finished run, from its final evaluation's per-class counts.

Every classification client reports, for the global test set (``test-class-correct`` /
``test-class-total``) and for its own-distribution test rows (``own-test-class-...``),
how many images of each class its model got right out of how many (see
:meth:`fedvq_app.training.loop.EvalResult.as_metrics`). At the end of the run the tracker
pools the last evaluated round's counts into FedLoGe's head / medium / tail figures and
stores them in summary.json under :data:`SUMMARY_KEY`; the plot and table code reads them
there (nothing is rebuilt or re-run after the run).

Modes, named as FedLoGe's report names its own:

* ``model``: each client's model on the client's own long-tailed test rows (for a method
  with one global model: that model, scored on every client's own distribution);
* ``model-balanced``: the same models on the class-balanced global test set.

Groups: FedLoGe's rule (:func:`fedvq_app.aggregation.etf.shot_groups`) on the clients'
training label counts summed over the federation, with ``fedloge.head-share`` /
``fedloge.medium-share`` of the run's config, so a FedAvg run and a FedLoGe run of the
same split use the same classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedvq_app.aggregation.etf import GROUPS, mode_summary, shot_groups

#: summary.json key of the figures
SUMMARY_KEY = "head_medium_tail"
#: mode name -> the evaluation split whose per-class counts it pools
MODE_SPLITS = {"model": "own-test", "model-balanced": "test"}
#: FedLoGe's default shares (the reference's 75 % / 95 %)
DEFAULT_SHARES = (0.75, 0.95)


def _counts(clients: Mapping[str, Mapping[str, Any]], split: str) -> tuple[list, list] | None:
    correct = [c.get(f"{split}-class-correct") for c in clients.values()]
    total = [c.get(f"{split}-class-total") for c in clients.values()]
    if not clients or any(not x for x in correct + total):
        return None
    return [np.asarray(x, dtype=np.int64) for x in correct], [np.asarray(x, dtype=np.int64) for x in total]


def head_medium_tail(
    rounds: list[dict[str, Any]],
    label_counts: Mapping[int, list[int]],
    shares: tuple[float, float] = DEFAULT_SHARES,
) -> dict[str, Any]:
    """``{"round", "groups", "modes": {mode: overall/head/medium/tail, class_accuracy, class_total,
    groups}}`` of the last evaluated round; empty when the clients sent no per-class counts
    (k-means, runs recorded before the counts existed) or no label counts are known."""
    evaluated = [r for r in rounds if r.get("evaluate", {}).get("clients")]
    if not evaluated or not label_counts:
        return {}
    counts = [np.asarray(v, dtype=np.float64) for v in label_counts.values()]
    if len({c.shape for c in counts}) != 1 or counts[0].ndim != 1 or any((c < 0).any() for c in counts):
        return {}  # clients that disagree on the classes: no groups to speak of (the summary must still be written)
    frequencies = np.sum(counts, axis=0)
    if frequencies.sum() <= 0:
        return {}
    groups = shot_groups(frequencies, *shares)
    table = {name: np.flatnonzero(groups == gid).tolist() for gid, name in enumerate(GROUPS)}
    clients = evaluated[-1]["evaluate"]["clients"]
    modes = {}
    for mode, split in MODE_SPLITS.items():
        counts = _counts(clients, split)
        if counts is not None and all(len(t) == len(groups) for t in counts[1]):
            modes[mode] = {**mode_summary(*counts, groups), "groups": table}
    if not modes:
        return {}
    return {"round": evaluated[-1]["round"], "groups": table, "modes": modes}
