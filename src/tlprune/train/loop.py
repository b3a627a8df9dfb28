"""Supervised fine-tuning on the training engine: a classifier objective and dev-loss
selection of the best state."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlprune.config import TrainConfig
from tlprune.train.agreement import Heldout, selection_score
from tlprune.train.checkpoint import Progress
from tlprune.train.engine import Mechanics, Step, epochs, run_loop
from tlprune.train.evaluate import evaluate
from tlprune.transfer.adapt import backward_adapted


@dataclass
class Candidate:
    """The best state so far under one selection rule."""

    rule: str
    score: float = math.inf
    step: int = 0
    dev: dict | None = None
    probe: dict | None = None
    state: dict | None = None
    branch: dict | None = None


@dataclass
class LoopResult:
    best_dev: dict
    best_step: int
    steps: int
    seconds: float
    # with held-out selection: every rule's best (step, dev, probe, state), the kept one too
    candidates: dict[str, Candidate] = field(default_factory=dict)


def set_trainable(model: Any, freeze: list[str]) -> None:
    """Make every parameter trainable, then freeze the named parts: each phase states its own."""
    for p in model.parameters():
        p.requires_grad_(True)
    emb = model.base_model.embeddings
    for part in freeze:
        module = emb if part == "embeddings" else emb.word_embeddings
        for p in module.parameters():
            p.requires_grad_(False)


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


class ClassifierObjective:
    """Cross-entropy of a classifier, plus an extra term (distillation on unlabelled texts) or
    an auxiliary branch's terms (a dense warm phase with transfer)."""

    def __init__(self, model, accelerator, desc: str, branch=None, extra_loss=None):
        self.module, self.accelerator, self.desc = model, accelerator, desc
        self.branch, self.extra_loss = branch, extra_loss

    def __call__(self, batch: Any, step: int) -> Step:
        loss = task = self.module(**batch).loss
        out = Step(loss, task=task)
        if self.extra_loss is not None:  # the labelled loss is logged alone, parts beside
            extra, out.parts = self.extra_loss(self.module)
            out.loss = task + extra
        if self.branch is not None:  # the target's loss is logged alone, parts beside
            with self.accelerator.autocast():
                extra, out.parts = self.branch(step, None, self.accelerator.device)
            out.loss = task + extra
            out.aux_term, self.branch.task_term = self.branch.task_term, None
            if out.aux_term is not None:  # transfer.adapt; dense: the graphs share leaves only
                out.backward = self._adapted(out)
        out.task = task.detach()
        return out

    def _adapted(self, out: Step):
        def backward() -> dict[str, Any]:
            shared = self.branch.shared_weights()
            main, aux = out.loss, out.aux_term
            cos = backward_adapted(self.accelerator, main, aux, shared, retain=False)
            return {"aux/cosine": cos}

        return backward

    def after_update(self, step: int, synced: bool) -> None:
        pass

    def log_row(self, step: int, out: Step) -> dict[str, Any]:
        aux = {k: float(v) for k, v in out.parts.items()}
        return {"phase": self.desc, "step": step, "loss": out.task.item(), **aux}

    def postfix(self, out: Step) -> dict[str, str]:
        return {"loss": f"{out.task.item():.4f}"}


