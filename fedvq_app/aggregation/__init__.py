"""Pure aggregation math (numpy/torch/scikit-learn/POT); no flwr import here."""
