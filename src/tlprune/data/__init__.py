"""Data: bundled sources, user files and datasets, budgets, collators and metrics."""
