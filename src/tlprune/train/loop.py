"""A plain supervised training loop on Accelerate with dev-loss checkpoint selection."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlprune.config import TrainConfig
from tlprune.errors import TlpruneError
from tlprune.train.evaluate import evaluate
from tlprune.train.kill_hook import kill_if_asked
from tlprune.train.metrics_log import MetricsLog
from tlprune.transfer.adapt import backward_adapted


@dataclass
class LoopResult:
    best_dev: dict
    best_step: int
    steps: int
    seconds: float


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


def train_classifier(
    model: Any,
    train_loader: Any,
    dev_loader: Any,
    cfg: TrainConfig,
    num_labels: int,
    accelerator: Any,
    log_path: Path | None = None,
    desc: str = "fine-tune",
    branch: Any = None,
    extra_loss: Any = None,
) -> LoopResult:
    """Train with AdamW (constant lr after optional linear warm-up), evaluate dev at each epoch
    (or every `cfg.eval_every` steps), and leave the model at its lowest-dev-loss state.
    `branch`: an auxiliary branch (transfer/branch.py) whose terms join the loss each step;
    its heads and own weights return to the best step with the model. `extra_loss(model)`:
    (a term added to the loss, logged parts), e.g. distillation on unlabelled texts. Logged
    losses are those of the last micro-batch of a step."""
    from tqdm.auto import tqdm
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
    best: dict | None = None
    best_state: dict | None = None
    best_step = 0
    branch_best: dict | None = None
    step = 0
    start = time.perf_counter()
    log = MetricsLog(log_path, accelerator)
    bar = tqdm(total=steps, desc=desc, disable=not accelerator.is_local_main_process)
    try:
        while step < steps:
            model.train()
            for batch in train_loader:
                with accelerator.accumulate(model):
                    loss = task_loss = model(**batch).loss
                    parts: dict[str, Any] = {}
                    aux_term = None
                    if extra_loss is not None:  # the labelled loss is logged alone, parts beside
                        extra, parts = extra_loss(model)
                        loss = task_loss + extra
                    if branch is not None:  # the target's loss is logged alone, parts beside
                        with accelerator.autocast():
                            extra, parts = branch(step, None, accelerator.device)
                        loss = task_loss + extra
                        aux_term, branch.task_term = branch.task_term, None
                    total = loss if aux_term is None else loss + aux_term.detach()
                    if not torch.isfinite(total):
                        raise TlpruneError(
                            f"training loss became {total.item()} at step {step}: lower train.lr "
                            "or check the data for broken labels"
                        )
                    if aux_term is not None:  # transfer.adapt; dense: the graphs share leaves only
                        shared = branch.shared_weights()
                        cos = backward_adapted(accelerator, loss, aux_term, shared, retain=False)
                        parts = {**parts, "aux/cosine": cos}
                    else:
                        accelerator.backward(loss)
                    task_loss = task_loss.detach()
                    del loss, total, aux_term
                    if accelerator.sync_gradients and cfg.grad_clip:
                        for group in clip_groups:
                            accelerator.clip_grad_norm_(group, cfg.grad_clip)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{task_loss.item():.4f}")
                aux = {k: float(v) for k, v in parts.items()}
                log.write({"phase": desc, "step": step, "loss": task_loss.item(), **aux})
                kill_if_asked(desc, step)
                if step % eval_every == 0 or step == steps:
                    dev = evaluate(model, dev_loader, num_labels, accelerator)
                    model.train()
                    log.write({"phase": desc, "step": step, "dev": dev})
                    if best is None or dev["loss"] < best["loss"]:
                        best, best_step = dev, step
                        state = accelerator.unwrap_model(model).state_dict()
                        best_state = {k: v.detach().cpu().clone() for k, v in state.items()}
                        if branch is not None:
                            branch_best = branch.carried_state(streams=False)
                if step >= steps:
                    break
    finally:
        bar.close()
        log.close()
    assert best is not None and best_state is not None
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.load_state_dict(best_state)
    if branch is not None and branch_best is not None:  # heads back to the best step too;
        branch.load_carried(branch_best)  # the streams go on from where they are
    return LoopResult(
        best_dev=copy.deepcopy(best),
        best_step=best_step,
        steps=step,
        seconds=time.perf_counter() - start,
    )
