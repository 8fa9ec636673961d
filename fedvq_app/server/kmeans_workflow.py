"""The federated k-means job on the ServerApp: five phases, each its own message type.

1. handshake (``query.kmeans_handshake``): sizes and feature counts; a mismatch stops
   the run with an error naming the clients;
2. normalization (``query.kmeans_normalization``): global mean/std from moments;
3. PCA (``query.kmeans_pca``, when there are more than 2 features): merged scatter;
4. initialisation (``query.kmeans_init``) and Lloyd steps (``train.kmeans_step``)
   until the largest centroid shift is below ``kmeans.tol`` or ``kmeans.max-rounds``;
5. evaluation (``evaluate.kmeans_evaluation``): inertia, silhouette, ARI.

Every Lloyd step is one round of the common tracker (``rounds.jsonl``); the seed's
per-round log layout is written next to it (:mod:`fedvq_app.tracking.kmeans_logs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedvq_app.aggregation.kmeans import FeatureTransform, random_seedings
from fedvq_app.config import ConfigError, Settings
from fedvq_app.errors import RunFailed
from fedvq_app.options import KMeansOptions
from fedvq_app.registry import get_method
from fedvq_app.server.failures import exclude_misconfigured_sites, stop_if_hopeless
from fedvq_app.server.kmeans_secure import SecureKMeans
from fedvq_app.server.loop import NodesUnavailable, PatientGrid, without_unavailable
from fedvq_app.strategies.kmeans_evaluation import KMeansEvaluation
from fedvq_app.strategies.kmeans_handshake import Federation, Handshake
from fedvq_app.strategies.kmeans_init import SummaryInit
from fedvq_app.strategies.kmeans_normalization import Normalization
from fedvq_app.strategies.kmeans_pca import FederatedPCA, PCAResult
from fedvq_app.strategies.kmeans_phase import CENTROIDS, CLIENT_LOGS_KEY
from fedvq_app.strategies.kmeans_step import LloydStep, StepResult
from fedvq_app.tracking.experiment import ExperimentTracker, RoundOutcome
from fedvq_app.tracking.idsets import count_and_named, describe, ranges
from fedvq_app.tracking.kmeans_logs import KMeansLogs


@dataclass(frozen=True)
class KMeansPhases:
    """The phases after the handshake, configured for this federation."""

    normalization: Normalization
    pca: FederatedPCA | None
    init: SummaryInit
    step: LloydStep
    evaluation: KMeansEvaluation
    cluster_dim: int


def build_phases(settings: Settings, federation: Federation) -> KMeansPhases:
    """The registry's ``build_strategy`` for k-means: the federation plays the dataset info."""
    opts = settings.options(KMeansOptions)
    d = federation.num_features
    pca = FederatedPCA(d, opts.pca_components) if d > 2 else None
    dim = pca.num_components if pca is not None and opts.cluster_space == "pca" else d
    local_k = opts.local_k or 2 * opts.k
    return KMeansPhases(
        normalization=Normalization(d),
        pca=pca,
        init=SummaryInit(opts.k, local_k, dim, opts.privacy_threshold, settings.seed, opts.n_init),
        step=LloydStep(opts.k, dim, opts.privacy_threshold, opts.n_init, keep_local=opts.debug_server_local_means),
        evaluation=KMeansEvaluation(opts.k, federation.num_classes, opts.silhouette_sample),
        cluster_dim=dim,
    )


def exchange(
    grid: Grid, messages: list[Message], timeout: float, gone: set[int] | None = None, first: bool = False
) -> list[Message]:
    """Send one phase's instructions and wait for the replies (missing ones = dropped).

    The SuperLink's "node unavailable" errors are dropouts, not replies: their
    nodes join ``gone`` and are not messaged again. When every reply is an error
    carrying the same (or only configuration) errors, the run stops with that line.
    """
    if not messages:
        raise RunFailed("[kmeans] no client left to message")
    phase = messages[0].metadata.message_type
    replies, unavailable = without_unavailable(messages, grid.send_and_receive(messages, timeout=timeout))
    if gone is not None:
        gone.update(unavailable)
    dropped = sorted({m.metadata.dst_node_id for m in messages} - {r.metadata.src_node_id for r in replies})
    if dropped:
        log(WARNING, "[kmeans] %s: no reply from %s", phase, count_and_named(dropped))
    stop_if_hopeless(replies, f"k-means phase {phase}", first=first)
    return replies


