"""tlprune: structured pruning of transformer encoders under scarce task data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tlprune.api import evaluate as evaluate
    from tlprune.api import finetune as finetune
    from tlprune.api import load as load
    from tlprune.api import prune as prune

_LAZY = {
    "finetune": "tlprune.api",
    "prune": "tlprune.api",
    "evaluate": "tlprune.api",
    "load": "tlprune.api",
    "RunConfig": "tlprune.config",
    "TlpruneError": "tlprune.errors",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import tlprune` stays cheap (no torch import) for the CLI's --help and data commands.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlprune' has no attribute {name!r}")


__all__ = ["RunConfig", "TlpruneError", "__version__", "evaluate", "finetune", "load", "prune"]
