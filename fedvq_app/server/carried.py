"""One message per site per round: an evaluation carried by the next round's train message.

Flower's round sends two messages to every site: a train instruction, then an evaluate
instruction with the freshly aggregated model. The evaluate instruction of round ``r``
carries the same arrays as the train instruction of round ``r + 1`` whenever the
strategy sends every evaluated node the model it will train next. Then the evaluation
can ride on that train message (NVFlare's scatter-and-gather: a site validates the
global model it received before training on it):

* :func:`attach_evaluation` adds each node's evaluate config to its train message
  (record ``evaluate-config``), after checking that every node the strategy wanted
  evaluated is trained next and is sent the very same arrays -- otherwise it says why
  not, and the loop sends the evaluate messages on their own as before;
* the client evaluates the received model before it trains
  (:class:`~fedvq_app.clients.base.CarriedEvaluation`) and returns the evaluation's
  records in its train reply under ``evaluation:<name>``;
* :func:`split_evaluation` takes them out again, as evaluate replies of the node
  that sent them, so the strategy aggregates them as it would have aggregated the
  separate replies.

The client evaluates the same arrays with the same private state and the same config
as the separate message would have had, so every figure is the same; what changes is
when it arrives (the loop files it under the round whose model it measured).
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, RecordDict

from fedvq_app.protocol import ARRAYS, CONFIG, EVALUATE_CONFIG, EVALUATION_PREFIX


def same_arrays(a: ArrayRecord, b: ArrayRecord) -> bool:
    """Whether two records hold the same arrays, byte for byte (names, order, dtype, shape, data)."""
    if a is b:
        return True
    if list(a.keys()) != list(b.keys()):
        return False
    return all(
        x.dtype == y.dtype and list(x.shape) == list(y.shape) and x.data == y.data
        for x, y in zip(a.values(), b.values(), strict=True)
    )


def attach_evaluation(
    train_messages: list[Message], evaluate_messages: list[Message]
) -> tuple[list[Message], str | None]:
    """Train messages that also carry the evaluate instructions, or the unchanged messages and why not.

    Every evaluate instruction must go to a node that is sent a train message, with
    the same arrays; a train message for a node the strategy did not evaluate goes out
    unchanged.
    """
    trained = {m.metadata.dst_node_id: m for m in train_messages}
    missing = sorted(m.metadata.dst_node_id for m in evaluate_messages if m.metadata.dst_node_id not in trained)
    if missing:
        return train_messages, f"{len(missing)} evaluated node(s) are not trained next (e.g. node {missing[0]})"
    configs = {}
    for msg in evaluate_messages:
        node = msg.metadata.dst_node_id
        if not same_arrays(msg.content[ARRAYS], trained[node].content[ARRAYS]):
            return train_messages, f"node {node} is to evaluate other arrays than it trains next"
        configs[node] = msg.content[CONFIG]
    carrying = []
    for msg in train_messages:
        node = msg.metadata.dst_node_id
        if node not in configs:
            carrying.append(msg)
            continue
        # a message of its own: Flower's strategies share one RecordDict between all their messages
        content = RecordDict({**dict(msg.content.items()), EVALUATE_CONFIG: configs[node]})
        carrying.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type))
    return carrying, None


def split_evaluation(replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
    """(train replies without the carried evaluation, the evaluation as evaluate replies of their nodes).

    Error replies stay with the train replies (their node's evaluation is missing, as
    from a node that did not answer an evaluate message).
    """
    train, evaluation = [], []
    for reply in replies:
        if reply.has_error():
            train.append(reply)
            continue
        carried = {k: v for k, v in reply.content.items() if k.startswith(EVALUATION_PREFIX)}
        if not carried:
            train.append(reply)
            continue
        rest = RecordDict({k: v for k, v in reply.content.items() if k not in carried})
        train.append(Message(content=rest, metadata=reply.metadata))
        evaluated = RecordDict({k.removeprefix(EVALUATION_PREFIX): v for k, v in carried.items()})
        evaluation.append(Message(content=evaluated, metadata=reply.metadata))
    return train, evaluation
