"""Synthetic data generators (run as scripts or imported by tests)."""
