"""Checkpoint and resume of the server side of a Strategy-based run.

After every completed round the server writes ``<experiment>/checkpoint.npz``:
the global arrays, the strategy's own state (``strategy.state_dict()``: clusters,
codebook, control variates...), the round number, the RNG states of ``random``,
numpy and torch, the tracker's bookkeeping and the run config it was made with.
One file, written to a temporary name and moved into place, so a crash while
saving leaves the previous checkpoint intact.

``resume-from=<experiment folder>`` restores all of it and the loop goes on with
the next round; rounds.jsonl is cut back to the checkpointed round.

With one message per site per round (``evaluate-with-train``) a round is checkpointed
when its evaluation is in, i.e. once the next round's train replies arrived: a crash
in between loses that round, and the resumed run trains it again from the previous
checkpoint (with the RNG states of the moment its evaluation was sampled).

What a checkpoint cannot hold is state that lives on the clients
(``context.state``: SCAFFOLD's c_i, private encoders/heads). Flower keys that
state by run, and a resumed job is a new run, so clients start it afresh even
when their SuperNodes kept running. Methods whose clients keep nothing between
rounds (FedAvg, FedProx) resume exactly.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.common.logger import log

from fedvq_app.aggregation.validation import array_problem, array_schema
from fedvq_app.config import ConfigError, Settings
from fedvq_app.records import to_numpy, to_record
from fedvq_app.strategies.contract import RoundStrategy

CHECKPOINT_FILE = "checkpoint.npz"
_META = "__meta__"
_ARRAYS = "arrays/"
_STATE = "strategy/"
_NUMPY_RNG = "rng/numpy"
_TORCH_RNG = "rng/torch"

#: run-config keys a resumed run may change without breaking the continuation
OPERATIONAL_KEYS = frozenset(
    {
        "resume-from",
        "num-server-rounds",
        "round-timeout",
        "log-dir",
        "experiment-name",
        "device",
        "train.num-threads",
        "dataset.data-dir",
        "dataset.download",
        "min-available-nodes",
        "min-train-nodes",
        "min-evaluate-nodes",
        "eval-every",
        "evaluate-with-train",
    }
)


@dataclass
class Checkpoint:
    """Everything the server needs to continue after ``server_round``."""

    server_round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    tracker_state: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)

    @property
    def array_record(self) -> ArrayRecord:
        return to_record(self.arrays)


# ---------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """States of the process-wide generators the server touches (sampling, init)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state().numpy(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (np_state["kind"], np_state["keys"], np_state["pos"], np_state["has_gauss"], np_state["cached"])
    )
    torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8).copy()))


# ---------------------------------------------------------------------------- strategy state
def strategy_state(strategy: RoundStrategy) -> dict[str, Any]:
    """What the strategy keeps across a resume (its contract's ``state_dict``)."""
    return dict(strategy.state_dict())


def load_strategy_state(strategy: RoundStrategy, state: dict[str, Any]) -> None:
    """Hand the checkpoint's strategy state back; state the strategy cannot take is a bad ``resume-from``."""
    try:
        strategy.load_state_dict(state)
    except (KeyError, ValueError) as err:
        raise ConfigError(
            f"config key 'resume-from': the checkpoint's strategy state {sorted(state)} does not fit "
            f"{type(strategy).__name__} ({err}): expected a checkpoint of the same method"
        ) from None


