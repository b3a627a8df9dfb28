"""tlprune: structured pruning of transformer encoders under scarce task data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tlprune.api import bundled_datasets as bundled_datasets
    from tlprune.api import evaluate as evaluate
    from tlprune.api import export as export
    from tlprune.api import finetune as finetune
    from tlprune.api import load as load
    from tlprune.api import prepare_data as prepare_data
    from tlprune.api import prune as prune
    from tlprune.train.result import RunResult as RunResult

# the typed API, one function per CLI command (tlprune/api.py); bench, study and report are
# subpackages here, so their functions are tlprune.api.bench, .study and .report
_API = (
    "bundled_datasets",
    "evaluate",
    "export",
    "finetune",
    "load",
    "prepare_data",
    "prune",
)
_LAZY = {
    **{name: "tlprune.api" for name in _API},
    "RunResult": "tlprune.train.result",
    "RunConfig": "tlprune.config",
    "TlpruneError": "tlprune.errors",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import tlprune` stays cheap (no torch import) for the CLI's --help and data commands.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlprune' has no attribute {name!r}")


__all__ = ["RunConfig", "RunResult", "TlpruneError", "__version__", *_API]
