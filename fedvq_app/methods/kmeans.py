"""Federated k-means (seed 004): handshake, normalization, PCA, Lloyd steps, evaluation.

Not a neural round loop: the method runs its own multi-phase workflow
(:func:`fedvq_app.server.kmeans_workflow.run_kmeans_workflow`); ``build_strategy``
configures the phases for the federation the handshake found.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedvq_app.clients.kmeans import KMeansClient
from fedvq_app.config import ConfigError, Settings, option
from fedvq_app.data.tabular import DATA_PATH_ENV, SPLITS, TABULAR_SOURCES
from fedvq_app.registry import MethodSpec
from fedvq_app.server.kmeans_workflow import build_phases, run_kmeans_workflow


@dataclass(frozen=True)
class KMeansOptions:
    k: int = option("kmeans.k", 3, minimum=1, help="number of global clusters k")
    data_source: str = option(
        "kmeans.data-source",
        "wine",
        choices=TABULAR_SOURCES,
        help="generated (data_gen/generate_test_data.py files) or a scikit-learn table: iris, wine, breast-cancer",
    )
    data_path: str = option(
        "kmeans.data-path",
        "",
        help=f"folder of generated client_<i>.npz files (empty = ${DATA_PATH_ENV}, then dataset.data-dir)",
    )
    split: str = option(
        "kmeans.split",
        "iid",
        choices=SPLITS,
        help="how a scikit-learn table is cut across clients: iid or label-skew (Dirichlet over labels)",
    )
    skew_alpha: float = option(
        "kmeans.skew-alpha",
        0.5,
        minimum=0.0,
        exclusive_minimum=True,
        help="Dirichlet concentration of kmeans.split=label-skew (smaller = more skew)",
    )
    pca_components: int = option(
        "kmeans.pca-components",
        2,
        minimum=2,
        help="principal components of the federated PCA (run when there are more than 2 features)",
    )
    cluster_space: str = option(
        "kmeans.cluster-space",
        "normalized",
        choices=("normalized", "pca"),
        help="cluster the standardized features or their PCA projection (the projection is always logged)",
    )
    max_rounds: int = option("kmeans.max-rounds", 100, minimum=1, help="most Lloyd rounds")
    tol: float = option(
        "kmeans.tol",
        1e-4,
        minimum=0.0,
        exclusive_minimum=True,
        help="stop when no centroid moves farther than this (standardized units)",
    )
    privacy_threshold: int = option(
        "kmeans.privacy-threshold",
        5,
        minimum=1,
        help="clients never share a local mean built from fewer rows (a node-config privacy-threshold may raise it)",
    )
    local_k: int = option(
        "kmeans.local-k", 0, minimum=0, help="clusters of each client's local k-means for the initialisation (0 = 2k)"
    )
    n_init: int = option(
        "kmeans.n-init",
        10,
        minimum=1,
        help="Lloyd runs advanced together from different k-means++ seedings; the lowest inertia is kept",
    )
    silhouette_sample: int = option(
        "kmeans.silhouette-sample", 200, minimum=0, help="rows per client scored for the silhouette (0 = none)"
    )
    client_logs: bool = option(
        "kmeans.client-logs",
        True,
        help="clients write local_means/ and client_logs/ under <log-dir>/<experiment> "
        "(only up to tracking.per-client-limit clients)",
    )
    debug_server_local_means: bool = option(
        "kmeans.debug-server-local-means",
        False,
        help="debug only: the server also writes every client's shared local means and counts per round "
        "(local_means/round_XXX_server.npz); refused with secure aggregation",
    )


#: the secure-aggregation key (issue 27) and its values that mean "off"
SECAGG_KEY = "secagg.mode"
SECAGG_OFF = ("off", "none", "", False)


def validate(settings: Settings) -> None:
    """Cross-field checks: options that would be silently ignored are errors."""
    opts: KMeansOptions = settings.method_options
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
    from fedvq_app.tracking.kmeans_plots import kmeans_plots as plots  # noqa: PLC0415

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
    data_name=lambda settings: settings.method_options.data_source,
    privacy_check=privacy_check,
)
