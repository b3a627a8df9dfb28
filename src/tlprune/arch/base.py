"""Architecture adapters: how a Hugging Face encoder maps onto the prunable Tlprune encoder.

An adapter knows two things about one HF `model_type`: how its config translates into a
`TlpruneConfig` (sizes read from the config, never assumed) and how its state-dict keys map to
Tlprune keys. Adding an architecture = one adapter file + its equivalence test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from tlprune.errors import ModelError
from tlprune.gates.size import UnitSizes
from tlprune.modeling import TlpruneConfig, TlpruneForSequenceClassification
from tlprune.registry import Registry

# HF keys of buffers that carry no weights (older checkpoints save them).
_BUFFER_KEYS = (r"(^|\.)position_ids$", r"(^|\.)token_type_ids$")


@dataclass(frozen=True)
class ArchAdapter:
    """One architecture: its HF `model_type`, config conversion and state-dict key rules.

    `key_rules` are (regex, replacement) pairs applied to HF keys after the base-model prefix
    (`base_prefix` + ".") is stripped; the first matching rule wins. Keys matching `ignore`
    have no counterpart and are dropped; any other unmatched key is an error.
    """

    model_type: str
    base_prefix: str
    config_from_hf: Callable[[object], TlpruneConfig]
    key_rules: tuple[tuple[str, str], ...]
    ignore: tuple[str, ...] = field(default=())

    def convert_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        prefix = self.base_prefix + "."
        for key, value in state_dict.items():
            short = key[len(prefix) :] if key.startswith(prefix) else key
            if any(re.search(p, short) for p in (*self.ignore, *_BUFFER_KEYS)):
                continue
            for pattern, replacement in self.key_rules:
                if re.fullmatch(pattern, short):
                    out[re.sub(pattern, replacement, short)] = value
                    break
            else:
                raise ModelError(
                    f"{self.model_type} weight {key!r} has no place in the tlprune model"
                )
        return out


ADAPTERS: Registry[ArchAdapter] = Registry("architecture")


def register(adapter: ArchAdapter) -> ArchAdapter:
    """Add an adapter; a second adapter for the same model_type is an error."""
    return ADAPTERS.register(adapter.model_type, adapter)


def supported() -> list[str]:
    return ADAPTERS.names()


def get_adapter(model_type: str) -> ArchAdapter:
    if model_type not in ADAPTERS:
        raise ModelError(
            f"unsupported architecture {model_type!r}: tlprune prunes {', '.join(supported())} "
            "encoders"
        )
    return ADAPTERS.get(model_type)


def from_hf(hf_model) -> TlpruneForSequenceClassification:
    """Convert an HF sequence classifier (or its base model) into an equivalent Tlprune model.

    A base model (no classification head in its weights) gets a freshly initialised head for
    `hf_model.config.num_labels`; its pooler, where the architecture's head uses one, is kept.
    The result is float32 and in the same train/eval mode as `hf_model`.
    """
    config = getattr(hf_model, "config", None)
    adapter = get_adapter(getattr(config, "model_type", type(hf_model).__name__))
    model = TlpruneForSequenceClassification(adapter.config_from_hf(config))
    state = adapter.convert_state_dict(hf_model.state_dict())
    state = {k: v.detach().to(torch.float32) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]  # a fresh head
    if missing or unexpected:
        raise ModelError(
            f"cannot convert {type(hf_model).__name__}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )
    return model.train(hf_model.training)


def unit_sizes(config: TlpruneConfig) -> UnitSizes:
    """Gate shapes of a full-size (uniform) model: layers, heads, head size, hidden, FFN size."""
    heads, ffn = set(config.heads_per_layer), set(config.ffn_per_layer)
    uniform = all(config.mha_present) and all(config.ffn_present)
    if len(heads) != 1 or len(ffn) != 1 or not uniform:
        raise ValueError(
            "unit sizes need a model with the same heads and FFN size in every layer "
            f"(heads {config.heads_per_layer}, ffn {config.ffn_per_layer}); "
            "gate the full-size model, not a pruned one"
        )
    return UnitSizes(
        num_layers=config.num_hidden_layers,
        num_heads=heads.pop(),
        head_size=config.head_size,
        hidden=config.hidden_size,
        ffn=ffn.pop(),
    )
