"""Federated k-means (seed 004): handshake, normalization, PCA, Lloyd steps, evaluation.

Not a neural round loop: the method runs its own multi-phase workflow
(:func:`fedvq_app.server.kmeans_workflow.run_kmeans_workflow`); ``build_strategy``
configures the phases for the federation the handshake found.
"""

from __future__ import annotations

from fedvq_app.clients.kmeans import KMeansClient
from fedvq_app.config import ConfigError, Settings
from fedvq_app.options import KMeansOptions
from fedvq_app.registry import MethodSpec
from fedvq_app.server.kmeans_workflow import build_phases, run_kmeans_workflow


def validate(settings: Settings) -> None:
    """Cross-field checks: options that would be silently ignored are errors."""
    opts = settings.options(KMeansOptions)
    if opts.data_source == "generated" and opts.split != "iid":
        raise ConfigError(
            f"config key 'kmeans.split' has invalid value {opts.split!r}: generated data is split by the "
            "generator (--non-iid-factor); kmeans.split applies to iris, wine and breast-cancer"
        )
    if settings.resume_from:
        raise ConfigError("config key 'resume-from' is not supported by method 'kmeans' (it keeps no checkpoints)")
    # secure aggregation hides each site's statistics from the server: a server that writes them to disk
    # would defeat it
    if opts.debug_server_local_means and settings.secagg.enabled:
        raise ConfigError(
            "config key 'kmeans.debug-server-local-means' has invalid value True with "
            f"secagg.mode={settings.secagg.mode!r}: expected false (secure aggregation keeps each site's "
            "statistics off the server)"
        )


def secagg_check(settings) -> str | None:
    """Everything but the cold start is a sum (docs/privacy.md); the local-means seeding is not."""
    if settings.options(KMeansOptions).init == "local-means":
        return (
            "kmeans.init='local-means' sends each site's own local cluster means (the cold-start candidates), "
            "which cannot be summed; set kmeans.init='random'"
        )
    return None


def privacy_check(settings) -> str | None:
    """No DP mode: the clients share per-cluster sums and counts (see docs/privacy.md)."""
    return "federated k-means shares per-cluster sums and counts, guarded by kmeans.privacy-threshold, not by DP"


def kmeans_plots(directory, rounds, summary):
    """Method PNGs; matplotlib is imported only when a run finishes."""
    from fedvq_app.tracking.kmeans_plots import kmeans_plots as plots  # noqa: PLC0415 - start-up cost: matplotlib, only on this path

    return plots(directory, rounds, summary)


SPEC = MethodSpec(
    name="kmeans",
    summary="federated k-means with federated normalization and PCA (statistics only, privacy threshold)",
    build_strategy=build_phases,
    client=KMeansClient,
    options_type=KMeansOptions,
    validate=validate,
    server_workflow=run_kmeans_workflow,
    plots=kmeans_plots,
    data_name=lambda settings: settings.options(KMeansOptions).data_source,
    privacy_check=privacy_check,
    secagg_check=secagg_check,
)
