"""fedvq: one Flower app for federated learning on non-IID data."""