def connected_nodes(grid: Grid, minimum: int, wait_s: float) -> list[int]:
    """Every connected node, once at least ``minimum`` are; at most ``wait_s`` seconds of waiting."""
    try:
        return sorted(PatientGrid(grid, minimum, wait_s).get_node_ids())
    except NodesUnavailable as err:
        raise RunFailed(
            f"k-means cannot start: {err} (min-available-nodes={minimum}) after waiting round-timeout={wait_s:g} s"
        ) from None


def live(federation: Federation, gone: set[int]) -> Federation:
    """The federation without the nodes that have gone away (for messages and the summary)."""
    if not gone & set(federation.clients):
        return federation
    clients = {n: c for n, c in federation.clients.items() if n not in gone}
    if not clients:
        raise RunFailed(f"[kmeans] every client has gone away (nodes {sorted(gone)})")
    return Federation(clients)


def _round_metadata(result: StepResult, run: int, federation: Federation) -> dict[str, Any]:
    return {
        "convergence_change": float(result.shifts[run]),
        "max_change_all_runs": result.shift,
        "participating_clients": ranges(result.participating),
        "num_participating_clients": len(result.participating),
        "cluster_counts": result.counts[run].tolist(),
        "empty_clusters": np.flatnonzero(result.empty[run]).tolist(),
        "inertia_before_update": float(result.inertia[run]),
        "withheld_local_means": result.withheld,
        "total_samples": federation.num_samples,
    }


def _shared_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    means = np.full(sums.shape, np.nan)
    shared = counts > 0
    means[shared] = sums[shared] / counts[shared][:, None]
    return means


def write_round_logs(
    logs: KMeansLogs, initial: np.ndarray, results: list[StepResult], run: int, federation: Federation
) -> list[dict[str, Any]]:
    """The seed's per-round global files for the kept run; returns its convergence history.

    The clients' local means reach the disk only through the clients' own logs; the server
    writes what it received only when the step kept it (``kmeans.debug-server-local-means``).
    """
    logs.write_global_means(0, initial[run], {"convergence_change": None, "run": run})
    history = []
    for result in results:
        meta = {**_round_metadata(result, run, federation), "run": run}
        logs.write_global_means(result.server_round, result.centroids[run], meta)
        if result.local:
            ids = sorted(result.local)
            means = np.stack([_shared_means(result.local[p][0][run], result.local[p][1][run]) for p in ids])
            counts = np.stack([result.local[p][1][run] for p in ids])
            logs.write_server_local_means(result.server_round, ids, means, counts)
        history.append({"round": result.server_round, **meta})
    return history