def _split(state: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays go into the npz, everything else must be JSON."""
    arrays, plain = {}, {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            try:
                json.dumps(value)
            except TypeError as err:
                raise TypeError(f"strategy state '{key}' is neither a numpy array nor JSON-able: {err}") from None
            plain[key] = value
    return arrays, plain


# ---------------------------------------------------------------------------- files
def checkpoint_path(directory: Path) -> Path:
    return Path(directory) / CHECKPOINT_FILE


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint atomically (temporary file + rename)."""
    state_arrays, state_plain = _split(checkpoint.strategy_state)
    rng = dict(checkpoint.rng)
    numpy_rng = dict(rng.get("numpy", {}))
    payload: dict[str, np.ndarray] = {f"{_ARRAYS}{k}": v for k, v in checkpoint.arrays.items()}
    payload.update({f"{_STATE}{k}": v for k, v in state_arrays.items()})
    if rng:
        payload[_NUMPY_RNG] = np.asarray(numpy_rng.pop("keys"))
        payload[_TORCH_RNG] = np.asarray(rng["torch"], dtype=np.uint8)
    meta = {
        "server_round": checkpoint.server_round,
        "array_order": list(checkpoint.arrays),
        "strategy_arrays": list(state_arrays),
        "strategy_plain": state_plain,
        "rng": {"python": rng["python"], "numpy": numpy_rng} if rng else {},
        "tracker": checkpoint.tracker_state,
        "run_config": checkpoint.run_config,
    }
    payload[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    target = checkpoint_path(directory)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("wb") as fh:
        np.savez(fh, **payload)  # type: ignore[arg-type]  # numpy stubs type the first kwarg as allow_pickle
    os.replace(partial, target)
    return target


def load_checkpoint(directory: Path) -> Checkpoint:
    """Read ``<directory>/checkpoint.npz`` (ConfigError when there is none)."""
    path = checkpoint_path(directory)
    if not path.is_file():
        raise ConfigError(f"config key 'resume-from' has invalid value '{directory}': no {CHECKPOINT_FILE} in it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz[_META].tobytes().decode())
            arrays = {k: npz[f"{_ARRAYS}{k}"] for k in meta["array_order"]}
            state: dict[str, Any] = {k: npz[f"{_STATE}{k}"] for k in meta["strategy_arrays"]}
            rng = dict(meta["rng"])
            if rng:
                rng["numpy"] = {**rng["numpy"], "keys": npz[_NUMPY_RNG]}
                rng["torch"] = npz[_TORCH_RNG]
    except Exception as err:  # noqa: BLE001 - truncated, foreign or hand-edited file: bad input, one line
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"config key 'resume-from' has invalid value '{directory}': {path} is not a readable checkpoint "
            f"({type(err).__name__}: {detail})"
        ) from None
    state.update(meta["strategy_plain"])
    return Checkpoint(
        server_round=int(meta["server_round"]),
        arrays=arrays,
        strategy_state=state,
        rng=rng,
        tracker_state=meta.get("tracker", {}),
        run_config=meta.get("run_config", {}),
    )


def check_compatible(settings: Settings, checkpoint: Checkpoint) -> None:
    """A resumed run must be the same experiment: only operational keys may change."""
    saved, current = checkpoint.run_config, dict(settings.raw)
    changed = sorted(
        key for key in set(saved) | set(current) if key not in OPERATIONAL_KEYS and saved.get(key) != current.get(key)
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"config key 'resume-from' has invalid value '{settings.resume_from}': the run config differs from the "
            f"checkpointed run in {details}"
        )
    if checkpoint.server_round >= settings.num_server_rounds:
        log(
            INFO,
            "[fedvq] checkpoint is at round %d of num-server-rounds=%d: nothing left to train",
            checkpoint.server_round,
            settings.num_server_rounds,
        )


class Checkpointer:
    """The loop's after-round hook: saves the full server state of each round."""

    def __init__(self, directory: Path, strategy: Any, tracker: Any, run_config: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.strategy = strategy
        self.tracker = tracker
        self.run_config = dict(run_config)

    def __call__(self, server_round: int, arrays: ArrayRecord, rng: dict[str, Any] | None = None) -> None:
        """Save the state after ``server_round``; ``rng``: the RNG states to keep (default: now)."""
        save_checkpoint(
            self.directory,
            Checkpoint(
                server_round=server_round,
                arrays=to_numpy(arrays),
                strategy_state=strategy_state(self.strategy),
                rng=rng if rng is not None else capture_rng(),
                tracker_state=self.tracker.state_dict(),
                run_config=self.run_config,
            ),
        )


def resume(
    settings: Settings, strategy: Any, tracker: Any, initial: ArrayRecord | None = None
) -> tuple[int, ArrayRecord] | None:
    """Restore server state from ``resume-from``; return (next round, global arrays) or None.

    With ``initial`` (this run's freshly built arrays), a checkpoint whose arrays do
    not have their names, shapes and dtypes is refused before anything is restored.
    """
    if not settings.resume_from:
        return None
    checkpoint = load_checkpoint(Path(settings.resume_from).expanduser())
    check_compatible(settings, checkpoint)
    if initial is not None:
        problem = array_problem(array_schema(to_numpy(initial)), checkpoint.arrays)
        if problem:
            raise ConfigError(
                f"config key 'resume-from' has invalid value {settings.resume_from!r}: its checkpoint does not "
                f"fit this run's model ({problem})"
            )
    load_strategy_state(strategy, checkpoint.strategy_state)
    tracker.load_state_dict(checkpoint.tracker_state, checkpoint.server_round)
    if checkpoint.rng:
        restore_rng(checkpoint.rng)
    log(INFO, "[fedvq] resumed from %s after round %d", settings.resume_from, checkpoint.server_round)
    return checkpoint.server_round + 1, checkpoint.array_record
