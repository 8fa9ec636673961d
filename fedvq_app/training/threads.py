"""Cap the native thread pools of a client process (BLAS, OpenMP, torch intra-op).

Many clients share a host (in-process runs, Ray workers, several SuperNodes on one
machine), and their arrays are small: scikit-learn's and OpenBLAS' pools then cost
far more than they save (10-27 ms per k-means assignment on 100 rows with the
default pool, 0.2 ms with one thread). ``train.num-threads`` sets the cap; 0 keeps
the libraries' defaults. torch is only touched when the process already imported it
(the k-means path never does).
"""

from __future__ import annotations

import sys
from functools import cache


@cache
def _limit_pools(num_threads: int, libraries: frozenset[str]) -> None:
    """threadpoolctl's limit on the pools loaded now (about 16 ms: done once per set of libraries)."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - start-up cost: threadpoolctl, only on this path

    threadpool_limits(limits=num_threads)


def _loaded_native_modules() -> frozenset[str]:
    """Python packages that bring their own thread pools, as far as they are imported yet."""
    return frozenset(name for name in ("numpy", "scipy", "sklearn", "torch") if name in sys.modules)


def limit_native_threads(num_threads: int) -> None:
    """At most ``num_threads`` threads per native pool in this process (0 = library defaults)."""
    if num_threads <= 0:
        return
    _limit_pools(num_threads, _loaded_native_modules())
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
