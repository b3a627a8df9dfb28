"""The prunable encoder. `modeling_tlprune.py` is self-contained: it is saved next to the weights.

Importing this package registers the classes with the transformers Auto classes, so that in a
process that imports tlprune, `AutoConfig` / `AutoTokenizer` / `AutoModelForSequenceClassification`
load a saved tlprune directory without `trust_remote_code` (elsewhere, `auto_map` serves).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from tlprune.modeling.modeling_tlprune import (
    GATE_KEYS,
    TlpruneConfig,
    TlpruneForSequenceClassification,
    TlpruneModel,
    TlprunePreTrainedModel,
)

AutoConfig.register(TlpruneConfig.model_type, TlpruneConfig, exist_ok=True)
AutoModel.register(TlpruneConfig, TlpruneModel, exist_ok=True)
AutoModelForSequenceClassification.register(
    TlpruneConfig, TlpruneForSequenceClassification, exist_ok=True
)

__all__ = [
    "GATE_KEYS",
    "TlpruneConfig",
    "TlpruneForSequenceClassification",
    "TlpruneModel",
    "TlprunePreTrainedModel",
]
