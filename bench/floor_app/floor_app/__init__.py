"""No-op Flower app measuring Flower's own per-message cost (see bench/deployment.py)."""
