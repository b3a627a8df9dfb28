"""Architecture adapters (BERT, RoBERTa) and conversion of HF models to the prunable encoder."""

from tlprune.arch import bert, roberta
from tlprune.arch.base import (
    ArchAdapter,
    UnitSizes,
    from_hf,
    get_adapter,
    register,
    supported,
    unit_sizes,
)

for _adapter in (bert.ADAPTER, roberta.ADAPTER):
    register(_adapter)

__all__ = [
    "ArchAdapter",
    "UnitSizes",
    "from_hf",
    "get_adapter",
    "register",
    "supported",
    "unit_sizes",
]
