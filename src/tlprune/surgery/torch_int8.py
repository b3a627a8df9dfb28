"""PyTorch's dynamic int8 quantization of the linear layers, saved as TorchScript.

torch's own quantizer (`torch.ao.quantization.quantize_dynamic`): weights in int8, activations
quantized per batch at run time. A quantized module has no safetensors form that
`from_pretrained` reads, so the variant is a traced TorchScript file, `model.int8.pt`, which
`torch.jit.load` runs with torch alone: inputs input_ids, attention_mask[, token_type_ids]
(int64 [batch, sequence]), output the logits.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from tlprune.surgery.onnx import _LogitsOnly


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear dynamically quantized to int8 (CPU)."""
    import copy

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch points eager quantization users to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def with_token_types(model: nn.Module) -> bool:
    return getattr(model.config, "type_vocab_size", 0) > 0


def trace_logits(model: nn.Module) -> torch.jit.ScriptModule:
    """`model` traced with positional inputs and logits out (dynamic batch and sequence)."""
    types = with_token_types(model)
    wrapper = _LogitsOnly(model, types).eval()
    token = ((model.config.pad_token_id or 0) + 1) % model.config.vocab_size
    ids = torch.full((2, 8), token, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row, so the traced graph handles padding
    args = (ids, mask) + ((torch.zeros_like(ids),) if types else ())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        return torch.jit.trace(wrapper, args, strict=False, check_trace=False)


def save_int8(model: nn.Module, path: str | Path) -> Path:
    """Quantize `model`, trace it and write it to `path` atomically; returns the path."""
    path = Path(path)
    traced = trace_logits(quantize_int8(model))
    tmp = path.with_name(f".{path.name}.tmp")
    torch.jit.save(traced, str(tmp))
    tmp.replace(path)
    return path
