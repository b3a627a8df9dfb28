"""Multiply-accumulates of one encoder forward pass, from the model's config.

Counts the matrix products (Q/K/V/O projections, attention scores and mixing, FFN, pooler
and classifier); embedding lookups, LayerNorms, softmax and activations are left out, for
dense and pruned models alike.
"""

from __future__ import annotations

from typing import Any


def _layers(config: Any) -> list[tuple[int, int]]:
    """(attention width h*d_h, FFN width) per layer, for BERT-like and tlprune configs."""
    if getattr(config, "model_type", None) == "tlprune":
        d_h = config.head_size
        return [
            (h * d_h if mha else 0, f if ffn else 0)
            for h, f, mha, ffn in zip(
                config.heads_per_layer,
                config.ffn_per_layer,
                config.mha_present,
                config.ffn_present,
                strict=True,
            )
        ]
    return [(config.hidden_size, config.intermediate_size)] * config.num_hidden_layers


def forward_macs(config: Any, batch: int, seq: int) -> int:
    """MACs of a forward pass of a sequence classifier on `batch` sequences of `seq` tokens."""
    d = config.hidden_size
    per_seq = 0
    for attn, ffn in _layers(config):
        per_seq += seq * (4 * d * attn)  # Q, K, V in; O out
        per_seq += 2 * seq * seq * attn  # QK^T and softmax(.)V
        per_seq += seq * 2 * d * ffn
    head_width = getattr(config, "classifier_hidden_size", None) or d
    per_seq += d * head_width + head_width * config.num_labels  # pooler / dense, then logits
    return batch * per_seq
