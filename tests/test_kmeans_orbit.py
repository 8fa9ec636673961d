"""An inexact (privacy-filtered) Lloyd update that cycles is stopped at its best state."""

from __future__ import annotations

import numpy as np

from fedvq_app.server.kmeans_workflow import _orbit_start, _settle_on_best_state
from fedvq_app.strategies.kmeans_step import LloydStep, StepResult

STATES = [np.full((1, 2, 2), float(v)) for v in (0, 1, 2, 3)]


def _result(rnd: int, sent: np.ndarray, new: np.ndarray, inertia: float) -> StepResult:
    return StepResult(
        server_round=rnd,
        centroids=new,
        previous=sent,
        shifts=np.array([1.0]),
        counts=np.ones((1, 2), int),
        empty=np.zeros((1, 2), bool),
        inertia=np.array([inertia]),
    )


def test_a_repeated_state_is_found_and_the_lowest_inertia_state_kept():
    # states 1 -> 2 -> 3 -> 1: the third update reproduces what round 2 sent
    results = [
        _result(1, STATES[0], STATES[1], 9.0),
        _result(2, STATES[1], STATES[2], 5.0),
        _result(3, STATES[2], STATES[3], 4.0),
    ]
    assert _orbit_start(results) is None
    results.append(_result(4, STATES[3], STATES[1], 6.0))
    assert _orbit_start(results) == 1
    step = LloydStep(k=2, dim=2, threshold=5)
    _settle_on_best_state(step, results[1:])
    assert np.array_equal(step.centroids, STATES[2]) and step.best_run() == 0
    assert step.last.inertia[0] == 4.0
