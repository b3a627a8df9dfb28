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
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tlprune.config import RunConfig
from tlprune.data.sampler import EpochShuffle
from tlprune.errors import TlpruneError
from tlprune.gates import FinalMasks, GateSet, Lagrangian, TargetSchedule, final_masks
from tlprune.gates.lagrangian import check_sparsity, make_gate_optimizers
from tlprune.gates.target_shift import shift_to_target
from tlprune.train.checkpoint import CheckpointManager, Progress
from tlprune.train.evaluate import evaluate
from tlprune.train.kill_hook import kill_if_asked
from tlprune.train.loop import set_trainable, total_steps
from tlprune.train.metrics_log import MetricsLog
from tlprune.transfer.adapt import backward_adapted


class GatedModel(nn.Module):
    """The full-size encoder with its gates, Lagrangian and distiller: one module to prepare."""

    def __init__(
        self,
        model: nn.Module,
        gates: GateSet,
        lagrangian: Lagrangian,
        distiller=None,
        branch: nn.Module | None = None,
        shift: bool = False,
        hold_from: int | None = None,
    ):
        super().__init__()
        self.shift = shift  # the constraint holds by projection (gates/target_shift.py)
        self.hold_from = hold_from  # from this step on, projection replaces the multipliers
        self.model = model
        self.gates = gates
        self.lagrangian = lagrangian
        self.distiller = distiller
        self.branch = branch  # the auxiliary branch of a transfer run (transfer/branch.py)

    def forward(self, batch: dict, target: float, teacher_out: Any = None, step: int = 0):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        labels = batch["labels"]
        z = self.gates()
        distil = self.distiller is not None and teacher_out is not None
        out = self.model(**inputs, gates=z, output_hidden_states=distil)
        parts: dict[str, torch.Tensor] = {}
        if distil:
            mha = z.get("mha")
            n_layers = len(out.hidden_states) - 1
            open_layers = (
                list(range(n_layers))
                if mha is None
                else [i for i, on in enumerate((mha.detach() > 0).tolist()) if on]
            )
            d = self.distiller(
                out.logits,
                out.hidden_states,
                teacher_out.logits,
                teacher_out.hidden_states,
                labels,
                inputs["attention_mask"],
                open_layers,
            )
            task = d.pop("loss")
            parts.update({k: v.detach() for k, v in d.items()})
        else:
            task = F.cross_entropy(out.logits, labels)
        s_hat = self.gates.expected_sparsity().to(task.dtype)
        lag = self.lagrangian(s_hat, target)
        projected = self.shift or (self.hold_from is not None and step >= self.hold_from)
        if projected:  # unused, but in the graph: several processes (DDP) need every parameter
            lag = 0 * lag
        parts.update(task=task.detach(), lagrangian=lag.detach(), expected_sparsity=s_hat.detach())
        loss = task + lag
        if self.branch is not None:
            extra, aux_parts = self.branch(step, z, task.device)
            loss = loss + extra
            parts.update(aux_parts)
        return loss, parts


