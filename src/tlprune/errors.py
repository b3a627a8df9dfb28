"""User-facing errors: one line that names the problem and the fix; the CLI exits 2 on them."""

from __future__ import annotations


class TlpruneError(Exception):
    """A mistake in the user's input (file, column, name, budget, config), not a bug."""


class ConfigError(TlpruneError):
    """An invalid config key or value."""


class DataError(TlpruneError):
    """A data source that cannot be read or does not fit the task."""


class ModelError(TlpruneError):
    """A model name or directory that cannot be resolved or loaded."""
