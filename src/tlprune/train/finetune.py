"""The fine-tune job: a dense model trained on a budget, selected on dev, tested once."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from tlprune.config import RunConfig, TrainConfig, save_config
from tlprune.data.collate import ClassificationCollator, truncated_fraction
from tlprune.data.metrics import classification_metrics
from tlprune.data.sources import TaskData, load_task
from tlprune.data.split import Budget, draw_budget
from tlprune.errors import TlpruneError
from tlprune.models import load_classifier, load_tokenizer, resolve_model
from tlprune.paths import atomic_dir
from tlprune.train.evaluate import predict, save_predictions
from tlprune.train.loop import train_classifier
from tlprune.train.result import RunResult

SMOKE_STEPS = 2
SMOKE_TEST = 64


def check_out_path(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty previous run unless --overwrite (changes nothing)."""
    if out.exists() and not out.is_dir():
        raise TlpruneError(f"--out {out} is a file, not a directory: choose another path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TlpruneError(
            f"output directory {out} already exists and is not empty: "
            "choose another --out or pass --overwrite"
        )


def check_out_dir(cfg: RunConfig) -> Path | None:
    """The run's output directory, checked; None when the run saves nothing."""
    if cfg.out is None:
        return None
    out = Path(cfg.out).expanduser()
    check_out_path(out, cfg.overwrite)
    return out


def smoke_train(cfg: TrainConfig) -> TrainConfig:
    return dataclasses.replace(cfg, max_steps=SMOKE_STEPS, eval_every=SMOKE_STEPS)


def make_loaders(task: TaskData, budget: Budget, tokenizer: Any, cfg: RunConfig, smoke: bool):
    """Train (shuffled, seeded), dev and test dataloaders over the budget and the test split."""
    from torch.utils.data import DataLoader

    collate = ClassificationCollator(tokenizer, task.max_length)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = task.train.select(budget.train)
    dev = task.train.select(budget.dev)
    test = task.test.select(range(min(SMOKE_TEST, len(task.test)))) if smoke else task.test
    bs, ebs = cfg.train.batch_size, cfg.train.eval_batch_size
    return (
        DataLoader(train, batch_size=bs, shuffle=True, generator=gen, collate_fn=collate),
        DataLoader(dev, batch_size=ebs, collate_fn=collate),
        DataLoader(test, batch_size=ebs, collate_fn=collate),
    )


def run_finetune(cfg: RunConfig) -> RunResult:
    """Fine-tune `cfg.model` on `cfg.data` within the budget; evaluate the dev-selected model
    on the untouched test split; save it with its config and metrics when `cfg.out` is set."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.perf_counter()
    if cfg.distill.agreement_texts:
        raise TlpruneError(
            "distill.agreement_texts selects the fisher presets' final fine-tune on held-out "
            "unlabelled texts: leave it out here (a dense fine-tune selects on dev loss)"
        )
    out = check_out_dir(cfg)
    resolve_model(cfg.model.name)  # fail on a bad name before any data work
    task = load_task(cfg.data)
    budget = draw_budget(
        task.train["label"], cfg.data.budget, cfg.seed, cfg.data.dev_fraction, task.num_labels
    )
    train_cfg = smoke_train(cfg.train) if cfg.smoke else cfg.train
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.name)
    model = load_classifier(cfg.model.name, task.label_names)
    accelerator = Accelerator(
        mixed_precision=train_cfg.mixed_precision, gradient_accumulation_steps=train_cfg.grad_accum
    )
    train_dl, dev_dl, test_dl = make_loaders(task, budget, tokenizer, cfg, cfg.smoke)

    with _output(out, cfg.overwrite, accelerator.is_main_process) as tmp:
        log_path = tmp / "log.jsonl" if tmp else None
        loop = train_classifier(model, train_dl, dev_dl, train_cfg, accelerator, log_path)
        model = accelerator.unwrap_model(model)
        test_dl = accelerator.prepare(test_dl)
        logits, labels = predict(model, test_dl, accelerator, desc="test")
        test = classification_metrics(logits, labels, task.num_labels)
        metrics = {
            "method": "finetune",
            "model": cfg.model.name,
            "target": task.name,
            "source": task.source,
            "labels": task.label_names,
            "seed": cfg.seed,
            "budget": {"size": budget.size, "train": len(budget.train), "dev": len(budget.dev)},
            "max_length": task.max_length,
            "truncated_fraction": {
                "train": truncated_fraction(
                    tokenizer, task.train.select(budget.train), task.max_length
                ),
                "test": truncated_fraction(tokenizer, task.test, task.max_length),
            },
            "dev": loop.best_dev,
            "test": test,
            "best_step": loop.best_step,
            "steps": loop.steps,
            "train_seconds": round(loop.seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
            "smoke": cfg.smoke,
            "notes": task.notes,
        }
        if tmp is not None:
            _save(tmp, model, tokenizer, cfg, metrics, logits, labels, budget)
    return RunResult(model=model, tokenizer=tokenizer, report=metrics, out_dir=out)


class _output:
    """Context manager: a temporary run directory renamed to `out` only on success."""

    def __init__(self, out: Path | None, overwrite: bool, main: bool):
        self._cm = atomic_dir(out, overwrite=overwrite) if out and main else None

    def __enter__(self) -> Path | None:
        return self._cm.__enter__() if self._cm else None

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc) if self._cm else None


def _save(tmp: Path, model, tokenizer, cfg: RunConfig, metrics: dict, logits, labels, budget):
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_config(cfg, tmp / "config.yaml")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_predictions(tmp / "predictions.npz", logits, labels, budget)
