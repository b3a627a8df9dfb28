"""The auxiliary stage of `sequential` coupling (and of the `stilts` preset): the auxiliary
branch trains alone, dense (stilts) or pruned to its own target (sequential), before the
target starts from its weights (and masks).

Fixed length, no selection (there is no target data here); checkpoints every
`prune.checkpoint_every` steps let `--resume` continue a killed stage (the auxiliary batch
streams' positions are saved with the branch), and the finished stage is saved under
`<work>/aux_stage/`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from tlprune.config import RunConfig
from tlprune.gates import FinalMasks, TargetSchedule, final_masks
from tlprune.gates.lagrangian import make_gate_optimizers
from tlprune.train.checkpoint import CheckpointManager, Progress
from tlprune.train.engine import Mechanics, Step, forever, run_loop
from tlprune.train.loop import set_trainable, total_steps


@dataclass
class AuxStageResult:
    encoder: torch.nn.Module  # the auxiliary branch's encoder, trained
    gates: Any  # its GateSet (None when the branch stayed dense)
    masks: FinalMasks | None  # its exact-budget masks at the auxiliary sparsity
    expected_sparsity: float | None
    steps: int
    seconds: float


class AuxObjective:
    """The auxiliary branch alone: its tasks' weighted losses (each draws its own batch), plus
    its Lagrangian once the gates start (`warm` steps of dense training first)."""

    def __init__(self, branch: Any, schedule: Any, warm: int, device: Any):
        self.module, self.branch, self.schedule = branch, branch, schedule
        self.warm, self.device = warm, device
        self.target = 0.0

    def __call__(self, batch: Any, step: int) -> Step:
        branch = self.branch
        gated = branch.gates is not None and step >= self.warm
        z = (branch.aux_gates(None) or None) if gated else None
        loss = torch.zeros((), device=self.device)
        row = {}
        for task in branch.tasks:
            task_loss = task.loss(branch.encoder, z, self.device)
            loss = loss + task.weight * task_loss
            row[f"aux/{task.name}"] = task_loss.item()
        self.target = self.schedule(step)
        if gated:
            s_hat = branch.gates.expected_sparsity()
            loss = loss + branch.lagrangian(s_hat, self.target)
            row["aux/expected_sparsity"] = s_hat.item()
        return Step(loss, row)

    def after_update(self, step: int, synced: bool) -> None:
        if self.branch.gates is not None:
            self.branch.gates.clamp_()

    def log_row(self, step: int, out: Step) -> dict[str, Any]:
        return {"phase": "aux", "step": step, "target": self.target, **out.parts}

    def postfix(self, out: Step) -> dict[str, str]:
        return {k.split("/")[-1][:12]: f"{v:.3f}" for k, v in out.parts.items()}


def _schedule(branch: Any, cfg: RunConfig, steps: int, sparsity: float) -> tuple[Any, int]:
    """The auxiliary target schedule and its dense warm part. Pruned A trains dense first (CoFi
    prunes a fine-tuned model; gates on a fresh head took A to chance-level loss and 0.97
    expected sparsity in the first grid), then under gates with the target ramp."""
    pc = cfg.prune
    initial = 0.0
    if branch.gates is not None and pc.target_start == "initial":
        initial = min(float(branch.gates.expected_sparsity().detach()), sparsity)
    warm = round(cfg.transfer.aux_warm * steps) if branch.gates is not None else 0
    ramped = TargetSchedule(sparsity, round(pc.target_warmup * (steps - warm)), initial=initial)

    def schedule(step: int) -> float:
        return ramped(max(0, step - warm))

    return schedule, warm


def run_aux_stage(
    branch: Any,
    cfg: RunConfig,
    accelerator: Any,
    work: Path,
    log_path: Path,
    resume: bool = False,
    on_step: Any = None,
):
    """Train `branch` (an AuxBranch with coupling `sequential`) on its tasks alone;
    checkpointed every `prune.checkpoint_every` steps, continued by `resume`."""
    out = work / "aux_stage"
    tc, pc = cfg.transfer, cfg.prune
    sparsity = tc.aux_sparsity or pc.sparsity
    if (out / "done.json").is_file():
        return _load(branch, out, sparsity, pc.round_hidden)
    stage = tc.aux_stage
    started = time.perf_counter()
    branch.to(accelerator.device).train()
    set_trainable(branch.encoder, stage.freeze)
    weights = [p for p in branch.weight_params() if p.requires_grad]
    optimizers = {"w": torch.optim.AdamW(weights, lr=stage.lr, weight_decay=stage.weight_decay)}
    if branch.gates is not None:
        optimizers["g"], optimizers["l"] = make_gate_optimizers(
            branch.gates, branch.lagrangian, pc.gate_lr
        )
    # one "epoch" = one pass over the largest auxiliary
    world = accelerator.num_processes  # each step draws batch_size rows on every process
    per_epoch = max(len(t.data.rows) // (t.data.cfg.batch_size * world) for t in branch.tasks) or 1
    steps = total_steps(stage, per_epoch)
    schedule, warm = _schedule(branch, cfg, steps, sparsity)
    ckpt = CheckpointManager(work / "aux_checkpoints")
    modules = {"branch": branch}
    progress = Progress()
    # the stage's own seed (its dropout draws): without it they followed whatever the process
    # drew before, and two runs of one command differed; a resume restores the saved state
    set_seed(cfg.transfer.seed_of_stage(cfg.seed) + 1)
    latest = ckpt.latest() if resume else None
    if latest is not None:  # the batch streams' positions are buffers of the branch
        progress = ckpt.load(latest, modules, optimizers)

    def save(progress: Progress, out: Step, log: Any) -> None:
        due = progress.step % pc.checkpoint_every == 0 and progress.step < steps
        if due and accelerator.is_main_process:
            ckpt.save(progress, modules, optimizers)

    hooks = [save]
    if on_step is not None:
        hooks.append(lambda progress, out, log: on_step(progress.step))
    mechanics = Mechanics(
        list(optimizers.values()),
        [weights],
        stage.grad_clip,
        nonfinite="auxiliary loss became {value} at step {step}: lower "
        "transfer.aux_stage.lr or prune.gate_lr",
        sync=list(branch.parameters()),  # the branch trains unwrapped: processes average here
    )
    objective = AuxObjective(branch, schedule, warm, accelerator.device)
    accelerator.gradient_accumulation_steps = 1  # the streams give whole batches
    counted = accelerator.step  # accumulate() counts micro-batches; a stage loaded from disk
    run_loop(accelerator, objective, mechanics, forever(), steps, progress, "aux", log_path, hooks)
    accelerator.step = counted  # does not, so later phases must not see this stage's count
    masks = s_hat = None
    if branch.gates is not None:
        probs = {k: v.detach().cpu() for k, v in branch.gates.keep_probs().items()}
        masks = final_masks(probs, branch.gates.sizes, sparsity, cfg.prune.round_hidden)
        s_hat = float(branch.gates.expected_sparsity().detach())
    if accelerator.is_main_process:
        _save(branch, masks, out, steps, s_hat, time.perf_counter() - started)
        shutil.rmtree(work / "aux_checkpoints", ignore_errors=True)  # the stage is saved
    accelerator.wait_for_everyone()
    return AuxStageResult(
        branch.encoder, branch.gates, masks, s_hat, steps, time.perf_counter() - started
    )


def _save(branch, masks, out: Path, steps: int, s_hat, seconds: float) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in branch.encoder.state_dict().items()},
        tmp / "encoder.safetensors",
    )
    if branch.gates is not None:
        la = {k: v.detach().cpu().contiguous() for k, v in branch.gates.log_alpha.items()}
        save_file(la, tmp / "log_alpha.safetensors")
    (tmp / "done.json").write_text(
        json.dumps({"steps": steps, "expected_sparsity": s_hat, "seconds": seconds})
    )
    tmp.replace(out)


def _load(branch, out: Path, sparsity: float, round_hidden: int) -> AuxStageResult:
    branch.encoder.load_state_dict(load_file(out / "encoder.safetensors"))
    info = json.loads((out / "done.json").read_text())
    masks = None
    if branch.gates is not None:
        with torch.no_grad():
            for k, v in load_file(out / "log_alpha.safetensors").items():
                branch.gates.log_alpha[k].copy_(v)
        probs = {k: v.detach().cpu() for k, v in branch.gates.keep_probs().items()}
        masks = final_masks(probs, branch.gates.sizes, sparsity, round_hidden)
    return AuxStageResult(
        branch.encoder,
        branch.gates,
        masks,
        info["expected_sparsity"],
        info["steps"],
        info["seconds"],
    )
