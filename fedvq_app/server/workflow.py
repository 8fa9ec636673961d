"""The default ServerApp workflow of neural methods: build, run the loop, report."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from fedvq_app.config import Settings
from fedvq_app.data.datasets import dataset_info, training_pool_size
from fedvq_app.models.state import shared_arrays
from fedvq_app.registry import get_method
from fedvq_app.server.loop import LoopPlan, run_rounds
from fedvq_app.server.preflight import check_partition_feasible
from fedvq_app.strategies.contract import RoundStrategy
from fedvq_app.strategies.privacy import privatize
from fedvq_app.tracking.experiment import ExperimentTracker
from fedvq_app.training.dpsgd import dp_compatible


def train_config(settings: Settings) -> dict[str, Any]:
    """Per-round values clients read from the ConfigRecord."""
    return {"lr": settings.train.lr, "local-epochs": settings.train.local_epochs}


def seed_server(seed: int) -> None:
    """Seed every generator the server uses (node sampling, model init): same seed, same run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_neural_workflow(grid: Grid, settings: Settings, tracker: ExperimentTracker) -> dict[str, Any]:
    """Initial model on the server, the round loop, and the method's final report.

    The loop checkpoints every round and, with ``resume-from``, continues from the
    checkpoint (see :mod:`fedvq_app.server.checkpoint`).
    """
    return run_training(grid, settings, tracker).final_report()


def run_training(grid: Grid, settings: Settings, tracker: ExperimentTracker):
    """Build the initial shared arrays and the strategy, run the round loop; the strategy afterwards.

    Workflows that do more after training (CFL's cross-evaluation) start from here too.
    """
    spec = get_method(settings.method)
    info = dataset_info(settings.dataset, settings.seed)
    check_partition_feasible(settings, info.num_classes)
    seed_server(settings.seed)
    if spec.build_model is None:
        raise TypeError(f"method {settings.method!r} has no model: it needs its own server_workflow")
    arrays = shared_arrays(dp_compatible(spec.build_model(settings, info), settings), spec.is_shared)
    strategy: RoundStrategy = spec.build_strategy(settings, info)
    # the reply guard refuses claims beyond the whole pool
    strategy.max_num_examples = training_pool_size(settings.dataset, settings.seed)
    strategy = privatize(strategy, settings)  # client-level DP wraps the guarded strategy
    plan = LoopPlan(
        first_round=1,
        last_round=settings.num_server_rounds,
        timeout=settings.round_timeout,
        eval_every=settings.eval_every,
        train_config=train_config(settings),
        evaluate_config={},
        evaluate_with_train=settings.evaluate_with_train,
    )
    run_rounds(strategy, grid, arrays, plan, tracker)
    return strategy
