"""Every method's own config section: one frozen dataclass per method, and the choices they offer.

A method's keys (``cfl.*``, ``codebook.*``, ``fedvq.*``...) are declared here, with
:func:`fedvq_app.config.option` like the common sections, so that every layer that reads them
(the method's wiring, its client, its strategy, its model, its server workflow) can name the type:
``settings.options(FedVQOptions)``. Each ``MethodSpec.options_type`` points at one of them; the
registry parses the chosen one (``fedvq_app.registry.load_settings``) and runs the method's own
cross-key checks (``MethodSpec.validate``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedvq_app.config import option

#: ``codebook.aggregation``: aggregation/codebook.py's AGGREGATORS, then the statistics path (codebook_lloyd.LLOYD);
#: plain names here so that reading options never imports scikit-learn (tests/test_config.py holds them in sync)
CODEBOOK_AGGREGATIONS = ("mean", "kmeans", "weighted-kmeans", "usage-kmeans", "wasserstein", "lloyd")
#: ``codebook.align``: aggregation/codebook.py's ALIGN_MODES
CODEBOOK_ALIGN_MODES = ("none", "warm-start", "hungarian")
#: environment variable naming the folder of generated k-means client files (tests, data_gen/)
DATA_PATH_ENV = "TEST_DATA_PATH"
WEIGHTINGS = ("uniform", "num-examples")
#: how the CFL split thresholds are read (fedvq_app/aggregation/clustering.py keeps the same tuple)
THRESHOLD_SCALES = ("relative", "absolute")
ENCODER_SCHEDULES = ("private", "shared", "warmup")
QUANTIZERS = ("gumbel", "straight-through", "ema")
DECODER_NORMS = ("batch", "group")
HEADS = ("pool", "flatten")
AUTOENCODERS = ("unet", "plain")
#: personal-mode formulas: "raw-local" (the reference's realignment.py: the raw local head + the global head's
#: rows scaled to the local head's row norms), "realigned-local" (the realigned local head + a global head) or
#: "raw-heads" (the reference's per-round localtest in fedloge.py: raw local head + raw global head, no GLA-FR)
PERSONAL_FORMULAS = ("raw-local", "realigned-local", "raw-heads")
#: which global head the realigned-local personal formula adds to the realigned local head
PERSONAL_GLOBAL_HEADS = ("raw", "realigned")
#: SSE-C constructions: the reference code's, or the top-magnitude unit-norm frame
SSE_C_KINDS = ("top-magnitude", "reference")
SKLEARN_TABLES = ("iris", "wine", "breast-cancer")
TABULAR_SOURCES = ("generated", *SKLEARN_TABLES)
SPLITS = ("iid", "label-skew")
AE_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class FedProxOptions:
    mu: float = option("fedprox.mu", 0.01, minimum=0.0, help="proximal coefficient mu of (mu/2)||w - w_global||^2")


@dataclass(frozen=True)
class ScaffoldOptions:
    server_lr: float = option(
        "scaffold.server-lr", 1.0, minimum=0.0, exclusive_minimum=True, help="server step size towards the mean model"
    )


@dataclass(frozen=True)
class CflOptions:
    eps1: float = option(
        "cfl.eps1",
        0.25,
        minimum=0.0,
        exclusive_minimum=True,
        help="split only when the norm of a cluster's mean update is below this (joint convergence); with "
        "cfl.threshold-scale = relative a fraction of the run's peak mean client update norm",
    )
    eps2: float = option(
        "cfl.eps2",
        0.6,
        minimum=0.0,
        help="... and the largest member update norm is above this (some member still pulls away); relative: a "
        "fraction of the same peak",
    )
    min_cluster_size: int = option(
        "cfl.min-cluster-size",
        2,
        minimum=1,
        help="a cluster splits only with >= 2x this many participants, and only if both halves get this many",
    )
    threshold_scale: str = option(
        "cfl.threshold-scale",
        "relative",
        choices=THRESHOLD_SCALES,
        help="relative: eps1 and eps2 are fractions of the run's reference update norm (the largest mean client "
        "update norm of any round so far); absolute: plain norms (the reference code's constants, tied to one "
        "model, optimiser, local-step count and dataset)",
    )
    max_cross_similarity: float = option(
        "cfl.max-cross-similarity",
        0.0,
        minimum=-1.0,
        maximum=1.0,
        help="split only when the mean cosine similarity between the two halves' updates is below this (the halves "
        "pull apart); 1 = no such check (the reference code)",
    )
    warmup_rounds: int = option(
        "cfl.warmup-rounds", 5, minimum=1, help="no split before this round (norms are large while training starts)"
    )
    weighting: str = option(
        "cfl.weighting",
        "uniform",
        choices=WEIGHTINGS,
        help="mean of member updates: uniform (as the reference code) or weighted by num-examples",
    )


@dataclass(frozen=True)
class FusedSpaceOptions:
    autoencoder: str = option(
        "fusedspace.autoencoder",
        "unet",
        choices=AUTOENCODERS,
        help="unet: the reference's small U-Net (private encoder levels feed the shared decoder through skips); "
        "plain: conv encoder to a dz latent, decoder without skips",
    )
    width: int = option("fusedspace.width", 16, minimum=1, help="channels of the autoencoder's first level")
    dz: int = option(
        "fusedspace.dz", 16, minimum=1, help="plain autoencoder: latent channels of the bottleneck (H/4 x W/4)"
    )
    task_aware: bool = option(
        "fusedspace.task-aware",
        True,
        help="true: the classification loss trains the autoencoder through x + D(E_i(x)); false: the reference's "
        "two steps (autoencoder on reconstruction only, classifier on x + D(E_i(x)) detached)",
    )
    lambda_rec: float = option(
        "fusedspace.lambda-rec",
        5.0,
        minimum=0.0,
        help="weight of the reconstruction loss ||D(E_i(x)) - x||^2 next to the classification loss (5 chosen on "
        "the pooled validation splits at 30 rounds, docs/fusedspace.md; the seed: 1)",
    )
    warmup_epochs: int = option(
        "fusedspace.warmup-epochs",
        1,
        minimum=0,
        help="epochs per round training the private encoder alone against the frozen new global decoder",
    )
    l2sp: float = option(
        "fusedspace.l2sp",
        0.0,
        minimum=0.0,
        help="L2-SP: weight of sum ||w - w_0||^2 pulling the encoder towards its initial weights (reference: 1e-3)",
    )
    ae_optimizer: str = option(
        "fusedspace.ae-optimizer",
        "sgd",
        choices=AE_OPTIMIZERS,
        help="optimizer of encoder + decoder: sgd (the reference: momentum, weight decay) or adam",
    )
    ae_lr: float = option(
        "fusedspace.ae-lr",
        0.01,
        minimum=0.0,
        help="learning rate of the autoencoder's optimizer (reference: SGD 0.01; the seed's Adam: 0.001); "
        "0 = train.optimizer at train.lr for everything",
    )
    ae_momentum: float = option(
        "fusedspace.ae-momentum", 0.9, minimum=0.0, maximum=1.0, help="SGD momentum of the autoencoder"
    )
    ae_weight_decay: float = option(
        "fusedspace.ae-weight-decay", 5e-4, minimum=0.0, help="weight decay of the autoencoder's optimizer"
    )
    ae_keep_state: bool = option(
        "fusedspace.ae-keep-state",
        True,
        help="keep the autoencoder optimizer's state (momentum / Adam moments) across rounds in context.state, "
        "as the reference's long-lived clients do; false = a fresh optimizer every round",
    )
    gamma_scope: str = option(
        "fusedspace.gamma-scope",
        "classifier",
        choices=("classifier", "shared"),
        help="parameters behind Gamma: the classifier (comparable with the baselines) or decoder + classifier",
    )


@dataclass(frozen=True)
class FedLoGeOptions:
    sse_c: str = option(
        "fedloge.sse-c",
        "top-magnitude",
        choices=SSE_C_KINDS,
        help="SSE-C: top-magnitude (per-row largest entries kept, unit norm, no bias) or reference (the reference "
        "code's: random positions zeroed, class vectors at norm 0.1 with the ETF's angles, random bias)",
    )
    sparsity: float = option(
        "fedloge.sparsity",
        0.6,
        minimum=0.0,
        maximum=0.95,
        help="share of the SSE-C entries zeroed before it is frozen",
    )
    tau: float = option(
        "fedloge.tau",
        1.7,
        minimum=0.0,
        exclusive_minimum=True,
        help="GLA-FR: norm every class row of the realigned global head is scaled to",
    )
    realign_each_round: bool = option(
        "fedloge.realign-each-round",
        True,
        help="apply GLA-FR at every evaluation (false: only after the last round; earlier rounds use raw heads)",
    )
    personal_formula: str = option(
        "fedloge.personal-formula",
        "raw-heads",
        choices=PERSONAL_FORMULAS,
        help="personal mode: raw-local (the reference's realignment: raw local head + global rows at the local row "
        "norms), realigned-local (realigned local head + fedloge.personal-global-head) or raw-heads (the reference's "
        "per-round localtest: raw local head + raw global head)",
    )
    personal_global_head: str = option(
        "fedloge.personal-global-head",
        "raw",
        choices=PERSONAL_GLOBAL_HEADS,
        help="realigned-local formula: the global head added to the realigned local head, raw or realigned",
    )
    local_refit_epochs: int = option(
        "fedloge.local-refit-epochs",
        20,
        minimum=0,
        help="at evaluation, epochs of training the local head (alone, train.optimizer at train.lr) on the received "
        "backbone's features of the client's train split before the personal modes are scored; used for that "
        "evaluation only (0 = the reference: the local head as trained against the client's own pre-aggregation "
        "backbone; 20 chosen on the clients' own validation splits, docs/fedloge.md)",
    )
    head_share: float = option(
        "fedloge.head-share",
        0.75,
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        help="head classes = most frequent classes holding this share of the training samples",
    )
    medium_share: float = option(
        "fedloge.medium-share",
        0.95,
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        help="head + medium classes hold this share of the training samples; the rest is the tail",
    )


@dataclass(frozen=True)
class FedVQOptions:
    quantizer: str = option(
        "fedvq.quantizer",
        "ema",
        choices=QUANTIZERS,
        help="gumbel (seed: Gumbel-softmax sample), straight-through (argmax code, softmax gradient), "
        "ema (nearest-neighbour VQ, EMA codebook, k-means init, dead-code revival; vector-quantize-pytorch)",
    )
    encoder: str = option(
        "fedvq.encoder",
        "shared",
        choices=ENCODER_SCHEDULES,
        help="private (seed: never leaves the client), shared (averaged like the decoder), "
        "warmup (shared for fedvq.shared-encoder-rounds rounds, then private)",
    )
    shared_encoder_rounds: int = option(
        "fedvq.shared-encoder-rounds", 10, minimum=0, help="rounds the warmup schedule shares the encoder"
    )
    eval_sampling: bool = option(
        "fedvq.eval-sampling", False, help="gumbel: sample Gumbel noise at evaluation too (the seed; stochastic scores)"
    )
    ema_decay: float = option(
        "fedvq.ema-decay", 0.9, minimum=0.0, maximum=1.0, help="ema: decay of the EMA codebook updates"
    )
    dead_code_threshold: float = option(
        "fedvq.dead-code-threshold",
        2.0,
        minimum=0.0,
        help="ema: before the first global codebook, a client replaces codes whose EMA cluster size is below "
        "this (library revival); afterwards dead codes are revived by the server",
    )
    heads: int = option(
        "fedvq.heads",
        16,
        minimum=1,
        help="ema: multi-head VQ (vector-quantize-pytorch heads, one K-code codebook per head): each feature "
        "vector is split into this many chunks of D/heads, each quantized on its own; needs "
        "codebook.aggregation lloyd or mean",
    )
    rotation_trick: bool = option(
        "fedvq.rotation-trick",
        False,
        help="ema: pass the gradient through the quantizer with the rotation trick (vector-quantize-pytorch's "
        "default: rotated and rescaled by ||q||/||z||, unbounded for near-zero chunks; diverged under SGD) "
        "instead of the straight-through estimator (false)",
    )
    head: str = option(
        "fedvq.head",
        "flatten",
        choices=HEADS,
        help="classifier on the decoded map: pool (seed: global average pooling + linear), flatten (the plain "
        "CNN's head: the map scaled by 1/sqrt(positions), flattened, dense 128 + ReLU + linear; keeps the "
        "spatial layout)",
    )
    decoder_norm: str = option(
        "fedvq.decoder-norm",
        "batch",
        choices=DECODER_NORMS,
        help="normalisation in the decoder's conv blocks: batch (seed: BatchNorm, running statistics averaged "
        "across clients), group (GroupNorm: no running statistics)",
    )
    recalibrate_bn: bool = option(
        "fedvq.recalibrate-bn",
        True,
        help="at evaluation each client re-estimates the BatchNorm running statistics of the model it "
        "evaluates on its own training images (one forward pass; the averaged running statistics do not "
        "match the averaged weights)",
    )
    grad_clip: float = option(
        "fedvq.grad-clip",
        0.0,
        minimum=0.0,
        help="clip the global gradient norm of every local step to this (0 = off)",
    )
    aggregation: str = option(
        "codebook.aggregation",
        "lloyd",
        choices=CODEBOOK_AGGREGATIONS,
        help="codebook aggregator: lloyd (ema only: exact mean of the assigned vectors from per-code counts and "
        "sums), mean (FedAvg), kmeans, weighted-kmeans (data-size sample weights), "
        "usage-kmeans (used codes, usage weights), wasserstein (POT free-support barycenter)",
    )
    privacy_threshold: int = option(
        "codebook.privacy-threshold",
        5,
        minimum=1,
        help="lloyd: a client withholds the statistics of a code fewer than this many of its vectors chose",
    )
    max_revived: int = option(
        "codebook.max-revived",
        0,
        minimum=-1,
        help="lloyd: at most this many dead codes revived by splitting per round (-1 = all, 0 = none: a dead code "
        "keeps its previous vector)",
    )
    revive_after: int = option(
        "codebook.revive-after",
        1,
        minimum=1,
        help="lloyd: revive a code only after it was dead (no vector anywhere) this many consecutive rounds",
    )
    align: str = option(
        "codebook.align",
        "hungarian",
        choices=CODEBOOK_ALIGN_MODES,
        help="index alignment: none (cold clustering, seed), warm-start (start from the previous codebook), "
        "hungarian (warm start + re-match codes to the previous indices)",
    )
    num_embeddings: int = option("codebook.num-embeddings", 64, minimum=2, help="codebook size K (seed: 512)")
    embedding_dim: int = option(
        "codebook.embedding-dim",
        64,
        minimum=1,
        help="code dimension D (seed: 512); a 1x1 conv maps the trunk's channels to D when they differ",
    )
    usage_threshold: float = option(
        "codebook.usage-threshold",
        0.01,
        minimum=0.0,
        maximum=1.0,
        help="a client 'uses' a code picked for at least this fraction of its feature positions (seed: 0.01)",
    )
    kmeans_n_init: int = option(
        "codebook.kmeans-n-init", 10, minimum=1, help="k-means++ restarts when clustering cold (codebook.align=none)"
    )
    kmeans_max_iter: int = option("codebook.kmeans-max-iter", 300, minimum=1, help="most Lloyd iterations per run")
    barycenter_iters: int = option(
        "codebook.barycenter-iters", 20, minimum=1, help="most fixed-point iterations of the Wasserstein barycenter"
    )
    temperature: float = option(
        "fedvq.temperature", 1.0, minimum=0.0, exclusive_minimum=True, help="Gumbel-softmax temperature"
    )
    proj_init_gain: float = option(
        "fedvq.proj-init-gain",
        5.0,
        minimum=0.0,
        exclusive_minimum=True,
        help="scale of the code projection's initial weights (1 = PyTorch default); lifts the small CNN's "
        "initial code logits above the Gumbel noise",
    )
    vq_weight: float = option("fedvq.vq-weight", 0.05, minimum=0.0, help="weight of the commitment loss (seed: 0.05)")
    recon_weight: float = option(
        "fedvq.recon-weight", 0.1, minimum=0.0, help="weight of the decoder's feature reconstruction loss (seed: 0.1)"
    )
    best_val: bool = option(
        "fedvq.best-val", False, help="send the local epoch that scored best on the local validation split (seed)"
    )
    save_checkpoints: bool = option(
        "fedvq.save-checkpoints", True, help="each client keeps its best-validation model as client_<id>_best.pt"
    )
    checkpoint_dir: str = option(
        "fedvq.checkpoint-dir",
        "",
        help="folder of the clients' best checkpoints (empty = <log-dir>/<experiment>/client_checkpoints)",
    )


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
    init: str = option(
        "kmeans.init",
        "local-means",
        choices=("local-means", "random"),
        help="initial centroids: local-means (k-means++ over the clients' privacy-filtered local cluster means) "
        "or random (Gaussian draws from the federated normalization/PCA statistics; the one with secure "
        "aggregation, since local means cannot be summed)",
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