def run_lloyd(
    grid: Grid,
    step: LloydStep,
    transform: FeatureTransform,
    federation: Federation,
    settings: Settings,
    tracker: ExperimentTracker,
    gone: set[int] | None = None,
    contributed: set[int] | None = None,
    client_logs: bool = False,
    secure: SecureKMeans | None = None,
) -> tuple[list[StepResult], bool]:
    """Lloyd rounds until no run moves more than tol; returns every round's result and convergence.

    ``gone`` holds the nodes that went away (never messaged again); ``contributed`` collects
    the nodes whose step replies were accepted in any round; ``client_logs`` tells the clients
    whether to write their own per-client logs; ``secure`` (secagg.mode) sums every step through SecAgg+.
    """
    opts = settings.options(KMeansOptions)
    contributed = set() if contributed is None else contributed
    results: list[StepResult] = []
    tracker.traffic_outside_rounds()  # the set-up phases count in the run's total, not in round 1
    gone = set() if gone is None else gone
    for rnd in range(1, opts.max_rounds + 1):
        started = time.time()
        config = {"server-round": rnd, "experiment": tracker.dir.name, CLIENT_LOGS_KEY: client_logs}
        federation = live(federation, gone)
        messages = step.instructions(federation.nodes, config, transform, {CENTROIDS: step.centroids}, str(rnd))
        if secure is not None:
            result, replies = secure.step(step, rnd, messages, federation)
        else:
            replies = exchange(grid, messages, settings.round_timeout, gone)
            result = step.aggregate(rnd, replies)
        del messages  # 10,000 sent messages need not outlive the exchange (peak memory)
        contributed.update(step.accepted_nodes)
        exclude_misconfigured_sites(step.rejections, tracker)
        metrics = {}
        if result is not None:
            best = step.best_run()
            metrics = {
                "inertia": float(result.inertia[best]),
                "centroid-shift": result.shift,
                "mean-squared-distance": float(result.inertia[best]) / max(int(result.counts[best].sum()), 1),
            }
        tracker.record_round(
            RoundOutcome(
                server_round=rnd,
                sampled_train=federation.nodes,
                train_replies=replies,
                train_metrics=metrics,
                train_rejected=list(step.rejections),
                strategy_report=step.round_report(),
                wall_time_s=time.time() - started,
            )
        )
        del replies  # this round's replies must not be alive while the next round's arrive (peak memory)
        if result is None:
            log(WARNING, "[kmeans] round %d: no usable reply, centroids unchanged", rnd)
            continue
        results.append(result)
        log(
            INFO,
            "[kmeans] round %d: largest shift %.6f, best inertia %.4f (run %d), %s",
            rnd,
            result.shift,
            metrics["inertia"],
            step.best_run(),
            describe(result.participating, (c.partition_id for c in federation.clients.values())),
        )
        if result.shift < opts.tol:
            return results, True
        orbit = _orbit_start(results)
        if orbit is not None:
            _settle_on_best_state(step, results[orbit:])
            log(
                WARNING,
                "[kmeans] round %d: centroids repeat round %d's; the privacy-filtered update orbits "
                "instead of converging, so the lowest-inertia state of the orbit is kept",
                rnd,
                results[orbit].server_round,
            )
            return results, False
    return results, False


def _orbit_start(results: list[StepResult]) -> int | None:
    """Index of the earlier round whose centroids the newest update reproduced, if any.

    With exact statistics Lloyd's inertia only decreases, so states never repeat;
    withheld small local means (privacy threshold) make the update inexact and it
    can cycle forever between a few states (seen with 3 clients, non-IID 0.9).
    """
    newest = results[-1].centroids
    for index, earlier in enumerate(results[:-1]):
        if np.allclose(earlier.previous, newest, rtol=0.0, atol=1e-12):
            return index
    return None


def _settle_on_best_state(step: LloydStep, orbit: list[StepResult]) -> None:
    """Make the orbit's lowest-inertia centroid sets the step's current ones."""
    best = min(orbit, key=lambda r: float(r.inertia.min()))
    step.centroids, step.last = best.previous, best


def _pca_report(pca: PCAResult | None) -> dict[str, Any] | None:
    if pca is None:
        return None
    return {
        "components": pca.components.shape[1],
        "explained_variance": pca.explained_variance.tolist(),
        "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
    }


