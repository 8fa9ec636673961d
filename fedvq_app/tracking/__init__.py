"""Experiment folders, per-round logs, summaries and plots."""
