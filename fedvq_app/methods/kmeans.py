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

#: the secure-aggregation key (issue 27) and its values that mean "off"
SECAGG_KEY = "secagg.mode"
SECAGG_OFF = ("off", "none", "", False)


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
    # secure aggregation (secagg.mode, issue 27) hides each site's statistics from the server: a server that
    # writes them to disk would defeat it. The key does not exist yet; this refusal works once it does.
    secagg = settings.raw.get(SECAGG_KEY, "off")
    if opts.debug_server_local_means and secagg not in SECAGG_OFF:
        raise ConfigError(
            f"config key 'kmeans.debug-server-local-means' has invalid value True with {SECAGG_KEY}={secagg!r}: "
            "expected false (secure aggregation keeps each site's statistics off the server)"
        )


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
)