def _report(
    settings: Settings,
    federation: Federation,
    phases: KMeansPhases,
    transform: FeatureTransform,
    pca: PCAResult | None,
    history: list[dict[str, Any]],
    converged: bool,
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """The method report (summary.json under 'kmeans') with its top-level summary keys."""
    opts = settings.options(KMeansOptions)
    headline = {
        "inertia": evaluation["inertia"],
        "silhouette": evaluation["silhouette"],
        **({"ari": evaluation["ari"]} if "ari" in evaluation else {}),
        "rounds": history[-1]["round"] if history else 0,
        "converged": converged,
    }
    return {
        "top_level": {"dataset": opts.data_source, "num_clients": len(federation.clients), **headline},
        **headline,
        "k": opts.k,
        "tol": opts.tol,
        "max_rounds": opts.max_rounds,
        "num_samples": federation.num_samples,
        "num_features": federation.num_features,
        "cluster_space": "pca" if transform.projects else "normalized",
        "cluster_dim": phases.cluster_dim,
        "silhouette_kind": f"simplified (centroid) silhouette, <= {opts.silhouette_sample} rows per client",
        "cluster_sizes": evaluation["cluster_sizes"],
        "pca": _pca_report(pca),
        "normalization": {"mean": transform.mean.tolist(), "std": transform.std.tolist()},
        "local_k": phases.init.local_k,
        "init_local_means": phases.init.num_summaries,
        "withheld_local_means_total": int(sum(h.get("withheld_local_means", 0) for h in history)),
        "n_init": opts.n_init,
        "kept_run_converged_round": next(
            (h["round"] for h in history if h["convergence_change"] is not None and h["convergence_change"] < opts.tol),
            None,
        ),
        "convergence_history": history,
        **({"contingency": evaluation["contingency"]} if "contingency" in evaluation else {}),
    }


def _experiment_summary(settings: Settings, federation: Federation, report: dict[str, Any]) -> dict[str, Any]:
    """experiment_summary.json in the seed's shape."""
    opts = settings.options(KMeansOptions)
    return {
        "config": {
            "k_global": opts.k,
            "max_iterations": opts.max_rounds,
            "tol": opts.tol,
            "privacy_threshold": opts.privacy_threshold,
            "local_k": report["local_k"],
            "n_init": opts.n_init,
            "cluster_space": report["cluster_space"],
            "pca_components": opts.pca_components,
            "data_source": opts.data_source,
            "split": opts.split,
            "seed": settings.seed,
            "num_clients": len(federation.clients),
            "partitions": ranges(c.partition_id for c in federation.clients.values()),
        },
        "total_rounds": report["rounds"],
        "converged": report["converged"],
        "final_means_shape": list(np.shape(report["centroids"])),
        **{key: report[key] for key in ("inertia", "silhouette", "rounds") if key in report},
        **({"ari": report["ari"]} if "ari" in report else {}),
        "final_means": report["centroids"],
        "final_means_original_scale": report["centroids_original_scale"],
        "convergence_history": report["convergence_history"],
    }


def run_kmeans_workflow(grid: Grid, settings: Settings, tracker: ExperimentTracker) -> dict[str, Any]:
    """Run all phases against the connected nodes; return the method report."""
    opts = settings.options(KMeansOptions)
    logs = KMeansLogs(tracker.dir)
    tracker.planned_rounds = opts.max_rounds
    timeout = settings.round_timeout
    with logs.server_log():
        handshake = Handshake()
        gone: set[int] = set()
        nodes = connected_nodes(grid, settings.min_available_nodes, timeout)
        federation = handshake.aggregate(exchange(grid, handshake.instructions(nodes), timeout, gone, first=True))
        exclude_misconfigured_sites(handshake.rejections, tracker)  # e.g. a site whose data file is missing
        if opts.k > federation.num_samples:
            raise ConfigError(
                f"config key 'kmeans.k' has invalid value {opts.k}: the {len(federation.clients)} clients hold only "
                f"{federation.num_samples} rows in all; expected an int <= {federation.num_samples}"
            )
        log(
            INFO,
            "[kmeans] handshake: %d clients, %d rows, %d features, %d classes",
            len(federation.clients),
            federation.num_samples,
            federation.num_features,
            federation.num_classes,
        )
        phases: KMeansPhases = get_method(settings.method).build_strategy(settings, federation)
        # per-client logs only up to tracking.per-client-limit clients (the tracker logs the one line saying so)
        client_logs = tracker.per_client_records(len(federation.clients)) and opts.client_logs
        #: nodes with at least one accepted reply after the handshake: only these count in the summary
        contributed: set[int] = set()

        def run(phase, config: dict | None = None, **instruction_kwargs) -> Any:
            config = {**(config or {}), "experiment": tracker.dir.name, CLIENT_LOGS_KEY: client_logs}
            nodes = live(federation, gone).nodes
            replies = exchange(grid, phase.instructions(nodes, config, **instruction_kwargs), timeout, gone)
            try:
                return phase.aggregate(replies)
            finally:
                contributed.update(phase.accepted_nodes)
                exclude_misconfigured_sites(phase.rejections, tracker)

        secure = SecureKMeans(grid, settings, federation, timeout) if settings.secagg.enabled else None
        context = {"experiment": tracker.dir.name, CLIENT_LOGS_KEY: client_logs}
        if secure is not None:
            normalized = secure.normalize(phases.normalization, live(federation, gone).nodes, context)
            mean, std = normalized.mean, normalized.std
        else:
            mean, std, _ = run(phases.normalization)
        transform = FeatureTransform(mean, std)
        pca = None
        if phases.pca is not None:
            if secure is not None:
                pca = secure.pca(phases.pca, live(federation, gone).nodes, context, transform)
            else:
                pca = run(phases.pca, transform=transform)
            transform = FeatureTransform(mean, std, pca.components, opts.cluster_space == "pca")
            log(INFO, "[kmeans] PCA: explained variance ratio %s", np.round(pca.explained_variance_ratio, 4).tolist())
        logs.write_transform(transform)

        if opts.init == "random":  # no message: drawn from the federation's (summed) statistics
            projected = transform.projects and pca is not None
            spread = np.sqrt(pca.explained_variance) if projected else np.ones(phases.cluster_dim)
            initial = random_seedings(spread, opts.k, opts.n_init, settings.seed)
        else:
            initial = run(phases.init, config=phases.init.config(), transform=transform)
        phases.step.centroids = initial
        results, converged = run_lloyd(
            grid, phases.step, transform, federation, settings, tracker, gone, contributed, client_logs, secure
        )
        best = phases.step.best_run()
        history = write_round_logs(logs, initial, results, best, federation)
        centroids = phases.step.centroids[best]
        if secure is not None:
            config = {**phases.evaluation.config(), **context}
            evaluation = secure.evaluate(phases.evaluation, live(federation, gone), config, transform, centroids)
            contributed.update(phases.evaluation.accepted_nodes)
        else:
            evaluation = run(
                phases.evaluation, config=phases.evaluation.config(), transform=transform, arrays={CENTROIDS: centroids}
            )
        federation = live(federation, gone)  # a node that went away is in no count of the summary
        used = federation.restricted_to(contributed)
        excluded = sorted(federation.partition_of(n) for n in set(federation.clients) - contributed)
        if excluded:
            log(
                WARNING,
                "[kmeans] %s were rejected in every phase: not counted in the summary",
                count_and_named(excluded, "partitions"),
            )
        report = _report(settings, used, phases, transform, pca, history, converged, evaluation)
        report["excluded_partitions"] = excluded
        report.update(
            centroids=centroids.tolist(),
            centroids_original_scale=transform.to_original(centroids).tolist(),
            kept_run=best,
            run_inertia=results[-1].inertia.tolist() if results else [],
        )
        logs.write_experiment_summary(_experiment_summary(settings, used, report))
        logs.write_metrics(
            {
                key: report.get(key)
                for key in (
                    "inertia",
                    "silhouette",
                    "ari",
                    "silhouette_kind",
                    "num_samples",
                    "k",
                    "rounds",
                    "converged",
                )
                if key in report
            }
        )
        log(
            INFO,
            "[kmeans] done after %d rounds (converged: %s): inertia %.4f, silhouette %s, ARI %s",
            report["rounds"],
            converged,
            report["inertia"],
            report["silhouette"],
            report.get("ari"),
        )
    return report
