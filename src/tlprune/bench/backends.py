"""Inference backends for the benchmark: each turns a model into a `run(inputs)` callable.

A backend that cannot run here (no compiler for torch.compile, onnxruntime not installed)
raises `BackendUnavailable` with the reason; the benchmark reports it and goes on. Each runner
carries `size_bytes`: what the model takes on disk in that backend's format.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tlprune.registry import Registry

Runner = Callable[[dict[str, torch.Tensor]], Any]


class BackendUnavailable(RuntimeError):
    """This backend cannot run on this machine; the message says why."""


def _safetensors_bytes(model: torch.nn.Module) -> int:
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(model, str(path))
        return path.stat().st_size


def eager(model: torch.nn.Module, threads: int) -> Runner:
    model.eval()

    @torch.inference_mode()
    def run(inputs):
        return model(**inputs).logits

    run.size_bytes = _safetensors_bytes(model)
    return run


def torch_int8(model: torch.nn.Module, threads: int) -> Runner:
    """torch's dynamic int8 quantization of the linear layers, traced (the model.int8.pt that
    `tlprune export --int8` writes)."""
    from tlprune.surgery.torch_int8 import save_int8

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = save_int8(model.eval(), Path(tmp) / "model.int8.pt")
        except Exception as exc:  # no quantized engine on this CPU
            raise BackendUnavailable(
                f"int8 quantization failed: {str(exc).splitlines()[0]}"
            ) from None
        traced = torch.jit.load(str(path))
        size = path.stat().st_size
    types = getattr(model.config, "type_vocab_size", 0) > 0

    @torch.inference_mode()
    def run(inputs):
        args = [inputs["input_ids"], inputs["attention_mask"]]
        if types:
            args.append(inputs.get("token_type_ids", torch.zeros_like(inputs["input_ids"])))
        return traced(*args)

    run.size_bytes = size
    return run


def compiled(model: torch.nn.Module, threads: int) -> Runner:
    model.eval()
    try:
        fn = torch.compile(model, dynamic=False)
    except Exception as exc:
        raise BackendUnavailable(f"torch.compile failed: {str(exc).splitlines()[0]}") from None

    @torch.inference_mode()
    def run(inputs):
        return fn(**inputs).logits

    run.size_bytes = _safetensors_bytes(model)
    return run


def onnxruntime(model: torch.nn.Module, threads: int) -> Runner:
    return _ort(model, threads, int8=False)


def onnxruntime_int8(model: torch.nn.Module, threads: int) -> Runner:
    """ONNX Runtime after its dynamic int8 quantization: what users deploy on CPU today."""
    return _ort(model, threads, int8=True)


def _ort(model: torch.nn.Module, threads: int, int8: bool) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed (pip install 'tlprune[onnx]')"
        ) from None
    from tlprune.surgery.onnx import export_module

    with tempfile.TemporaryDirectory() as tmp:
        path = export_module(model.eval(), Path(tmp) / "model.onnx")
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(path, Path(tmp) / "model.int8.onnx", weight_type=QuantType.QInt8)
            path = Path(tmp) / "model.int8.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        size = path.stat().st_size
    names = {i.name for i in session.get_inputs()}

    def run(inputs):
        feed = {k: v.numpy() for k, v in inputs.items() if k in names}
        if "token_type_ids" in names and "token_type_ids" not in feed:
            feed["token_type_ids"] = torch.zeros_like(inputs["input_ids"]).numpy()
        return session.run(None, feed)[0]

    run.size_bytes = size
    return run


BACKENDS: Registry[Callable[[Any, int], Runner]] = Registry("bench backend")
for _name, _make in (
    ("eager", eager),
    ("compile", compiled),
    ("onnxruntime", onnxruntime),
    ("onnxruntime-int8", onnxruntime_int8),
    ("torch-int8", torch_int8),
):
    BACKENDS.register(_name, _make)
