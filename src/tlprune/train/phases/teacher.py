"""Teacher phase: the dense model distillation reads, given (`distill.teacher`) or fine-tuned
here on the budget and kept in the work directory, so a resumed run reuses it."""

from __future__ import annotations

import time
from pathlib import Path

from tlprune.errors import TlpruneError
from tlprune.models import load_classifier
from tlprune.train.loop import train_classifier
from tlprune.train.phases.state import PruneRun, save_main


def load_teacher(path: Path, label_names: list[str]):
    """The distillation teacher, checked against the task's labels."""
    from transformers import AutoModelForSequenceClassification

    try:
        teacher = AutoModelForSequenceClassification.from_pretrained(path).eval()
    except (OSError, ValueError) as exc:
        raise TlpruneError(f"cannot load the teacher {path}: {str(exc).splitlines()[0]}") from None
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if names != list(label_names):
        raise TlpruneError(
            f"the teacher {path} predicts {names}, the task has {list(label_names)}: "
            "give a teacher fine-tuned on this task"
        )
    return teacher


def teacher_phase(run: PruneRun) -> None:
    cfg = run.cfg
    if not cfg.distill.enabled:
        return
    t0 = time.perf_counter()
    tdir = Path(cfg.distill.teacher) if cfg.distill.teacher else run.work / "teacher"
    if not (tdir / "config.json").is_file():
        if cfg.distill.teacher:
            raise TlpruneError(f"teacher {tdir} has no config.json: give a model directory")
        dense = load_classifier(cfg.model.name, run.task.label_names)
        train_dl, dev_dl, _ = run.loaders(1, cfg.train)
        acc = run.accelerator
        train_classifier(dense, train_dl, dev_dl, cfg.train, acc, run.log_path, "teacher")
        save_main(acc, acc.unwrap_model(dense), tdir)
        acc.free_memory()
    run.teacher = load_teacher(tdir, run.task.label_names)
    run.seconds["teacher"] = time.perf_counter() - t0
