"""Physical pruning: binary masks -> a smaller TlpruneForSequenceClassification.

The masks have the keys and shapes of the gates (`tlprune.modeling.GATE_KEYS`; a missing key
keeps every unit). The pruned model, run without gates, reproduces the full model run with
the masks as gates. A layer whose mha and ffn are both gone is dropped: the pruned model has
fewer layers (so `output_hidden_states` returns fewer states), and `config.source_layers`
names the original index of every layer kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tlprune.modeling import GATE_KEYS, TlpruneConfig, TlpruneForSequenceClassification


def _kept(mask: Tensor | None, size: int) -> Tensor:
    """Indices of the kept units (all of them when there is no mask)."""
    if mask is None:
        return torch.arange(size)
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.numel() != size:
        raise ValueError(f"mask has {mask.numel()} entries, expected {size}")
    return torch.nonzero(mask.reshape(-1)).reshape(-1)


def _layer_mask(masks: Mapping[str, Any], key: str, layer: int) -> Tensor | None:
    return None if masks.get(key) is None else torch.as_tensor(masks[key][layer])


def _is_open(masks: Mapping[str, Any], key: str, layer: int) -> bool:
    gate = _layer_mask(masks, key, layer)
    return gate is None or bool(gate != 0)


def _check_masks(masks: Mapping[str, Any]) -> None:
    unknown = set(masks) - set(GATE_KEYS)
    if unknown:
        raise ValueError(f"unknown mask keys {sorted(unknown)}; expected a subset of {GATE_KEYS}")
    for key, value in masks.items():
        rows = value if isinstance(value, (list, tuple)) else [value]
        for row in rows:
            row = torch.as_tensor(row).detach()
            if not bool(((row == 0) | (row == 1)).all()):
                raise ValueError(f"mask {key!r} is not binary (0/1): prune with hard masks")


def _head_columns(heads: Tensor, head_size: int) -> Tensor:
    return (heads[:, None] * head_size + torch.arange(head_size)).reshape(-1)


def _take(weight: Tensor, dim: int, index: Tensor) -> Tensor:
    return weight.index_select(dim, index.to(weight.device)).clone()


class _Slicer:
    """Copies tensors from the old state dict into the new one, sliced on given dims."""

    def __init__(self, old: Mapping[str, Tensor]):
        self.old, self.new = old, {}

    def copy(self, src: str, dst: str | None = None, **dims: Tensor) -> None:
        value = self.old[src]
        for dim, index in dims.items():
            value = _take(value, int(dim[1:]), index)
        self.new[dst or src] = value if dims else value.clone()


def _copy_attention(s: _Slicer, masks, cfg, old_i: int, src: str, dst: str, hidden) -> int:
    """Layer `old_i`'s kept heads (Q, K, V columns and O rows) into `dst`; their number."""
    heads = _kept(_layer_mask(masks, "head", old_i), cfg.heads_per_layer[old_i])
    if heads.numel():
        cols = _head_columns(heads, cfg.head_size)
        for proj in ("query", "key", "value"):
            w, b = f"attention.{proj}.weight", f"attention.{proj}.bias"
            s.copy(f"{src}{w}", f"{dst}{w}", d0=cols, d1=hidden)
            s.copy(f"{src}{b}", f"{dst}{b}", d0=cols)
        w = "attention.output.weight"
        s.copy(f"{src}{w}", f"{dst}{w}", d0=hidden, d1=cols)
    s.copy(f"{src}attention.output.bias", f"{dst}attention.output.bias", d0=hidden)
    for p in ("weight", "bias"):
        s.copy(f"{src}attention_norm.{p}", f"{dst}attention_norm.{p}", d0=hidden)
    return heads.numel()


def _copy_ffn(s: _Slicer, masks, cfg, old_i: int, src: str, dst: str, hidden) -> int:
    """Layer `old_i`'s kept FFN units (W1 rows, W2 columns) into `dst`; their number."""
    units = _kept(_layer_mask(masks, "ffn_unit", old_i), cfg.ffn_per_layer[old_i])
    if units.numel():
        w, b = "ffn.intermediate.weight", "ffn.intermediate.bias"
        s.copy(f"{src}{w}", f"{dst}{w}", d0=units, d1=hidden)
        s.copy(f"{src}{b}", f"{dst}{b}", d0=units)
        s.copy(f"{src}ffn.output.weight", f"{dst}ffn.output.weight", d0=hidden, d1=units)
    s.copy(f"{src}ffn.output.bias", f"{dst}ffn.output.bias", d0=hidden)
    for p in ("weight", "bias"):
        s.copy(f"{src}ffn_norm.{p}", f"{dst}ffn_norm.{p}", d0=hidden)
    return units.numel()


