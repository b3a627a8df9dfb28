"""Export a saved Tlprune model directory to ONNX (TorchScript exporter, dynamic batch/sequence)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tlprune.surgery.save import load

DEFAULT_OPSET = 17


class _LogitsOnly(nn.Module):
    """Positional inputs in, logits out: the signature the exporter traces."""

    def __init__(self, model: nn.Module, with_token_types: bool):
        super().__init__()
        self.model, self.with_token_types = model, with_token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if not self.with_token_types:
            token_type_ids = None
        return self.model(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits


def export_onnx(model_dir: str | Path, out_path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write `out_path` (.onnx) with inputs input_ids, attention_mask[, token_type_ids] (int64,
    [batch, sequence]) and output logits [batch, num_labels]; returns the path."""
    model, _ = load(model_dir)
    return export_module(model, out_path, opset)


def export_module(model: nn.Module, out_path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export any loaded sequence classifier (tlprune or a dense HF BERT/RoBERTa) like
    `export_onnx`; the benchmark uses it for the dense side."""
    with_types = getattr(model.config, "type_vocab_size", 0) > 0
    wrapper = _LogitsOnly(model, with_types).eval()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    # A dummy batch: no padding token, so RoBERTa-style positions are traced on real ids.
    token = ((model.config.pad_token_id or 0) + 1) % model.config.vocab_size
    ids = torch.full((2, 8), token, dtype=torch.long)
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if with_types else ())
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            args,
            str(tmp),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    tmp.replace(out_path)
    return out_path
