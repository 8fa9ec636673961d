"""Checked by the type checker, not run: every strategy class the methods build is a RoundStrategy.

``.ci/run`` runs ``mypy`` on this file and on the modules that drive strategies (the loop, the
workflow, the checkpoint, the privacy wrappers): a strategy that stops satisfying the contract
of ``fedvq_app/strategies/contract.py`` fails CI there, before any test runs.
"""

from __future__ import annotations

from fedvq_app.config import PrivacySettings
from fedvq_app.strategies.cfl import CFLStrategy
from fedvq_app.strategies.contract import RoundStrategy
from fedvq_app.strategies.fedavg import FedAvgStrategy
from fedvq_app.strategies.fedloge import FedLoGeStrategy
from fedvq_app.strategies.fedprox import FedProxStrategy
from fedvq_app.strategies.fedvq import FedVQStrategy
from fedvq_app.strategies.fusedspace import FusedSpaceStrategy
from fedvq_app.strategies.privacy import PrivateAdaptiveClipping, PrivateFixedClipping, SampleLevelPrivacy
from fedvq_app.strategies.scaffold import ScaffoldStrategy


def hold(*strategies: RoundStrategy) -> None:
    """Accepts only RoundStrategy instances (the point is the static check of the arguments)."""


def every_strategy(
    fedavg: FedAvgStrategy,
    fedprox: FedProxStrategy,
    scaffold: ScaffoldStrategy,
    cfl: CFLStrategy,
    fusedspace: FusedSpaceStrategy,
    fedloge: FedLoGeStrategy,
    fedvq: FedVQStrategy,
    privacy: PrivacySettings,
) -> None:
    hold(fedavg, fedprox, scaffold, cfl, fusedspace, fedloge, fedvq)
    hold(
        PrivateFixedClipping(fedavg, privacy, subsampled=False),
        PrivateAdaptiveClipping(fedavg, privacy, subsampled=False),
        SampleLevelPrivacy(fedavg, privacy),
    )
