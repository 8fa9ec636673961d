"""Privacy accounting: epsilon at a delta for the two DP modes (no flwr import).

Client level (``privacy.mode = client-fixed | client-adaptive``): every round the
server releases ``mean of clipped updates + N(0, (z C / m)^2)`` over the ``m``
sampled clients, a Gaussian mechanism with noise multiplier ``z`` on the sum of
updates of L2 norm <= ``C``. :class:`ClientLevelLedger` composes those rounds with
dp-accounting's RDP accountant:

* all connected clients train (``fraction-train = 1``): neighbouring federations
  differ by adding or removing one client, the sum's sensitivity is ``C`` and each
  round is a ``GaussianDpEvent(z)`` (no amplification claimed);
* a fixed-size sample of ``m`` out of ``N`` clients (Flower samples without
  replacement): the amplification theorem for sampling without replacement holds
  for the replace-one relation, where the sum's sensitivity is ``2 C``; each round
  is ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))``.

Sample level (``privacy.mode = sample-dpsgd``): each client runs Opacus DP-SGD;
:class:`SampleLevelLedger` keeps every client's (noise multiplier, sample rate,
steps) history and asks Opacus' RDP accountant for each client's epsilon, on the
server, so the figure survives a resume (the clients' own accountants live in
``context.state``, which a resumed run does not get back).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cache

import numpy as np

ADD_OR_REMOVE_ONE = "add-or-remove-one"
REPLACE_ONE = "replace-one"


def client_level_event(noise_multiplier: float, sample_size: int, population: int, subsampled: bool):
    """The dp-accounting event of one client-level release (see the module docstring)."""
    import dp_accounting  # noqa: PLC0415 (its scipy.signal import costs ~3 s: only DP runs pay it)

    if not subsampled:
        return dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.SampledWithoutReplacementDpEvent(
        population, sample_size, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    )


@dataclass
class ClientLevelLedger:
    """The client-level releases of a run and their cumulative epsilon (dp-accounting RDP)."""

    delta: float
    subsampled: bool
    #: one (noise multiplier, sampled clients, connected clients) per released round
    releases: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def neighbouring(self) -> str:
        return REPLACE_ONE if self.subsampled else ADD_OR_REMOVE_ONE

    def record(self, noise_multiplier: float, sample_size: int, population: int) -> None:
        self.releases.append((float(noise_multiplier), int(sample_size), int(max(population, sample_size))))

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon after every recorded release at ``delta`` (0 before the first)."""
        if not self.releases:
            return 0.0
        import dp_accounting  # noqa: PLC0415 - start-up cost: dp-accounting, only on this path

        relation = (
            dp_accounting.NeighboringRelation.REPLACE_ONE
            if self.subsampled
            else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
        for z, m, n in self.releases:
            accountant.compose(client_level_event(z, m, n, self.subsampled))
        return float(accountant.get_epsilon(self.delta if delta is None else delta))

    def state(self) -> list[list[float]]:
        return [list(r) for r in self.releases]

    def load(self, state: list) -> None:
        self.releases = [(float(z), int(m), int(n)) for z, m, n in state]


@dataclass
class SampleLevelLedger:
    """Every client's DP-SGD history (partition id -> [(z, q, steps)]); epsilon from Opacus' RDP accountant."""

    delta: float
    histories: dict[int, list[tuple[float, float, int]]] = field(default_factory=dict)

    def record(self, partition: int, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        if steps > 0:
            self.histories.setdefault(int(partition), []).append(
                (float(noise_multiplier), float(sample_rate), int(steps))
            )

    def epsilon_of(self, partition: int, delta: float | None = None) -> float:
        history = self.histories.get(int(partition), [])
        return history_epsilon(history, self.delta if delta is None else delta)

    def epsilons(self) -> dict[int, float]:
        return {p: self.epsilon_of(p) for p in sorted(self.histories)}

    def state(self) -> dict[str, list]:
        return {str(p): [list(h) for h in hist] for p, hist in self.histories.items()}

    def load(self, state: dict) -> None:
        self.histories = {int(p): [(float(z), float(q), int(s)) for z, q, s in hist] for p, hist in state.items()}


def quiet_opacus():
    """Import Opacus (its RDP analysis) without the root logging handler its import installs.

    ``opacus.utils.module_utils`` calls ``logging.basicConfig`` at import time: every
    Flower log line would then be printed twice (once more by the root logger). Call this
    before any other Opacus import; later imports find the module cached.
    Returns ``(RDPAccountant, rdp_analysis)``.
    """
    root = logging.getLogger()
    before = list(root.handlers)
    from opacus.accountants import RDPAccountant  # noqa: PLC0415 (only DP runs pay the import)
    from opacus.accountants.analysis import rdp as rdp_analysis  # noqa: PLC0415 - start-up cost: Opacus, only on this path

    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
    return RDPAccountant, rdp_analysis


def history_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' RDP epsilon of a DP-SGD history at ``delta`` (0 for no steps).

    The same sum as ``opacus.accountants.RDPAccountant.get_privacy_spent`` (Opacus'
    orders and conversion), with the per-step RDP of each (noise, sample rate) pair
    computed once per process: RDP is linear in the steps, and Opacus' fractional
    orders take ~1.5 s per evaluation on a slow core.
    """
    if not history:
        return 0.0
    accountant, rdp_analysis = quiet_opacus()
    rdp = sum(steps * _rdp_per_step(float(z), float(q)) for z, q, steps in history)
    epsilon, _ = rdp_analysis.get_privacy_spent(orders=accountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)


@cache
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    accountant, rdp_analysis = quiet_opacus()
    return np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=accountant.DEFAULT_ALPHAS
        )
    )
