"""Flower strategies of the project: one class per module."""
