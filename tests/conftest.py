"""Shared fixtures: Flower's server identity, run configs and fake replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedvq_app.local_grid import claim_server_identity, full_run_config
from fedvq_app.records import to_record


@pytest.fixture(autouse=True, scope="session")
def _private_partition_cache(tmp_path_factory):
    """Partition cache files of the tests go to a temporary folder, not ~/.cache (subprocesses inherit it)."""
    import os

    from fedvq_app.data.cache import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("partition_cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(autouse=True)
def _server_identity():
    """Messages can only be built where Flower knows the run (as in a ServerApp)."""
    claim_server_identity()


@pytest.fixture
def run_config():
    """``run_config(**{"partition.alpha": 0.1})`` -> the pyproject defaults with overrides."""
    return full_run_config


def instruction(node_id: int, arrays: dict[str, np.ndarray], message_type: str = "train") -> Message:
    """A server->client message as a strategy would send it."""
    content = RecordDict({"arrays": to_record(arrays), "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, dst_node_id=node_id, message_type=message_type)


def reply(to: Message, arrays: dict[str, np.ndarray] | None, metrics: dict, **extras) -> Message:
    """A client's reply to ``to`` carrying ``arrays`` + ``metrics`` (+ extra records)."""
    records = {"metrics": MetricRecord(metrics), **extras}
    if arrays is not None:
        records["arrays"] = to_record(arrays)
    return Message(content=RecordDict(records), reply_to=to)


def vq_options(**overrides):
    """Options for ``build_vq_classifier`` in unit tests: a one-head gumbel VQ unless overridden."""
    from types import SimpleNamespace

    defaults = dict(
        temperature=1.0,
        proj_init_gain=1.0,
        quantizer="gumbel",
        eval_sampling=False,
        ema_decay=0.9,
        dead_code_threshold=0.0,
        heads=1,
        head="pool",
        decoder_norm="batch",
        rotation_trick=False,
    )
    return SimpleNamespace(**{**defaults, **overrides})
