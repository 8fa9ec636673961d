"""The method registry: one :class:`MethodSpec` per method name.

Server and client resolve the same entry from ``method`` in the run config, so the
model, the strategy, the client trainer and the list of shared parameters can never
disagree. A new method is one module under ``fedvq_app/methods/`` exposing ``SPEC``
and one line in :data:`_METHOD_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedvq_app.config import Settings

_METHOD_MODULES = (
    "fedvq_app.methods.fedavg",
    "fedvq_app.methods.fedprox",
    "fedvq_app.methods.scaffold",
    "fedvq_app.methods.kmeans",
    "fedvq_app.methods.cfl",
    "fedvq_app.methods.fusedspace",
    "fedvq_app.methods.fedloge",
    "fedvq_app.methods.fedvq",
)


@dataclass(frozen=True)
class MethodSpec:
    """How one method is built on the server and on the client.

    ``build_model(settings, info)`` returns the torch module (None for non-neural
    methods); ``is_shared(name)`` says whether a state-dict entry travels to the
    server; ``build_strategy(settings, info)`` returns the Flower Strategy;
    ``client`` is the client trainer class; ``server_workflow`` runs the whole job
    on the ServerApp (the default neural workflow runs the common round loop);
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


@cache
def _specs() -> dict[str, MethodSpec]:
    specs = {}
    for module_name in _METHOD_MODULES:
        spec = importlib.import_module(module_name).SPEC
        specs[spec.name] = spec
    return specs


def method_names() -> tuple[str, ...]:
    """All registered method names."""
    return tuple(_specs())


def get_method(name: str) -> MethodSpec:
    """The spec registered under ``name`` (validated by config beforehand)."""
    return _specs()[name]


def all_option_types() -> list[type]:
    """Every method-specific settings dataclass (for the pyproject key check)."""
    return [s.options_type for s in _specs().values() if s.options_type is not None]
