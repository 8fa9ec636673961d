"""Data layer: datasets by name, partitioning, covariate shifts, client loaders."""
