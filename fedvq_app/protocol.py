"""Every name that crosses the wire or lands in a record: plain strings, importable for free.

Server and client import the names of the records and keys they exchange from here and
nowhere else, so the two sides cannot drift apart and a client never imports a strategy
(nor a strategy the tracking code) just for a string. Sections:

* message types of the k-means phases (the ClientApp registers a handler for each when it
  is imported, before it knows which method a run uses, without importing k-means);
* record names of the messages (``arrays``, ``metrics``, ``config`` and the methods' own);
* config and metric keys the methods add to those records;
* names of the records a client keeps in ``context.state`` between rounds;
* the key of a method report merged into the top level of ``summary.json``.
"""

from __future__ import annotations

KMEANS_HANDSHAKE = "query.kmeans_handshake"
KMEANS_NORMALIZATION = "query.kmeans_normalization"
KMEANS_PCA = "query.kmeans_pca"
KMEANS_INIT = "query.kmeans_init"
KMEANS_STEP = "train.kmeans_step"
KMEANS_EVALUATION = "evaluate.kmeans_evaluation"

#: k-means message type -> KMeansClient method answering it
KMEANS_ACTIONS = {
    KMEANS_HANDSHAKE: "handshake",
    KMEANS_NORMALIZATION: "normalization_stats",
    KMEANS_PCA: "covariance_stats",
    KMEANS_INIT: "init_summaries",
    KMEANS_STEP: "lloyd_step",
    KMEANS_EVALUATION: "final_evaluation",
}

# --------------------------------------------------------------------------- record names
#: the model (or statistics) arrays of a message
ARRAYS = "arrays"
#: the metrics of a reply
METRICS = "metrics"
#: the instruction's settings for this round
CONFIG = "config"
#: evaluate-reply record: the client's local-loss gradient at the global parameters
GRADIENT_RECORD = "gradient"
#: evaluate-reply ConfigRecord: {"model": digest of the arrays that gradient was taken at}
GRADIENT_AT_RECORD = "gradient-at"
#: FedVQ train-reply record with the code counts ("counts") and used-code mask ("used")
FEDVQ_USAGE_RECORD = "fedvq-usage"
#: FusedSpace train-reply record with the autoencoder statistics
FUSEDSPACE_STATS_RECORD = "fusedspace"
#: SCAFFOLD: the server control variate (instruction) and the client's control delta (reply)
SCAFFOLD_CONTROL = "scaffold-c"
SCAFFOLD_CONTROL_DELTA = "scaffold-dc"
#: k-means: the global feature transform (instruction) and the centroids (instruction and reply)
KMEANS_TRANSFORM = "transform"
KMEANS_CENTROIDS = "centroids"
#: the privacy wrappers' record in a reply
PRIVACY = "privacy"
#: train-instruction ConfigRecord (one message per site per round): the config of the evaluate
#: instruction the site would have been sent for the model it receives; its presence asks the
#: client to evaluate that model before it trains
EVALUATE_CONFIG = "evaluate-config"
#: prefix of the train-reply records that carry that evaluation (``evaluation:metrics``...)
EVALUATION_PREFIX = "evaluation:"

# --------------------------------------------------------------------------- config and metric keys
#: FedVQ train config: 1 once a global codebook exists (the ema quantizer skips its local k-means init)
FEDVQ_READY_KEY = "codebook-ready"
#: FedVQ train config: 1 when this round's reply must carry the encoder
FEDVQ_ENCODER_UP_KEY = "encoder-up"
#: k-means instruction config: whether the client writes its own per-client logs (issue 31's limit)
KMEANS_CLIENT_LOGS = "client-logs"
#: FedLoGe train-reply metric: the client's per-class sample counts
LABEL_COUNTS = "label-counts"
#: FedLoGe: suffix of a mode's class-balanced accuracy metric
BALANCED_SUFFIX = "-balanced"
#: train-reply metrics of a DP-SGD client (see fedvq_app.training.dpsgd)
DP_EPSILON = "dp-epsilon"
DP_STEPS = "dp-steps"
DP_SAMPLE_RATE = "dp-sample-rate"
DP_NOISE = "dp-noise-multiplier"

# --------------------------------------------------------------------------- client state (context.state)
#: the client's private parameters (never sent)
PRIVATE_STATE = "private"
#: SCAFFOLD: the client's own control variate
SCAFFOLD_LOCAL_CONTROL = "scaffold-ci"
#: FedVQ: the client's best-validation parameters
FEDVQ_BEST_STATE = "fedvq-best"
#: FusedSpace: the autoencoder optimizer's state
FUSEDSPACE_OPTIMIZER_STATE = "fusedspace-ae-optimizer"

# --------------------------------------------------------------------------- reports
#: key of a method report whose entries are merged into the top level of summary.json
TOP_LEVEL_KEY = "top_level"

# --- secure aggregation (secagg.mode, docs/privacy.md) -------------------------
#: server -> client, in a message of a secure exchange: which handler answers and how its reply becomes
#: the vector Flower's SecAgg+ masks ("handler", "summand", "scale", ...)
SECAGG_RECORD = "fedvq.secagg"
#: client -> server, next to the masked vector: the names of what the vector holds (no values)
SECAGG_LAYOUT = "fedvq.secagg-layout"
#: server-side only: the nodes a secure sum covers, on the one reply that stands for their sum
SECAGG_CONTRIBUTORS = "fedvq.secagg-contributors"
#: summand kinds (fedvq_app/clients/secure_sum.py encodes them, the server decodes them)
SUMMAND_WEIGHTED = "weighted"  # every array and metric x weight / scale, then [weight / scale]
SUMMAND_SUM = "sum"  # every array / scale, then the named metrics / scale
SUMMAND_KMEANS_MAGNITUDES = "kmeans-magnitudes"  # per feature: one-hot power-of-two bucket of the site's bound
SUMMAND_KMEANS_MOMENTS = "kmeans-moments"  # count, sum x / s, sum x^2 / s^2 (per-feature scales s) / scale
SUMMAND_KMEANS_SCATTER = "kmeans-scatter"  # count, sum z, sum z z^T, all / scale
#: message types whose replies are only summed: with secagg on, a client answers them only through SecAgg+
SUMMED_MESSAGE_TYPES = ("train", KMEANS_NORMALIZATION, KMEANS_PCA, KMEANS_STEP)