class WithMasks(nn.Module):
    """The model under fixed binary gates, callable like any classifier (for evaluation)."""

    def __init__(self, model: nn.Module, gates: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.z = gates

    def forward(self, **batch):
        return self.model(**batch, gates=self.z)


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


def _resumed_epoch(batches: Any) -> Any:
    """The rest of an epoch resumed from a checkpoint. A DataLoader draws a seed from torch's
    global RNG when an iterator starts; the uninterrupted run drew it at the epoch's start,
    before the checkpoint saved that RNG, so the draw is undone here (dropout then replays)."""
    it = iter(batches)
    with torch.random.fork_rng(devices=[]):
        first = next(it, None)  # Accelerate's loaders start (and look one batch ahead) here
    if first is not None:
        yield first
        yield from it


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def run_prune_phase(
    model: nn.Module,
    gates: GateSet,
    train_ds: Any,
    collate: Any,
    dev_loader: Any,
    cfg: RunConfig,
    num_labels: int,
    accelerator: Any,
    ckpt: CheckpointManager,
    resume: bool,
    teacher: nn.Module | None = None,
    distiller: nn.Module | None = None,
    log_path: Path | None = None,
    on_step: Any = None,
    branch: Any = None,
) -> PrunePhaseResult:
    """Train weights and gates against task loss + Lagrangian; leave `model` at its best
    dev state and return the exact-budget masks chosen with it."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    pc, phase = cfg.prune, cfg.prune.prune
    sampler = EpochShuffle(len(train_ds), cfg.seed)
    loader = DataLoader(train_ds, batch_size=phase.batch_size, sampler=sampler, collate_fn=collate)
    set_trainable(model, phase.freeze)
    accelerator.gradient_accumulation_steps = phase.grad_accum
    lagrangian = Lagrangian()
    shift = pc.constraint == "shift"
    gm = GatedModel(model, gates, lagrangian, distiller, branch, shift=shift)
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
    hold_from = schedule.warmup_steps
    project_from = 0 if shift else hold_from if pc.constraint == "hold" else None
    if pc.constraint == "hold":
        inner.hold_from = hold_from
    if branch is not None:
        aux_sparsity = cfg.transfer.aux_sparsity or pc.sparsity
        aux_schedule = TargetSchedule(aux_sparsity, schedule.warmup_steps, initial=initial)
        inner.branch.bind(steps, schedule.warmup_steps, aux_schedule)
    eval_every = phase.eval_every or max(1, len(loader) // phase.grad_accum)
    if teacher is not None:
        teacher = accelerator.prepare_model(teacher, evaluation_mode=True).eval()

    progress = Progress()
    best_state: dict[str, torch.Tensor] | None = None
    best_fm: FinalMasks | None = None
    saved_best: dict[str, Any] = {}  # which best the last checkpoint holds, to link not rewrite
    modules = {"gated": inner}
    optimizers = {"weights": w_opt, "gates": gate_opt, "lambdas": lambda_opt}
    latest = ckpt.latest() if resume else None
    if latest is not None:
        # auxiliary streams resume too: their positions are buffers of the branch
        progress = ckpt.load(latest, modules, optimizers)
        if (latest / "best_model.safetensors").is_file():
            best_state = load_file(latest / "best_model.safetensors")
            # binary masks that met the budget come back unchanged from final_masks
            best_fm = final_masks(
                load_file(latest / "best_masks.safetensors"),
                inner.gates.sizes,
                pc.sparsity,
                pc.round_hidden,
            )

    def sizes_masks() -> FinalMasks:
        probs = {k: v.detach().cpu() for k, v in inner.gates.keep_probs().items()}
        return final_masks(probs, inner.gates.sizes, pc.sparsity, pc.round_hidden)

    def write_best(name: str, tensors: Any):
        def write(path: Path) -> None:
            prev = saved_best.get(name)
            if prev is not None and prev[0] == progress.best.get("step") and prev[1].is_file():
                os.link(prev[1], path)  # unchanged since the last checkpoint: no rewrite
            else:
                save_file(tensors(), path)
            saved_best[name] = (
                progress.best.get("step"),
                ckpt.root / f"step-{progress.step:06d}" / name,
            )

        return write

    def save_checkpoint() -> None:
        extra = {}
        if best_state is not None and best_fm is not None:
            extra["best_model.safetensors"] = write_best(
                "best_model.safetensors", lambda: best_state
            )
            extra["best_masks.safetensors"] = write_best(
                "best_masks.safetensors",
                lambda: {k: v.contiguous() for k, v in best_fm.masks.items()},
            )
        if accelerator.is_main_process:
            ckpt.save(progress, modules, optimizers, extra)
        accelerator.wait_for_everyone()

    started = time.perf_counter()
    log = MetricsLog(log_path, accelerator)
    bar = tqdm(
        total=steps,
        initial=progress.step,
        desc="prune",
        disable=not accelerator.is_local_main_process,
    )
    try:
        while progress.step < steps:
            # Accelerate's loaders keep their own epoch counter (reset by a resume): set it.
            batches = (
                accelerator.skip_first_batches(loader, progress.batch_in_epoch)
                if progress.batch_in_epoch
                else loader
            )
            batches.set_epoch(progress.epoch)
            gm.train()
            for batch in _resumed_epoch(batches) if progress.batch_in_epoch else batches:
                target = schedule(progress.step)
                teacher_out = None
                if teacher is not None:
                    with torch.no_grad():
                        inputs = {k: v for k, v in batch.items() if k != "labels"}
                        teacher_out = teacher(**inputs, output_hidden_states=True)
                with accelerator.accumulate(gm):
                    loss, parts = gm(batch, target, teacher_out, progress.step)
                    aux_term = None
                    if branch is not None:  # transfer.adapt: the aux term comes apart
                        aux_term, inner.branch.task_term = inner.branch.task_term, None
                    total = loss if aux_term is None else loss + aux_term.detach()
                    if not torch.isfinite(total):
                        raise TlpruneError(
                            f"pruning loss became {total.item()} at step {progress.step}: lower "
                            "prune.prune.lr or prune.gate_lr; the last good checkpoint is kept"
                        )
                    if aux_term is not None:  # scale g_A on the shared weights and gates
                        b = inner.branch
                        cos = backward_adapted(
                            accelerator, loss, aux_term, b.shared_weights(), b.shared_gates()
                        )
                        parts["aux/cosine"] = torch.tensor(cos)
                    else:
                        accelerator.backward(loss)
                    del loss, total, aux_term  # a retained graph must not outlive the step
                    if accelerator.sync_gradients and phase.grad_clip:
                        for group in clip_groups:
                            accelerator.clip_grad_norm_(group, phase.grad_clip)
                    for opt in (w_opt, gate_opt, lambda_opt):
                        opt.step()
                        opt.zero_grad()
                inner.gates.clamp_()
                if (
                    project_from is not None
                    and accelerator.sync_gradients
                    and progress.step + 1 >= project_from
                ):  # the next step sees its own target
                    shift_to_target(inner.gates, schedule(progress.step + 1))
                if branch is not None and inner.branch.gates is not None:
                    inner.branch.gates.clamp_()
                progress.batch_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                progress.step += 1
                bar.update(1)
                s_hat = float(parts["expected_sparsity"])
                if progress.step > hold_from:  # the step just done ran at the final target
                    gap = abs(s_hat - target)
                    progress.worst_gap = max(gap, progress.worst_gap or 0.0)
                bar.set_postfix(
                    loss=f"{float(parts['task']):.3f}", s=f"{s_hat:.3f}", t=f"{target:.3f}"
                )
                row = {k: float(v) for k, v in parts.items()}
                row.update(
                    phase="prune",
                    step=progress.step,
                    target=target,
                    lambda1=float(inner.lagrangian.lambda1.detach()),
                    lambda2=float(inner.lagrangian.lambda2.detach()),
                )
                log.write(row)
                due = progress.step % eval_every == 0 and progress.step >= hold_from
                if due or progress.step == steps:
                    fm = sizes_masks()
                    z = inner.gates.deterministic(fm.masks)
                    dev = evaluate(WithMasks(inner.model, z), dev_loader, num_labels, accelerator)
                    gm.train()
                    log.write(
                        {
                            "phase": "prune",
                            "step": progress.step,
                            "dev": dev,
                            "sparsity": fm.sparsity,
                        }
                    )
                    meets = fm.size <= fm.budget  # never select masks over the budget
                    if meets and (not progress.best or dev["loss"] < progress.best["loss"]):
                        progress.best = {**dev, "step": progress.step}
                        best_state = _snapshot(inner.model)
                        best_fm = fm
                if progress.step % pc.checkpoint_every == 0 or progress.step == steps:
                    save_checkpoint()
                if on_step is not None:
                    on_step(progress.step)
                kill_if_asked("prune", progress.step)
                if progress.step >= steps:
                    break
            else:
                progress.epoch += 1
                progress.batch_in_epoch = 0
    finally:
        bar.close()
        log.close()

    if best_state is None or best_fm is None:
        raise TlpruneError(
            f"no checkpoint of the prune phase met the parameter budget at sparsity "
            f"{pc.sparsity}: allow more gate kinds (prune.kinds) or a lower sparsity"
        )
    inner.model.load_state_dict(best_state)
    final = best_fm
    s_hat = float(inner.gates.expected_sparsity().detach())
    return PrunePhaseResult(
        masks=final,
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
