"""Every strategy the round loop drives keeps the one declared contract (strategies/contract.py).

The loop, the neural workflow and the checkpoint call ``round_report``, ``final_report``,
``state_dict``, ``load_state_dict``, ``rejections``, ``max_num_examples``... directly, with no
``getattr`` fallback; this test builds every neural method's strategy, bare and behind every
privacy wrapper its configuration admits, and holds each to the contract.
"""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import FedAvg

from fedvq_app.config import PRIVACY_MODES, ConfigError
from fedvq_app.data.datasets import dataset_info
from fedvq_app.local_grid import full_run_config
from fedvq_app.registry import get_method, load_settings, method_names
from fedvq_app.strategies.contract import RoundStrategy, innermost
from fedvq_app.strategies.privacy import privatize

LOOP_METHODS = [m for m in method_names() if get_method(m).build_model is not None]


def _strategies(method: str):
    for mode in PRIVACY_MODES:
        try:
            settings = load_settings(full_run_config(method=method, **{"privacy.mode": mode}))
        except ConfigError:  # the method refuses this mode (docs/privacy.md)
            continue
        spec = get_method(method)
        bare = spec.build_strategy(settings, dataset_info(settings.dataset, settings.seed))
        yield mode, bare, privatize(bare, settings)


@pytest.mark.parametrize("method", LOOP_METHODS)
def test_every_strategy_the_loop_drives_keeps_the_contract(method):
    seen = []
    for mode, bare, wrapped in _strategies(method):
        for strategy in (bare, wrapped):
            assert isinstance(strategy, RoundStrategy), (method, mode, type(strategy).__name__)
            assert isinstance(strategy.round_report(), dict) and isinstance(strategy.final_report(), dict)
            strategy.load_state_dict(strategy.state_dict())  # a fresh strategy's state round-trips
            assert strategy.rejections == [] and strategy.weighted_by_key == "num-examples"
        assert innermost(wrapped) is bare
        wrapped.max_num_examples = 123  # the workflow sets it on whatever it holds
        assert bare.max_num_examples == 123
        seen.append(mode)
    assert "none" in seen


def test_a_plain_flower_strategy_does_not_pass_for_one():
    """The control: Flower's FedAvg lacks the reports, the state and the guard's lists."""
    assert not isinstance(FedAvg(), RoundStrategy)


def test_state_a_strategy_cannot_take_is_refused():
    settings = load_settings(full_run_config(method="fedavg"))
    strategy = get_method("fedavg").build_strategy(settings, dataset_info(settings.dataset, settings.seed))
    with pytest.raises(ValueError, match="cannot take"):
        strategy.load_state_dict({"scaffold-c": 1})
