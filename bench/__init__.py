"""Benchmarks: scripts that print figures (one JSON line each) and append to bench/results/."""
