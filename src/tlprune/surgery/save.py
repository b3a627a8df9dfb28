"""Save a (pruned) Tlprune model as a self-contained Hugging Face directory, and load it back.

The directory holds config.json (with `auto_map`), model.safetensors (float32), the tokenizer
and `modeling_tlprune.py`, so that `AutoModelForSequenceClassification.from_pretrained(dir,
trust_remote_code=True)` and `pipeline("text-classification", model=dir,
trust_remote_code=True)` work without tlprune installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tlprune.errors import ModelError
from tlprune.modeling import TlpruneForSequenceClassification
from tlprune.modeling import modeling_tlprune as _modeling
from tlprune.paths import atomic_dir

MODELING_FILE = "modeling_tlprune.py"
AUTO_MAP = {
    "AutoConfig": "modeling_tlprune.TlpruneConfig",
    "AutoModel": "modeling_tlprune.TlpruneModel",
    "AutoModelForSequenceClassification": "modeling_tlprune.TlpruneForSequenceClassification",
}


def save_pruned(
    model: TlpruneForSequenceClassification,
    tokenizer,
    out_dir: str | Path,
    extra_files: dict[str, str] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write `model` (as float32), `tokenizer` and the modelling file to `out_dir` atomically.

    `extra_files` maps file names (relative to `out_dir`) to text content, e.g. a README.md
    model card or the resolved run config. Returns the directory.
    """
    if not isinstance(model, TlpruneForSequenceClassification):
        raise TypeError(f"save_pruned needs a TlpruneForSequenceClassification, got {type(model)}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        dtype = next(model.parameters()).dtype
        model.config.auto_map = dict(AUTO_MAP)
        try:
            model.float().save_pretrained(tmp)
        finally:
            model.to(dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.copyfile(_modeling.__file__, tmp / MODELING_FILE)
        for name, text in (extra_files or {}).items():
            target = (tmp / name).resolve()
            if tmp.resolve() not in target.parents:
                raise ValueError(f"extra file {name!r} would be written outside {out_dir}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    return out_dir


def load(model_dir: str | Path):
    """(model, tokenizer) from a directory written by `save_pruned`; the model in float32, eval.

    The tokenizer is None when the directory has none.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"{model_dir} is not a saved tlprune model (no config.json)")
    try:
        model = TlpruneForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a tlprune model from {model_dir}: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        tokenizer = None
    return model.eval(), tokenizer


def load_any(model_dir: Path):
    """(model, tokenizer) for a tlprune directory or a plain HF classifier directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{model_dir} has no config.json: give a saved model directory")
    if json.loads(cfg_path.read_text()).get("model_type") == "tlprune":
        return load(model_dir)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {model_dir}: {str(exc).splitlines()[0]}") from None
    return model, tokenizer