class DevSelection:
    """Evaluate dev every `every` steps and at the end; keep the best state (and the branch's
    heads with it) under each rule: `dev_loss`, and with `heldout` (agreement with the teacher
    on held-out texts, train/agreement.py) also `agreement`; heldout.rule is the one restored."""

    def __init__(
        self, model, dev_loader, num_labels, accelerator, every, steps, desc, branch,
        heldout: Heldout | None = None,
    ):  # fmt: skip
        self.model, self.dev_loader, self.num_labels = model, dev_loader, num_labels
        self.accelerator, self.every, self.steps, self.desc = accelerator, every, steps, desc
        self.branch = branch
        self.probe = heldout.probe if heldout else None
        self.rule = heldout.rule if heldout else "dev_loss"
        rules = ["dev_loss"] + (["agreement"] if heldout else [])
        self.candidates = {r: Candidate(r) for r in rules}

    @property
    def chosen(self) -> Candidate:
        return self.candidates[self.rule]

    def __call__(self, progress: Progress, out: Step, log: Any) -> None:
        step = progress.step
        if step % self.every and step != self.steps:
            return
        dev = evaluate(self.model, self.dev_loader, self.num_labels, self.accelerator)
        probe = self.probe(self.accelerator.unwrap_model(self.model)) if self.probe else None
        self.model.train()
        log.write({"phase": self.desc, "step": step, "dev": dev,
                   **({"heldout": probe} if probe else {})})  # fmt: skip
        state = None
        for c in self.candidates.values():
            score = selection_score(c.rule, dev, probe)
            if c.dev is not None and not score < c.score:  # as before: a NaN never wins
                continue
            if state is None:  # one copy serves every rule that improved at this step
                model_state = self.accelerator.unwrap_model(self.model).state_dict()
                state = {k: v.detach().cpu().clone() for k, v in model_state.items()}
            c.score, c.step, c.dev, c.probe, c.state = score, step, dev, probe, state
            if self.branch is not None:
                c.branch = self.branch.carried_state(streams=False)

    def restore(self) -> None:
        """The model (and the branch's heads) back at the chosen rule's best step; the
        branch's streams go on from where they are."""
        best = self.chosen
        assert best.dev is not None and best.state is not None
        self.accelerator.unwrap_model(self.model).load_state_dict(best.state)
        if self.branch is not None and best.branch is not None:
            self.branch.load_carried(best.branch)


def train_classifier(
    model: Any,
    train_loader: Any,
    dev_loader: Any,
    cfg: TrainConfig,
    accelerator: Any,
    log_path: Path | None = None,
    desc: str = "fine-tune",
    branch: Any = None,
    extra_loss: Any = None,
    heldout: Heldout | None = None,
) -> LoopResult:
    """Train with AdamW (constant lr after optional linear warm-up), evaluate dev at each epoch
    (or every `cfg.eval_every` steps), and leave the model at its lowest-dev-loss state.
    `branch`: an auxiliary branch (transfer/branch.py) whose terms join the loss each step;
    its heads and own weights return to the best step with the model. `extra_loss(model)`:
    (a term added to the loss, logged parts), e.g. distillation on unlabelled texts. `heldout`:
    agreement with a teacher on held-out texts, a second selection rule, and the rule kept.
    Logged losses are those of the last micro-batch of a step; the label count is the model's."""
    from transformers import get_scheduler

    if branch is not None and extra_loss is not None:
        raise ValueError("train_classifier takes an auxiliary branch or an extra loss, not both")
    set_trainable(model, cfg.freeze)
    accelerator.gradient_accumulation_steps = cfg.grad_accum
    params = [p for p in model.parameters() if p.requires_grad]
    clip_groups = [params]
    if branch is not None:
        set_trainable(branch.encoder, cfg.freeze)
        branch.to(accelerator.device).train()
        clip_groups = branch.clip_groups(params)
        params = [p for group in clip_groups for p in group]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer, train_loader, dev_loader = accelerator.prepare(
        model, optimizer, train_loader, dev_loader
    )
    steps = total_steps(cfg, len(train_loader))  # per process, after sharding
    if branch is not None:
        branch.bind_warm(steps)
    scheduler = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps)
    )
    eval_every = cfg.eval_every or max(1, len(train_loader) // cfg.grad_accum)
    objective = ClassifierObjective(model, accelerator, desc, branch, extra_loss)
    mechanics = Mechanics(
        [optimizer],
        clip_groups,
        cfg.grad_clip,
        scheduler,
        nonfinite="training loss became {value} at step {step}: lower train.lr or check the "
        "data for broken labels",
    )
    num_labels = accelerator.unwrap_model(model).config.num_labels
    select = DevSelection(
        model, dev_loader, num_labels, accelerator, eval_every, steps, desc, branch, heldout
    )
    progress = Progress()
    start = time.perf_counter()
    batches = epochs(train_loader, progress, on_epoch=model.train)
    run_loop(accelerator, objective, mechanics, batches, steps, progress, desc, log_path, [select])
    select.restore()
    return LoopResult(
        best_dev=copy.deepcopy(select.chosen.dev),
        best_step=select.chosen.step,
        steps=progress.step,
        seconds=time.perf_counter() - start,
        candidates=select.candidates if heldout else {},  # states outlive the loop only here
    )
