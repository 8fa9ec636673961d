"""Builders shared by the classification baselines."""

from __future__ import annotations

from fedvq_app.config import Settings
from fedvq_app.data.datasets import DatasetInfo
from fedvq_app.models import build_classifier


def classifier_model(settings: Settings, info: DatasetInfo):
    """The plain classifier (CNN or ResNet-18) for ``info``'s shape and classes."""
    return build_classifier(settings.model, info.channels, info.size, info.num_classes)
