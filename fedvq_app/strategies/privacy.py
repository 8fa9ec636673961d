"""Differential privacy around a method's strategy (``privacy.mode``; docs/privacy.md).

Client level: Flower's central-DP wrappers with *server-side* clipping,
``DifferentialPrivacyServerSideFixedClipping`` (client-fixed) and
``DifferentialPrivacyServerSideAdaptiveClipping`` (client-adaptive). The server
clips every client's update ``w_i - w`` to L2 norm ``C`` and adds
``N(0, (z C / m)^2)`` to the mean. Server-side clipping was chosen over
``fixedclipping_mod`` because the bound then holds whatever a client sends (a
client that skipped its mod cannot void everyone's guarantee) and the ClientApp
stays unchanged; the price is that the server must be trusted to see the
unclipped updates (it sees every update anyway: no secure aggregation here).

Three things the wrappers need around them here:

* **the reply guard first**: the wrappers clip whatever arrives, and one reply
  with an error makes them skip the round. :meth:`ReplyGuard.prescreen` screens
  the replies before the wrapper clips them; the inner strategy then takes them
  as screened (its rejections and extras are those of the original replies);
* **uniform weights and a fixed denominator**: the noise ``z C / m`` bounds the
  mean only when every client weighs ``1/m``. Replies are averaged uniformly
  (``num-examples`` is set to 1 in the copies the aggregation sees) and, when
  ``k < m`` replies arrive, the mean update is scaled by ``k / m`` (the
  fixed-denominator estimator of McMahan et al. 2018) before the noise;
* **the noise at the norm that clipped**: Flower's adaptive wrappers update the
  clipping norm *before* adding noise and then scale the noise with the new
  norm; a shrinking norm would add less noise than the sensitivity needs. The
  noise here uses the norm the round's updates were clipped to;
* **the adaptive step's sign**: Flower's adaptive wrapper moves the norm by the
  *clipped* share minus the target quantile, which drives it away from the
  quantile; here it moves by the unclipped share (Andrew et al., eq. 2).

``m`` (the round's sample size) is taken from the messages the inner strategy
configures, every round. Epsilon: :class:`~fedvq_app.aggregation.privacy.ClientLevelLedger`.

Sample level: the clients train with Opacus; :class:`SampleLevelPrivacy` only
forwards and accounts (each client's reported DP-SGD history, Opacus' RDP
accountant on the server).

Both wrappers forward every attribute they do not have to the inner strategy
(``rejections``, ``min_train_nodes``, CFL's clusters...), and add a ``privacy``
entry to ``round_report`` (rounds.jsonl ``strategy.privacy``), ``final_report``
(summary.json ``privacy``) and ``state_dict`` (checkpoints).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv, get_norm

from fedvq_app.aggregation.privacy import ClientLevelLedger, SampleLevelLedger
from fedvq_app.config import PrivacySettings, Settings
from fedvq_app.protocol import (
    ARRAYS,
    DP_EPSILON,
    DP_NOISE,
    DP_SAMPLE_RATE,
    DP_STEPS,
    METRICS,
    PRIVACY,
    TOP_LEVEL_KEY,
)
from fedvq_app.strategies.contract import RoundStrategy

_STATE_PREFIX = "privacy/"


def privatize(strategy: RoundStrategy, settings: Settings) -> RoundStrategy:
    """``strategy`` behind the DP wrapper of ``privacy.mode`` (unchanged for ``none``)."""
    privacy = settings.privacy
    if privacy.mode == "client-fixed":
        return PrivateFixedClipping(strategy, privacy, subsampled=settings.fraction_train < 1.0)
    if privacy.mode == "client-adaptive":
        return PrivateAdaptiveClipping(strategy, privacy, subsampled=settings.fraction_train < 1.0)
    if privacy.mode == "sample-dpsgd":
        return SampleLevelPrivacy(strategy, privacy)
    return strategy


def _merge_reports(inner: dict | None, privacy: dict, top_level: bool) -> dict:
    report = dict(inner or {})
    if top_level:
        report[TOP_LEVEL_KEY] = {**report.get(TOP_LEVEL_KEY, {}), PRIVACY: privacy}
    else:
        report[PRIVACY] = privacy
    return report


class _Forwarding:
    """The strategy contract (:class:`~fedvq_app.strategies.contract.RoundStrategy`) of the wrapped
    strategy, forwarded member by member; reports and state get a privacy entry."""

    strategy: Strategy  # a RoundStrategy (privatize's argument); typed as Flower's wrappers type it

    @property
    def weighted_by_key(self) -> str:
        return self.strategy.weighted_by_key

    @property
    def rejections(self) -> list[tuple[int, str]]:
        return self.strategy.rejections

    @property
    def accepted_nodes(self) -> list[int]:
        return self.strategy.accepted_nodes

    @property
    def max_num_examples(self) -> int | None:
        return self.strategy.max_num_examples

    @max_num_examples.setter
    def max_num_examples(self, value: int | None) -> None:
        self.strategy.max_num_examples = value

    @property
    def min_available_nodes(self) -> int:
        return self.strategy.min_available_nodes

    @property
    def min_train_nodes(self) -> int:
        return self.strategy.min_train_nodes

    @property
    def min_evaluate_nodes(self) -> int:
        return self.strategy.min_evaluate_nodes

    def privacy_report(self) -> dict[str, Any]:
        raise NotImplementedError

    def privacy_summary(self) -> dict[str, Any]:
        return self.privacy_report()

    def privacy_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_privacy_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def round_report(self) -> dict:
        return _merge_reports(self.strategy.round_report(), self.privacy_report(), top_level=False)

    def final_report(self) -> dict:
        return _merge_reports(self.strategy.final_report(), self.privacy_summary(), top_level=True)

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.strategy.state_dict())
        state.update({f"{_STATE_PREFIX}{k}": v for k, v in self.privacy_state().items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {k[len(_STATE_PREFIX) :]: v for k, v in state.items() if k.startswith(_STATE_PREFIX)}
        rest = {k: v for k, v in state.items() if not k.startswith(_STATE_PREFIX)}
        self.load_privacy_state(mine)
        self.strategy.load_state_dict(rest)


class _ClientLevel(_Forwarding):
    """What fixed and adaptive server-side clipping share (mixed in before Flower's wrapper)."""

    mode = ""

    def _setup(self, privacy: PrivacySettings, subsampled: bool) -> None:
        self.privacy = privacy
        self.ledger = ClientLevelLedger(privacy.target_delta, subsampled)
        self.population = 0
        self.round_clip_norm = float(self.clipping_norm)
        self.accepted_count = 0
        self.last: dict[str, Any] = {}

    # ---------------------------------------------------------------- sending
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.population = len(list(grid.get_node_ids()))
        if messages:
            self.num_sampled_clients = len(messages)
        return messages

    # ---------------------------------------------------------------- aggregation
    def _as_clippable(self, msg: Message) -> None:
        """Uniform weight and the sent key order, edited in place on the guard's stripped copy."""
        metrics = dict(msg.content[METRICS])
        metrics[self.strategy.weighted_by_key] = 1
        msg.content[METRICS] = MetricRecord(metrics)
        record = msg.content[ARRAYS]
        msg.content[ARRAYS] = ArrayRecord({k: record[k] for k in self.current_arrays.keys()})

    def _update_norms(self, replies: list[Message]) -> list[float]:
        current = self.current_arrays.to_numpy_ndarrays()
        return [
            get_norm([r - c for r, c in zip(m.content[ARRAYS].to_numpy_ndarrays(), current, strict=True)])
            for m in replies
        ]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        accepted = self.strategy.prescreen(replies)
        if not accepted:
            self.last = {"round": server_round, "released": False}
            return None, None
        for msg in accepted:
            self._as_clippable(msg)
        norms = self._update_norms(accepted)
        # Flower's clipping divides by the update norm: a reply equal to the global model
        # (no local step, or a client replaying it) would raise ZeroDivisionError. Such
        # updates add nothing to the sum, so the wrapper averages the others and the
        # fixed denominator (x moving / m) releases the same sum / m.
        moving = [m for m, n in zip(accepted, norms, strict=True) if n > 0]
        self.accepted_count = len(moving)
        self.round_clip_norm = float(self.clipping_norm)
        if moving:
            arrays, metrics = super().aggregate_train(server_round, moving)
        else:  # nobody moved: the release is the global model plus the noise
            arrays, metrics = self._add_noise_to_aggregated_arrays(self.current_arrays), None
        if arrays is None:
            self.last = {"round": server_round, "released": False}
            return None, metrics
        self.ledger.record(self.privacy.noise_multiplier, self.num_sampled_clients, self.population)
        epsilon = self.ledger.epsilon()
        self.last = {
            "round": server_round,
            "released": True,
            "clipping_norm": self.round_clip_norm,
            "noise_std": self.noise_std,
            "sampled": self.num_sampled_clients,
            "aggregated": len(accepted),
            "population": self.population,
            "clipped_fraction": float(np.mean([n > self.round_clip_norm for n in norms])),
            "update_norm_median": float(np.median(norms)),
            "epsilon": epsilon,
        }
        log(
            INFO,
            "[fedvq] privacy (%s): epsilon %.4f at delta %g after %d rounds (clip %.4g, noise std %.4g)",
            self.mode,
            epsilon,
            self.privacy.target_delta,
            len(self.ledger.releases),
            self.round_clip_norm,
            self.noise_std,
        )
        return arrays, metrics

    @property
    def noise_std(self) -> float:
        """Std of the noise on the mean: the mechanism's multiplier x the norm the round clipped to / m."""
        return compute_stdv(self.noise_multiplier, self.round_clip_norm, self.num_sampled_clients)

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Fixed-denominator mean (k of m replies -> update x k/m), then the Gaussian noise."""
        current = self.current_arrays.to_numpy_ndarrays()
        scale = self.accepted_count / self.num_sampled_clients
        mean = aggregated_arrays.to_numpy_ndarrays()
        released = [np.asarray(c + scale * (a - c), dtype=a.dtype) for a, c in zip(mean, current, strict=True)]
        add_gaussian_noise_inplace(released, self.noise_std)
        return ArrayRecord({k: Array(v) for k, v in zip(aggregated_arrays.keys(), released, strict=True)})

    # ---------------------------------------------------------------- reporting
    def _common(self) -> dict[str, Any]:
        return {
            "mode": self.privacy.mode,
            "level": "client",
            "noise_multiplier": self.privacy.noise_multiplier,
            "delta": self.privacy.target_delta,
            "neighbouring": self.ledger.neighbouring,
            "accountant": "dp-accounting RDP",
        }

    def privacy_report(self) -> dict[str, Any]:
        return {**self._common(), **self.last, "epsilon": self.ledger.epsilon(), "rounds": len(self.ledger.releases)}

    def privacy_state(self) -> dict[str, Any]:
        return {"releases": self.ledger.state(), "clipping-norm": float(self.clipping_norm)}

    def load_privacy_state(self, state: dict[str, Any]) -> None:
        self.ledger.load(state.get("releases", []))
        if "clipping-norm" in state:
            self.clipping_norm = float(state["clipping-norm"])


class PrivateFixedClipping(_ClientLevel, DifferentialPrivacyServerSideFixedClipping):
    """client-fixed: Flower's server-side fixed clipping behind the reply guard."""

    mode = "client-fixed"

    def __init__(self, strategy: Strategy, privacy: PrivacySettings, subsampled: bool) -> None:
        super().__init__(strategy, privacy.noise_multiplier, privacy.clipping_norm, 1)
        self._setup(privacy, subsampled)


class PrivateAdaptiveClipping(_ClientLevel, DifferentialPrivacyServerSideAdaptiveClipping):
    """client-adaptive: Flower's server-side adaptive clipping (Andrew et al.) behind the reply guard.

    ``self.noise_multiplier`` is Flower's share of the budget left to the update
    (``(z^-2 - (2 sigma_b)^-2)^-1/2``); together with the noisy clipped count the
    round is one Gaussian mechanism of multiplier ``z`` = ``privacy.noise-multiplier``,
    which the ledger composes.
    """

    mode = "client-adaptive"

    def __init__(self, strategy: Strategy, privacy: PrivacySettings, subsampled: bool) -> None:
        stddev = privacy.clipped_count_stddev or privacy.noise_multiplier
        super().__init__(
            strategy,
            privacy.noise_multiplier,
            1,
            initial_clipping_norm=privacy.clipping_norm,
            target_clipped_quantile=privacy.target_quantile,
            clip_norm_lr=privacy.clip_lr,
            clipped_count_stddev=stddev,
        )
        self._setup(privacy, subsampled)

    def _geometric_update(self, clipped_fraction: float) -> None:
        """Andrew et al.'s step on the share of updates *below* the norm: C <- C exp(-lr (unclipped - q)).

        Flower 1.41 feeds the clipped share into the same formula, which grows the norm
        when nothing is clipped and shrinks it when everything is (away from the quantile).
        """
        super()._geometric_update(1.0 - clipped_fraction)

    def privacy_report(self) -> dict[str, Any]:
        return {
            **super().privacy_report(),
            "update_noise_multiplier": float(self.noise_multiplier),
            "clipped_count_stddev": float(self.clipped_count_stddev),
            "next_clipping_norm": float(self.clipping_norm),
            "target_quantile": self.target_clipped_quantile,
        }


class SampleLevelPrivacy(_Forwarding, Strategy):
    """sample-dpsgd: forwards to the method's strategy; accounts each client's DP-SGD steps."""

    def __init__(self, strategy: Strategy, privacy: PrivacySettings) -> None:
        super().__init__()
        self.strategy = strategy
        self.privacy = privacy
        self.ledger = SampleLevelLedger(privacy.target_delta)
        self.reported: dict[int, float] = {}
        self.last_round = 0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        result = self.strategy.aggregate_train(server_round, replies)
        accepted = set(self.strategy.accepted_nodes)
        for msg in replies:
            if msg.has_error() or msg.metadata.src_node_id not in accepted:
                continue
            metrics = msg.content[METRICS]
            if DP_STEPS not in metrics or "partition-id" not in metrics:
                continue
            partition = int(metrics["partition-id"])
            z, q, steps = float(metrics[DP_NOISE]), float(metrics[DP_SAMPLE_RATE]), int(metrics[DP_STEPS])
            self.ledger.record(partition, z, q, steps)
            self.reported[partition] = float(metrics[DP_EPSILON])
        self.last_round = server_round
        epsilons = self.ledger.epsilons()
        if epsilons:
            log(
                INFO,
                "[fedvq] privacy (sample-dpsgd): epsilon %.4f at delta %g (largest of %d clients) after round %d",
                max(epsilons.values()),
                self.privacy.target_delta,
                len(epsilons),
                server_round,
            )
        return result

    def privacy_report(self) -> dict[str, Any]:
        epsilons = self.ledger.epsilons()
        return {
            "mode": self.privacy.mode,
            "level": "sample",
            "noise_multiplier": self.privacy.noise_multiplier,
            "clipping_norm": self.privacy.clipping_norm,
            "delta": self.privacy.target_delta,
            "neighbouring": "add-or-remove-one sample of one client",
            "accountant": "Opacus RDP",
            "round": self.last_round,
            "epsilon": max(epsilons.values()) if epsilons else 0.0,
            "epsilon_mean": float(np.mean(list(epsilons.values()))) if epsilons else 0.0,
            "client_epsilon": {str(p): e for p, e in epsilons.items()},
            "client_reported_epsilon": {str(p): e for p, e in sorted(self.reported.items())},
        }

    def privacy_state(self) -> dict[str, Any]:
        return {"histories": self.ledger.state(), "reported": {str(k): v for k, v in self.reported.items()}}

    def load_privacy_state(self, state: dict[str, Any]) -> None:
        self.ledger.load(state.get("histories", {}))
        self.reported = {int(k): float(v) for k, v in state.get("reported", {}).items()}
