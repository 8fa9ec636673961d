"""Bridge: Flower's SecAgg+ client mod reads the vector it masks from a *legacy* ``FitRes``.

``flwr.client.mod.secaggplus_mod`` (Flower 1.41) calls the ClientApp's handler and
reads its reply with ``recorddict_to_fitres``: the arrays under the record
``fitres.parameters``, the weight under ``fitres.num_examples``, metrics under
``fitres.metrics`` and a status. The project's replies use the Message API's
names (``arrays``, ``metrics``). This module is the one place that writes a
vector in the legacy layout, with Flower's own converter, and the one place that
knows how the mod weighs it:

* the mod multiplies the vector by ``num_examples / max_weight`` (both quantized)
  and the server workflow divides the sum by the summed weights. Every client
  reports ``num_examples = 1`` and the server uses ``max_weight = 1.0``, so each
  ratio is exactly 1 and Flower's "weighted average" is the plain mean of the
  vectors; :mod:`fedvq_app.server.secaggplus_legacy` multiplies it back by the
  number of contributors. Any weighting (FedAvg's example counts) travels
  *inside* the masked vector, never in the clear.

``tests/test_secagg_bridges.py`` fails if the pinned Flower changes any of this.
"""

from __future__ import annotations

import numpy as np
from flwr.app import RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

#: the weight every client reports and the server's ``max_weight``: each ratio is 1
UNIT_WEIGHT = 1
MAX_WEIGHT = 1.0


def vector_as_fitres(vector: list[np.ndarray]) -> RecordDict:
    """The records Flower's SecAgg+ mod reads its input from (``fitres.*``), for ``vector``."""
    fitres = FitRes(
        status=Status(code=Code.OK, message="Success"),
        parameters=ndarrays_to_parameters([np.asarray(a, dtype=np.float64) for a in vector]),
        num_examples=UNIT_WEIGHT,
        metrics={},
    )
    return compat.fitres_to_recorddict(fitres, keep_input=False)
