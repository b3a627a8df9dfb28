"""The one training loop: every phase (fine-tune, prune, auxiliary stage) is an objective and a
few hooks over these mechanics.

Per micro-batch: the objective's loss inside Accelerate's accumulation context, a non-finite
check, backward (or the objective's own, for `transfer.adapt`), clipping and optimizer steps
when the gradients sync, then the objective's after-update (gate clamps, projections). Per
optimizer step: progress, bar, the objective's log row, then the hooks in order (dev
selection, checkpoints, callbacks) and the kill hook tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tlprune.errors import TlpruneError
from tlprune.train.checkpoint import Progress
from tlprune.train.kill_hook import kill_if_asked
from tlprune.train.metrics_log import MetricsLog


@dataclass
class Step:
    """What an objective returns for one micro-batch."""

    loss: torch.Tensor  # what backward sees
    parts: dict[str, Any] = field(default_factory=dict)  # logged beside (detached)
    task: torch.Tensor | None = None  # the labelled loss, logged alone
    # transfer.adapt: the auxiliary term that comes apart, and the backward that scales it
    aux_term: torch.Tensor | None = None
    backward: Callable[[], dict[str, Any]] | None = None


class Objective(Protocol):
    """A phase's loss and bookkeeping; `module` is what the accumulation context wraps."""

    module: Any

    def __call__(self, batch: Any, step: int) -> Step: ...

    def after_update(self, step: int, synced: bool) -> None: ...

    def log_row(self, step: int, out: Step) -> dict[str, Any]: ...

    def postfix(self, out: Step) -> dict[str, str]: ...


@dataclass
class Mechanics:
    """What every phase's optimizer step does the same way."""

    optimizers: list[torch.optim.Optimizer]
    clip_groups: list[list[torch.Tensor]]
    grad_clip: float | None
    scheduler: Any = None
    nonfinite: str = "loss became {value} at step {step}"  # completed to a one-line fix
    # parameters outside the prepared (DDP) module whose gradients several processes average
    # here: the auxiliary branch of the auxiliary stage
    sync: list[torch.Tensor] = field(default_factory=list)

    def update(self, accelerator: Any, out: Step, step: int) -> None:
        total = out.loss if out.aux_term is None else out.loss + out.aux_term.detach()
        if not torch.isfinite(total):
            raise TlpruneError(self.nonfinite.format(value=total.item(), step=step))
        if out.backward is not None:
            out.parts.update(out.backward())
        else:
            accelerator.backward(out.loss)
        out.loss, out.aux_term = out.loss.detach(), None  # no graph outlives the step
        if accelerator.sync_gradients and self.sync and accelerator.num_processes > 1:
            average_grads(self.sync, accelerator.num_processes)
        if accelerator.sync_gradients and self.grad_clip:
            for group in self.clip_groups:
                accelerator.clip_grad_norm_(group, self.grad_clip)
        for opt in self.optimizers:
            opt.step()
        if self.scheduler is not None and accelerator.sync_gradients:
            self.scheduler.step()
        for opt in self.optimizers:
            opt.zero_grad()


def average_grads(params: list[torch.Tensor], world: int) -> None:
    """All-reduce the mean gradient of `params` over the processes. Every process reaches the
    same parameters with a gradient (the schedules that switch terms on are the same)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


Hook = Callable[[Progress, Step, MetricsLog], None]  # after each optimizer step


def run_loop(
    accelerator: Any,
    objective: Objective,
    mechanics: Mechanics,
    batches: Iterator[Any],
    steps: int,
    progress: Progress,
    desc: str,
    log_path: Path | None,
    hooks: Sequence[Hook] = (),
) -> None:
    """Train until `progress.step == steps`; `batches` yields micro-batches (None where the
    objective draws its own)."""
    from tqdm.auto import tqdm

    log = MetricsLog(log_path, accelerator)
    bar = tqdm(
        total=steps,
        initial=progress.step,
        desc=desc,
        disable=not accelerator.is_local_main_process,
    )
    try:
        while progress.step < steps:
            batch = next(batches)
            with accelerator.accumulate(objective.module):
                out = objective(batch, progress.step)
                mechanics.update(accelerator, out, progress.step)
            objective.after_update(progress.step, accelerator.sync_gradients)
            progress.batch_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            bar.update(1)
            bar.set_postfix(objective.postfix(out))
            log.write(objective.log_row(progress.step, out))
            for hook in hooks:
                hook(progress, out, log)
            kill_if_asked(desc, progress.step)
    finally:
        bar.close()
        log.close()


def epochs(
    loader: Any,
    progress: Progress,
    on_epoch: Callable[[], None] | None = None,
    accelerator: Any = None,
) -> Iterator[Any]:
    """Micro-batches over epochs, forever; `progress` counts epochs and batches in the epoch.

    With `accelerator` the loop is resumable: a resumed run starts inside its epoch (the
    loader skips the batches already used), and the loader's epoch counter, which a resume
    resets, is set from `progress`."""
    while True:
        resumed = accelerator is not None and progress.batch_in_epoch > 0
        it = accelerator.skip_first_batches(loader, progress.batch_in_epoch) if resumed else loader
        if accelerator is not None:
            it.set_epoch(progress.epoch)
        if on_epoch is not None:
            on_epoch()
        yield from _resumed_epoch(it) if resumed else it
        progress.epoch += 1
        progress.batch_in_epoch = 0


def _resumed_epoch(batches: Any) -> Iterator[Any]:
    """The rest of an epoch resumed from a checkpoint. A DataLoader draws a seed from torch's
    global RNG when an iterator starts; the uninterrupted run drew it at the epoch's start,
    before the checkpoint saved that RNG, so the draw is undone here (dropout then replays)."""
    it = iter(batches)
    with torch.random.fork_rng(devices=[]):
        first = next(it, None)  # Accelerate's loaders start (and look one batch ahead) here
    if first is not None:
        yield first
        yield from it


def forever() -> Iterator[None]:
    """Batches of an objective that draws its own (the auxiliary stage's streams)."""
    while True:
        yield None
