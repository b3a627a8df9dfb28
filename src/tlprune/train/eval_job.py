"""Evaluate any saved model directory (dense HF or pruned tlprune) on a target's test split."""

from __future__ import annotations

from pathlib import Path

from tlprune.config import DataConfig
from tlprune.data.collate import ClassificationCollator
from tlprune.data.metrics import classification_metrics
from tlprune.data.sources import load_task
from tlprune.errors import ModelError
from tlprune.surgery.save import load_any
from tlprune.train.evaluate import predict


def run_eval(model_dir: str | Path, data: DataConfig, batch_size: int = 128) -> dict:
    """Accuracy, macro-F1 and loss of the model in `model_dir` on the test split of `data`."""
    from torch.utils.data import DataLoader

    model_dir = Path(model_dir)
    model, tokenizer = load_any(model_dir)
    task = load_task(data)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if names != task.label_names:
        raise ModelError(
            f"the model's labels {names} differ from {task.name}'s {task.label_names}: "
            "evaluate on the task it was trained for"
        )
    loader = DataLoader(
        task.test,
        batch_size=batch_size,
        collate_fn=ClassificationCollator(tokenizer, task.max_length),
    )
    logits, labels = predict(model, loader, desc="test")
    return {
        "model": str(model_dir),
        "target": task.name,
        **classification_metrics(logits, labels, task.num_labels),
    }
