"""The method registry: one :class:`MethodSpec` per method name.

Server and client resolve the same entry from ``method`` in the run config, so the
model, the strategy, the client trainer and the list of shared parameters can never
disagree. A new method is one module under ``fedvq_app/methods/`` exposing ``SPEC``
and one entry in :data:`_METHODS`.

The table is data, and lazy: a method's module (and with it torch, scikit-learn,
...) is imported only when that method is asked for, so a k-means ClientApp never
pays for the neural methods and a FedAvg ClientApp never for the others.
Custom message types (the k-means phases) are listed in the entry itself, so the
ClientApp can register their handlers without importing the method.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fedvq_app.config import (
    ConfigValue,
    Settings,
    check_privacy,
    check_secagg,
    common_option_keys,
    load_common_settings,
    option_keys,
    parse_section,
)
from fedvq_app.protocol import KMEANS_ACTIONS


@dataclass(frozen=True)
class MethodEntry:
    """Where a method lives: its module (exposing ``SPEC``) and its custom message types.

    ``actions`` maps a custom message type (``"query.kmeans_handshake"``) to the name
    of the client method answering it; ``train``/``evaluate`` need no entry.
    """

    module: str
    actions: Mapping[str, str] = field(default_factory=dict)


_METHODS: dict[str, MethodEntry] = {
    "fedavg": MethodEntry("fedvq_app.methods.fedavg"),
    "fedprox": MethodEntry("fedvq_app.methods.fedprox"),
    "scaffold": MethodEntry("fedvq_app.methods.scaffold"),
    "kmeans": MethodEntry("fedvq_app.methods.kmeans", actions=KMEANS_ACTIONS),
    "cfl": MethodEntry("fedvq_app.methods.cfl"),
    "fusedspace": MethodEntry("fedvq_app.methods.fusedspace"),
    "fedloge": MethodEntry("fedvq_app.methods.fedloge"),
    "fedvq": MethodEntry("fedvq_app.methods.fedvq"),
}


@dataclass(frozen=True)
class MethodSpec:
    """How one method is built on the server and on the client.

    ``build_model(settings, info)`` returns the torch module (None for non-neural
    methods); ``is_shared(name)`` says whether a state-dict entry travels to the
    server; ``build_strategy(settings, info)`` returns the Flower Strategy;
    ``client`` is the client trainer class; ``server_workflow`` runs the whole job
    on the ServerApp (None: the ServerApp runs the common neural round loop);
    ``data_name(settings)`` names the data a run uses when that is not
    ``dataset.name`` (k-means reads tabular sources), for folder names;
    ``privacy_check(settings)`` returns why the configured ``privacy.mode`` would
    not cover what the method discloses (config.py turns it into a ConfigError).
    """

    name: str
    summary: str
    build_strategy: Callable[..., Any]
    client: type
    build_model: Callable[..., Any] | None = None
    is_shared: Callable[[str], bool] = lambda _name: True
    options_type: type | None = None
    validate: Callable[[Settings], None] | None = None
    server_workflow: Callable[..., Any] | None = None
    plots: Callable[..., Any] | None = None
    data_name: Callable[[Settings], str] | None = None
    #: ``privacy_check(settings)`` -> why ``privacy.mode`` would give a false guarantee (None = fine)
    privacy_check: Callable[[Settings], str | None] | None = None
    #: ``secagg_check(settings)`` -> why ``secagg.mode`` cannot run (None = every sum goes through SecAgg+);
    #: a method without one cannot run under secure aggregation
    secagg_check: Callable[[Settings], str | None] = lambda settings: (
        "its server reads per-client values; secure aggregation covers fedavg, fedprox, fedvq "
        "(codebook.aggregation='lloyd') and kmeans"
    )


def method_names() -> tuple[str, ...]:
    """All registered method names (imports no method)."""
    return tuple(_METHODS)


@cache
def get_method(name: str) -> MethodSpec:
    """The spec registered under ``name``, importing only that method's module."""
    spec = importlib.import_module(_METHODS[name].module).SPEC
    if spec.name != name:
        raise RuntimeError(f"{_METHODS[name].module} declares method {spec.name!r}, registered as {name!r}")
    return spec


def custom_actions() -> dict[str, str]:
    """Every custom message type of every method -> its client handler's name (no import)."""
    actions: dict[str, str] = {}
    for entry in _METHODS.values():
        actions.update(entry.actions)
    return actions


def all_option_types() -> list[type]:
    """Every method-specific settings dataclass (for the pyproject key check; imports all methods)."""
    return [s.options_type for s in map(get_method, method_names()) if s.options_type is not None]


def load_settings(
    run_config: Mapping[str, ConfigValue],
    node_config: Mapping[str, ConfigValue] | None = None,
) -> Settings:
    """Validate the whole run config once and return frozen settings.

    The common keys are validated by :func:`fedvq_app.config.load_common_settings`; the
    chosen method's own section (its ``options_type``), its ``validate`` hook and its
    privacy check here, where the methods are known. ``node_config`` may carry a site's own
    ``data-dir``, which overrides ``dataset.data-dir``.
    """
    settings = load_common_settings(run_config, method_names(), node_config)
    spec = get_method(settings.method)
    if spec.options_type is not None:
        settings = dataclasses.replace(settings, method_options=parse_section(spec.options_type, run_config))
    if spec.validate is not None:
        spec.validate(settings)
    check_privacy(settings, spec.privacy_check(settings) if spec.privacy_check is not None else None)
    check_secagg(settings, spec.secagg_check(settings))
    return settings


def all_option_keys() -> dict[str, ConfigValue]:
    """Every key any section reads, with its default (used to check pyproject; imports all methods)."""
    keys = common_option_keys()
    for kind in all_option_types():
        keys.update(option_keys(kind))
    return keys
