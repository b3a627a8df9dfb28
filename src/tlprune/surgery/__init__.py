"""Masks -> a smaller model, save/load of the self-contained directory, ONNX export."""

from tlprune.surgery.onnx import export_module, export_onnx
from tlprune.surgery.prune import param_report, prune_model
from tlprune.surgery.save import load, load_any, save_pruned

__all__ = [
    "export_module",
    "export_onnx",
    "load",
    "load_any",
    "param_report",
    "prune_model",
    "save_pruned",
]