def prune_model(
    model: TlpruneForSequenceClassification, masks: Mapping[str, Any]
) -> TlpruneForSequenceClassification:
    """A new, smaller model without the units whose mask is 0 (the input model is untouched)."""
    _check_masks(masks)
    cfg: TlpruneConfig = model.config
    hidden = _kept(masks.get("hidden"), cfg.hidden_size)
    if hidden.numel() == 0:
        raise ValueError("every hidden dimension is masked: nothing would be left")
    s = _Slicer(model.state_dict())

    emb = "tlprune.embeddings."
    for table in ("word", "position", "token_type"):
        if f"{emb}{table}_embeddings.weight" in s.old:
            s.copy(f"{emb}{table}_embeddings.weight", d1=hidden)
    for p in ("weight", "bias"):
        s.copy(f"{emb}norm.{p}", d0=hidden)

    layers: dict[str, list] = {k: [] for k in ("heads", "ffn", "mha", "ffn_on", "source")}
    for old_i in range(cfg.num_hidden_layers):
        mha_on = cfg.mha_present[old_i] and _is_open(masks, "mha", old_i)
        ffn_on = cfg.ffn_present[old_i] and _is_open(masks, "ffn", old_i)
        if not (mha_on or ffn_on):
            continue  # the whole layer is gone
        src = f"tlprune.encoder.layers.{old_i}."
        dst = f"tlprune.encoder.layers.{len(layers['source'])}."
        n_heads = _copy_attention(s, masks, cfg, old_i, src, dst, hidden) if mha_on else 0
        n_units = _copy_ffn(s, masks, cfg, old_i, src, dst, hidden) if ffn_on else 0
        layers["heads"].append(n_heads)
        layers["ffn"].append(n_units)
        layers["mha"].append(mha_on)
        layers["ffn_on"].append(ffn_on)
        layers["source"].append(cfg.source_layers[old_i])

    # The head reads the (sliced) residual stream; its own widths stay.
    first = "classifier.dense" if "classifier.dense.weight" in s.old else "classifier.out_proj"
    s.copy(f"{first}.weight", d1=hidden)
    for key in s.old:
        if key.startswith("classifier.") and key not in s.new:
            s.copy(key)

    new_cfg = TlpruneConfig.from_dict(
        {
            **cfg.to_dict(),
            "hidden_size": int(hidden.numel()),
            "num_hidden_layers": len(layers["source"]),
            "heads_per_layer": layers["heads"],
            "ffn_per_layer": layers["ffn"],
            "mha_present": layers["mha"],
            "ffn_present": layers["ffn_on"],
            "source_layers": layers["source"],
        }
    )
    pruned = TlpruneForSequenceClassification(new_cfg)
    dtype = next(model.parameters()).dtype
    pruned.to(device=next(model.parameters()).device, dtype=dtype)
    pruned.load_state_dict(s.new, strict=True)
    return pruned.train(model.training)


def _numel(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_report(model: TlpruneForSequenceClassification) -> dict[str, Any]:
    """Parameter counts by kind and by layer, plus the prunable size (docs/method.md).

    `prunable` counts heads (4*d*d_h + 3*d_h each) and FFN units (2*d + 1 each) at the
    current hidden size d; b_O, b2, LayerNorms, embeddings and the head are reported beside it.
    """
    cfg = model.config
    d, dh = cfg.hidden_size, cfg.head_size
    layers = []
    for i, layer in enumerate(model.tlprune.encoder.layers):
        heads = cfg.heads_per_layer[i] if cfg.mha_present[i] else 0
        units = cfg.ffn_per_layer[i] if cfg.ffn_present[i] else 0
        layers.append(
            {
                "layer": i,
                "source_layer": cfg.source_layers[i],
                "mha_present": cfg.mha_present[i],
                "ffn_present": cfg.ffn_present[i],
                "heads": heads,
                "ffn_units": units,
                "mha_params": _numel(layer.attention) + _numel(layer.attention_norm),
                "ffn_params": _numel(layer.ffn) + _numel(layer.ffn_norm),
                "prunable": heads * (4 * d * dh + 3 * dh) + units * (2 * d + 1),
            }
        )
    embeddings = _numel(model.tlprune.embeddings)
    classifier = _numel(model.classifier)
    return {
        "total": _numel(model),
        "embeddings": embeddings,
        "encoder": sum(r["mha_params"] + r["ffn_params"] for r in layers),
        "classifier": classifier,
        "prunable": sum(r["prunable"] for r in layers),
        "hidden": d,
        "num_layers": cfg.num_hidden_layers,
        "heads": sum(r["heads"] for r in layers),
        "ffn_units": sum(r["ffn_units"] for r in layers),
        "layers": layers,
    }
