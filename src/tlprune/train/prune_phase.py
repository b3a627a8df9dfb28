"""The pruning phase: weights, hard-concrete gates and Lagrange multipliers trained together.

The target sparsity ramps from 0 over the warm-up, then holds. After the warm-up, dev is
evaluated with the exact-budget binary masks of the moment (what would ship), and the best
(lowest dev loss) weights and masks are kept. Checkpoints make the phase resumable.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tlprune.data.sampler import EpochShuffle
from tlprune.errors import TlpruneError
from tlprune.gates import FinalMasks, GateSet, Lagrangian, TargetSchedule, final_masks
from tlprune.gates.lagrangian import check_sparsity, make_gate_optimizers
from tlprune.train.checkpoint import CheckpointManager, Progress
from tlprune.train.engine import Mechanics, Step, epochs, run_loop
from tlprune.train.evaluate import evaluate
from tlprune.train.gated import GatedModel, GatedObjective, WithMasks
from tlprune.train.loop import set_trainable, total_steps
from tlprune.train.phases.state import PruneRun


@dataclass
class PrunePhaseResult:
    masks: FinalMasks
    best_dev: dict
    best_step: int
    steps: int
    expected_sparsity: float
    worst_gap_after_ramp: float | None  # max |s_hat - target| once the ramp has ended
    target: float
    seconds: float
    warnings: list[str]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


@dataclass
class _Prepared:
    """The phase's modules, optimizers and loaders after Accelerate's prepare, and its schedule."""

    gm: Any  # the prepared GatedModel (DDP-wrapped on several processes)
    inner: GatedModel
    optimizers: dict[str, torch.optim.Optimizer]
    clip_groups: list[list[torch.Tensor]]
    loader: Any
    dev_loader: Any
    steps: int
    schedule: TargetSchedule
    teacher: Any


def _prepare(model, gates, train_ds, collate, dev_loader, cfg, accelerator, extra) -> _Prepared:
    from torch.utils.data import DataLoader

    teacher, distiller, branch = extra
    pc, phase = cfg.prune, cfg.prune.prune
    sampler = EpochShuffle(len(train_ds), cfg.seed)
    loader = DataLoader(train_ds, batch_size=phase.batch_size, sampler=sampler, collate_fn=collate)
    set_trainable(model, phase.freeze)
    accelerator.gradient_accumulation_steps = phase.grad_accum
    lagrangian = Lagrangian()
    price = pc.constraint == "price"
    gm = GatedModel(
        model, gates, lagrangian, distiller, branch, shift=pc.constraint == "shift", price=price
    )
    weights = [p for p in model.parameters() if p.requires_grad]
    if distiller is not None:
        weights += list(distiller.parameters())
    gate_params, lambda_params = list(gates.parameters()), list(lagrangian.parameters())
    clip_groups = [weights]
    if branch is not None:
        set_trainable(branch.encoder, phase.freeze)
        clip_groups = branch.clip_groups(weights)
        weights = [p for group in clip_groups for p in group]
        if branch.gates is not None:
            gate_params += list(branch.gates.parameters())
            lambda_params += list(branch.lagrangian.parameters())
    w_opt = torch.optim.AdamW(weights, lr=phase.lr, weight_decay=phase.weight_decay)
    gate_opt, lambda_opt = make_gate_optimizers(gate_params, lambda_params, pc.gate_lr)
    gm, w_opt, gate_opt, lambda_opt, loader, dev_loader = accelerator.prepare(
        gm, w_opt, gate_opt, lambda_opt, loader, dev_loader
    )
    inner: GatedModel = accelerator.unwrap_model(gm)
    steps = total_steps(phase, len(loader))  # per process, after sharding
    initial = 0.0
    if pc.target_start == "initial":  # the gates as initialised: a checkpoint loads later
        initial = min(float(inner.gates.expected_sparsity().detach()), pc.sparsity)
    schedule = TargetSchedule(pc.sparsity, round(pc.target_warmup * steps), initial=initial)
    if pc.constraint == "hold":
        inner.hold_from = schedule.warmup_steps
    if branch is not None:
        aux_sparsity = cfg.transfer.aux_sparsity or pc.sparsity
        aux_schedule = TargetSchedule(aux_sparsity, schedule.warmup_steps, initial=initial)
        inner.branch.bind(steps, schedule.warmup_steps, aux_schedule)
    if teacher is not None:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True).eval()
    optimizers = {"weights": w_opt, "gates": gate_opt, "lambdas": lambda_opt}
    return _Prepared(
        gm, inner, optimizers, clip_groups, loader, dev_loader, steps, schedule, teacher
    )


class MaskedSelection:
    """From the ramp's end, evaluate dev every `every` steps (and at the end) with the
    exact-budget binary masks of the moment, what would ship; keep the lowest-dev-loss weights
    and masks among those that meet the budget."""

    def __init__(self, p: _Prepared, pc, num_labels: int, accelerator, every: int):
        self.p, self.pc, self.num_labels, self.accelerator = p, pc, num_labels, accelerator
        self.every, self.hold_from = every, p.schedule.warmup_steps
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_fm: FinalMasks | None = None

    def masks(self) -> FinalMasks:
        probs = {k: v.detach().cpu() for k, v in self.p.inner.gates.keep_probs().items()}
        return final_masks(probs, self.p.inner.gates.sizes, self.pc.sparsity, self.pc.round_hidden)

    def load(self, checkpoint: Path) -> None:
        """The best so far, from a checkpoint that holds one."""
        if (checkpoint / "best_model.safetensors").is_file():
            self.best_state = load_file(checkpoint / "best_model.safetensors")
            # binary masks that met the budget come back unchanged from final_masks
            self.best_fm = final_masks(
                load_file(checkpoint / "best_masks.safetensors"),
                self.p.inner.gates.sizes,
                self.pc.sparsity,
                self.pc.round_hidden,
            )

    def __call__(self, progress: Progress, out: Step, log: Any) -> None:
        step = progress.step
        due = step % self.every == 0 and step >= self.hold_from
        if not (due or step == self.p.steps):
            return
        inner = self.p.inner
        fm = self.masks()
        z = inner.gates.deterministic(fm.masks)
        dev = evaluate(
            WithMasks(inner.model, z), self.p.dev_loader, self.num_labels, self.accelerator
        )
        self.p.gm.train()
        log.write({"phase": "prune", "step": step, "dev": dev, "sparsity": fm.sparsity})
        meets = fm.size <= fm.budget  # never select masks over the budget
        if meets and (not progress.best or dev["loss"] < progress.best["loss"]):
            progress.best = {**dev, "step": step}
            self.best_state = _snapshot(inner.model)
            self.best_fm = fm


class PhaseCheckpoint:
    """A resumable checkpoint every `every` steps and at the end; the best weights and masks
    ride along, linked rather than rewritten while they are unchanged."""

    def __init__(
        self,
        ckpt: CheckpointManager,
        p: _Prepared,
        select: MaskedSelection,
        accelerator,
        every: int,
    ):
        self.ckpt, self.p, self.select, self.accelerator, self.every = (
            ckpt,
            p,
            select,
            accelerator,
            every,
        )
        self.modules = {"gated": p.inner}
        self.saved_best: dict[str, Any] = {}  # which best the last checkpoint holds

    def __call__(self, progress: Progress, out: Step, log: Any) -> None:
        if progress.step % self.every and progress.step != self.p.steps:
            return
        extra = {}
        sel = self.select
        if sel.best_state is not None and sel.best_fm is not None:
            state, fm = sel.best_state, sel.best_fm
            extra["best_model.safetensors"] = self._write(
                progress, "best_model.safetensors", lambda: state
            )
            extra["best_masks.safetensors"] = self._write(
                progress,
                "best_masks.safetensors",
                lambda: {k: v.contiguous() for k, v in fm.masks.items()},
            )
        if self.accelerator.is_main_process:
            self.ckpt.save(progress, self.modules, self.p.optimizers, extra)
        self.accelerator.wait_for_everyone()

    def _write(self, progress: Progress, name: str, tensors: Any):
        def write(path: Path) -> None:
            prev = self.saved_best.get(name)
            if prev is not None and prev[0] == progress.best.get("step") and prev[1].is_file():
                os.link(prev[1], path)  # unchanged since the last checkpoint: no rewrite
            else:
                save_file(tensors(), path)
            self.saved_best[name] = (
                progress.best.get("step"),
                self.ckpt.root / f"step-{progress.step:06d}" / name,
            )

        return write


def _gap_tracker(hold_from: int, objective: GatedObjective):
    def track(progress: Progress, out: Step, log: Any) -> None:
        if progress.step > hold_from:  # the step just done ran at the final target
            gap = abs(float(out.parts["expected_sparsity"]) - objective.target)
            progress.worst_gap = max(gap, progress.worst_gap or 0.0)

    return track


def run_prune_phase(
    run: PruneRun, gates: GateSet, distiller: nn.Module | None, branch: Any
) -> PrunePhaseResult:
    """Train `run.model`'s weights and `gates` against task loss (or distillation from
    `run.teacher`) + the constraint (+ the branch's terms); leave the model at its best dev
    state and return the exact-budget masks chosen with it."""
    from tlprune.data.collate import ClassificationCollator

    cfg, accelerator, teacher = run.cfg, run.accelerator, run.teacher
    model, num_labels = run.model, run.task.num_labels
    train_ds = run.task.train.select(run.budget.train)
    collate = ClassificationCollator(run.tokenizer, run.task.max_length)
    _, dev_loader, _ = run.loaders(3, cfg.prune.prune)
    ckpt = CheckpointManager(run.work / "checkpoints")
    pc, phase = cfg.prune, cfg.prune.prune
    p = _prepare(
        model, gates, train_ds, collate, dev_loader, cfg, accelerator, (teacher, distiller, branch)
    )
    hold_from = p.schedule.warmup_steps
    project_from = {"shift": 0, "price": 0, "hold": hold_from}.get(pc.constraint)
    objective = GatedObjective(p.gm, p.inner, accelerator, p.schedule, p.teacher, project_from)
    mechanics = Mechanics(
        list(p.optimizers.values()),
        p.clip_groups,
        phase.grad_clip,
        nonfinite="pruning loss became {value} at step {step}: lower prune.prune.lr or "
        "prune.gate_lr; the last good checkpoint is kept",
    )
    eval_every = phase.eval_every or max(1, len(p.loader) // phase.grad_accum)
    select = MaskedSelection(p, pc, num_labels, accelerator, eval_every)
    save = PhaseCheckpoint(ckpt, p, select, accelerator, pc.checkpoint_every)
    progress = Progress()
    latest = ckpt.latest() if run.resume else None
    if latest is not None:  # auxiliary streams resume too: buffers of the branch
        progress = ckpt.load(latest, save.modules, p.optimizers)
        select.load(latest)
    hooks = [_gap_tracker(hold_from, objective), select, save]
    if run.on_step is not None:
        hooks.append(lambda progress, out, log: run.on_step(progress.step))
    started = time.perf_counter()
    batches = epochs(p.loader, progress, on_epoch=p.gm.train, accelerator=accelerator)
    log_path = run.log_path
    run_loop(
        accelerator, objective, mechanics, batches, p.steps, progress, "prune", log_path, hooks
    )
    if select.best_state is None or select.best_fm is None:
        raise TlpruneError(
            f"no checkpoint of the prune phase met the parameter budget at sparsity "
            f"{pc.sparsity}: allow more gate kinds (prune.kinds) or a lower sparsity"
        )
    p.inner.model.load_state_dict(select.best_state)
    s_hat = float(p.inner.gates.expected_sparsity().detach())
    return PrunePhaseResult(
        masks=select.best_fm,
        best_dev=progress.best,
        best_step=int(progress.best["step"]),
        steps=progress.step,
        expected_sparsity=s_hat,
        worst_gap_after_ramp=progress.worst_gap,
        target=pc.sparsity,
        seconds=time.perf_counter() - started,
        warnings=convergence_warnings(s_hat, pc.sparsity, "prune steps"),
    )


def convergence_warnings(s_hat: float, target: float, steps: str) -> list[str]:
    """A warning when the gates' expected sparsity ended away from the target: the exact-budget
    masks then cut (or keep) much more than the gates chose."""
    if check_sparsity(s_hat, target):
        return []
    return [
        f"expected sparsity {s_hat:.3f} ended {abs(s_hat - target):.3f} away from the target "
        f"{target}: the constraint did not converge (more {steps} or a higher prune.gate_lr help)"
    ]
