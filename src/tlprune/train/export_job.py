"""`tlprune export`: deployable variants of a saved pruned model, each its own directory.

- `--trim-vocab [SOURCE...]`: the word embeddings keep the tokens of the given texts (default:
  the run's target training texts and its unlabelled sources); a loadable PyTorch directory.
- `--onnx`: model.onnx beside it; `--int8`: model.int8.onnx, ONNX Runtime's dynamic int8
  quantization of the linear layers, and model.int8.pt, torch's (TorchScript, `torch.jit.load`).

`export_report.json` gives each file's size on disk, the fraction of the target's test tokens
that fell to [UNK], and each variant's test accuracy when the run's target is known.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tlprune.errors import DataError, ModelError, TlpruneError
from tlprune.paths import atomic_dir


@dataclass
class ExportResult:
    """Where the variant was written and what it measured."""

    out_dir: Path
    report: dict


def _run_data(model_dir: Path):
    """The DataConfig of the run that made `model_dir` (its config.yaml), or None."""
    from tlprune.config import DataConfig, from_dict

    path = model_dir / "config.yaml"
    if not path.is_file():
        return None
    data = (yaml.safe_load(path.read_text()) or {}).get("data")
    return from_dict(DataConfig, {**data, "budget": None}) if data else None


def _source_texts(spec: str, data) -> list[str]:
    """Texts of a trimming source: target-train, a .txt file, or a dataset's training texts."""
    from tlprune.config import DataConfig
    from tlprune.data.sources import load_task

    if spec == "target-train":
        if data is None:
            raise TlpruneError(
                "target-train needs the run's config.yaml beside the model: name a file or "
                "dataset instead"
            )
        return list(load_task(data).train["text"])
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"text file {path} not found: check --trim-vocab")
        return [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    return list(load_task(DataConfig(target=spec, budget=None)).train["text"])


def trimming_texts(sources: list[str], data, model_dir: Path) -> tuple[list[str], list[dict]]:
    """All texts of `sources` (default: target-train and the run's unlabelled sources), and
    a description of each source."""
    if not sources:
        if data is None:
            raise TlpruneError(
                f"{model_dir} has no config.yaml naming its target: give the texts to keep, "
                "e.g. --trim-vocab texts.txt"
            )
        sources = ["target-train", *data.unlabelled]
    texts, described = [], []
    for spec in sources:
        got = _source_texts(spec, data)
        texts += got
        described.append({"source": spec, "texts": len(got)})
    if not texts:
        raise DataError(f"the trimming sources {sources} hold no texts: give sources with text")
    return texts, described


def export(
    model_dir: str | Path,
    out: str | Path | None = None,
    *,
    onnx: bool = False,
    int8: bool = False,
    trim_vocab: list[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write the requested variant of `model_dir` to `out` (default: `<dir>-trim` when
    trimming, `<dir>-int8` for int8 alone; `model.onnx` inside `model_dir` for --onnx alone)."""
    from tlprune.surgery import export_module
    from tlprune.surgery.save import load

    model_dir = Path(model_dir)
    if not (onnx or int8 or trim_vocab is not None):
        raise TlpruneError("choose what to export: --onnx, --int8 and/or --trim-vocab")
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} has no config.json: give a saved model directory")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "vocab.txt").is_file():
        raise ModelError(f"{model_dir} has no tokenizer: export needs the directory a run saved")
    if int8:
        _need_onnxruntime()
    model, tokenizer = load(model_dir)
    data = _run_data(model_dir)
    if trim_vocab is None and not int8:  # the plain ONNX export, in place
        path = export_module(model, model_dir / "model.onnx")
        return ExportResult(model_dir, {"files": {path.name: path.stat().st_size}})
    suffix = "trim" if trim_vocab is not None else "int8"
    out = Path(out) if out else model_dir.with_name(f"{model_dir.name}-{suffix}")
    report: dict[str, Any] = {"from": str(model_dir)}
    kept = None
    if trim_vocab is not None:
        texts, report["trim_sources"] = trimming_texts(trim_vocab, data, model_dir)
        from tlprune.surgery.trim_vocab import kept_token_ids

        kept = kept_token_ids(tokenizer, texts)
        report["vocab"] = {"before": model.config.vocab_size, "after": len(kept)}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _write_variant(model, tokenizer, model_dir, tmp, kept, onnx, int8)
        report.update(_measure(tmp, data, tokenizer, kept, onnx, int8))
        (tmp / "export_report.json").write_text(json.dumps(report, indent=2))
    return ExportResult(out, report)


def _need_onnxruntime() -> None:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise TlpruneError("--int8 needs ONNX Runtime: pip install 'tlprune[onnx]'")


def _write_variant(model, tokenizer, model_dir: Path, tmp: Path, kept, onnx, int8) -> None:
    from tlprune.surgery import export_module, save_pruned
    from tlprune.surgery.trim_vocab import trim_directory, trim_model

    for name in ("README.md", "config.yaml", "prune_report.json"):  # the run's own record
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, tmp / name)
    if kept is not None:
        trim_model(model, kept)
    save_pruned(model, tokenizer, tmp / "_model")
    for f in (tmp / "_model").iterdir():
        f.replace(tmp / f.name)
    (tmp / "_model").rmdir()
    if kept is not None:
        trim_directory(model_dir, tmp, kept)
    if onnx or int8:
        export_module(model, tmp / "model.onnx")
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from tlprune.surgery.torch_int8 import save_int8

        quantize_dynamic(tmp / "model.onnx", tmp / "model.int8.onnx", weight_type=QuantType.QInt8)
        if not onnx:
            (tmp / "model.onnx").unlink()
        save_int8(model, tmp / "model.int8.pt")


def _measure(tmp: Path, data, tokenizer, kept, onnx, int8) -> dict:
    """Sizes on disk; with the run's target: [UNK] rate of its test tokens and test accuracy."""
    out: dict[str, Any] = {
        "files": {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
    }
    if data is None:
        return out
    from tlprune.data.sources import load_task
    from tlprune.surgery.save import load

    task = load_task(data)
    texts, labels = list(task.test["text"]), np.asarray(task.test["label"])
    if kept is not None:
        from tlprune.surgery.trim_vocab import unk_fraction

        out["test_unk_fraction"] = unk_fraction(tokenizer, texts, kept)
    model, tok = load(tmp)
    accuracy = {"model.safetensors": _accuracy(_torch_logits(model, tok, texts, task), labels)}
    for name in ("model.onnx", "model.int8.onnx"):
        if (tmp / name).is_file():
            accuracy[name] = _accuracy(_ort_logits(tmp / name, tok, texts, task), labels)
    if (tmp / "model.int8.pt").is_file():
        logits = _jit_logits(tmp / "model.int8.pt", model, tok, texts, task)
        accuracy["model.int8.pt"] = _accuracy(logits, labels)
    out["test_accuracy"] = accuracy
    out["target"] = task.name
    return out


def _batches(tok, texts, task, size=128):
    for i in range(0, len(texts), size):
        yield tok(texts[i : i + size], truncation=True, max_length=task.max_length,
                  padding=True, return_tensors="np")  # fmt: skip


def _torch_logits(model, tok, texts, task) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for b in _batches(tok, texts, task):
            out.append(model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy())
    return np.concatenate(out)


def _jit_logits(path: Path, model, tok, texts, task) -> np.ndarray:
    import torch

    from tlprune.surgery.torch_int8 import with_token_types

    traced = torch.jit.load(str(path))
    names = ["input_ids", "attention_mask"] + (
        ["token_type_ids"] if with_token_types(model) else []
    )
    out = []
    with torch.no_grad():
        for b in _batches(tok, texts, task):
            args = [
                torch.from_numpy(b[n])
                if n in b
                else torch.zeros_like(torch.from_numpy(b["input_ids"]))
                for n in names
            ]
            out.append(traced(*args).numpy())
    return np.concatenate(out)


def _ort_logits(path: Path, tok, texts, task) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = []
    for b in _batches(tok, texts, task):
        feed = {k: v.astype(np.int64) for k, v in b.items() if k in names}
        out.append(session.run(None, feed)[0])
    return np.concatenate(out)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())
