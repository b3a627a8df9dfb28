"""The auxiliary stage of `sequential` coupling (and of the `stilts` preset): the auxiliary
branch trains alone, dense (stilts) or pruned to its own target (sequential), before the
target starts from its weights (and masks).

Fixed length, no selection (there is no target data here); checkpoints every
`prune.checkpoint_every` steps let `--resume` continue a killed stage (on new auxiliary batch
streams: those are not saved), and the finished stage is saved under `<work>/aux_stage/`.
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
from tlprune.errors import TlpruneError
from tlprune.gates import FinalMasks, TargetSchedule, final_masks
from tlprune.gates.lagrangian import make_gate_optimizers
from tlprune.train.checkpoint import CheckpointManager, Progress
from tlprune.train.kill_hook import kill_if_asked
from tlprune.train.loop import set_trainable, total_steps
from tlprune.train.metrics_log import MetricsLog


@dataclass
class AuxStageResult:
    encoder: torch.nn.Module  # the auxiliary branch's encoder, trained
    gates: Any  # its GateSet (None when the branch stayed dense)
    masks: FinalMasks | None  # its exact-budget masks at the auxiliary sparsity
    expected_sparsity: float | None
    steps: int
    seconds: float


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
    from tqdm.auto import tqdm

    out = work / "aux_stage"
    tc, pc = cfg.transfer, cfg.prune
    sparsity = tc.aux_sparsity or pc.sparsity
    if (out / "done.json").is_file():
        return _load(branch, out, sparsity, pc.round_hidden)
    stage = tc.aux_stage
    started = time.perf_counter()
    device = accelerator.device
    branch.to(device).train()
    set_trainable(branch.encoder, stage.freeze)
    weights = [p for p in branch.weight_params() if p.requires_grad]
    w_opt = torch.optim.AdamW(weights, lr=stage.lr, weight_decay=stage.weight_decay)
    gate_opt = lambda_opt = None
    if branch.gates is not None:
        gate_opt, lambda_opt = make_gate_optimizers(branch.gates, branch.lagrangian, pc.gate_lr)
    # one "epoch" = one pass over the largest auxiliary
    per_epoch = max(len(t.data.rows) // t.data.cfg.batch_size for t in branch.tasks) or 1
    steps = total_steps(stage, per_epoch)
    initial = 0.0
    if branch.gates is not None and pc.target_start == "initial":
        initial = min(float(branch.gates.expected_sparsity().detach()), sparsity)
    # Pruned A: a dense warm part first (CoFi prunes a fine-tuned model; gates on a fresh head
    # took A to chance-level loss and 0.97 expected sparsity in the first grid), then gates.
    warm = round(tc.aux_warm * steps) if branch.gates is not None else 0
    ramp = round(pc.target_warmup * (steps - warm))
    ramped = TargetSchedule(sparsity, ramp, initial=initial)

    def schedule(step: int) -> float:
        return ramped(max(0, step - warm))

    ckpt = CheckpointManager(work / "aux_checkpoints")
    modules = {"branch": branch}
    optimizers = {
        k: o for k, o in (("w", w_opt), ("g", gate_opt), ("l", lambda_opt)) if o is not None
    }
    progress = Progress()
    # the stage's own seed (its dropout draws): without it they followed whatever the process
    # drew before, and two runs of one command differed; a resume restores the saved state
    set_seed(cfg.seed + 1)
    latest = ckpt.latest() if resume else None
    if latest is not None:  # the batch streams' positions are buffers of the branch
        progress = ckpt.load(latest, modules, optimizers)
    log = MetricsLog(log_path, accelerator)
    bar = tqdm(
        total=steps,
        initial=progress.step,
        desc="aux",
        disable=not accelerator.is_local_main_process,
    )
    row: dict[str, float] = {}
    try:
        for step in range(progress.step, steps):
            gated = branch.gates is not None and step >= warm
            z = (branch.aux_gates(None) or None) if gated else None
            loss = torch.zeros((), device=device)
            row = {}
            for task in branch.tasks:
                task_loss = task.loss(branch.encoder, z, device)
                loss = loss + task.weight * task_loss
                row[f"aux/{task.name}"] = task_loss.item()
            if gated:
                s_hat = branch.gates.expected_sparsity()
                loss = loss + branch.lagrangian(s_hat, schedule(step))
                row["aux/expected_sparsity"] = s_hat.item()
            if not torch.isfinite(loss):
                raise TlpruneError(
                    f"auxiliary loss became {loss.item()} at step {step}: lower "
                    "transfer.aux_stage.lr or prune.gate_lr"
                )
            loss.backward()
            if stage.grad_clip:
                torch.nn.utils.clip_grad_norm_(weights, stage.grad_clip)
            for opt in (w_opt, gate_opt, lambda_opt):
                if opt is not None:
                    opt.step()
                    opt.zero_grad()
            if branch.gates is not None:
                branch.gates.clamp_()
            log.write({"phase": "aux", "step": step + 1, "target": schedule(step), **row})
            bar.update(1)
            progress.step = step + 1
            due = progress.step % pc.checkpoint_every == 0 and progress.step < steps
            if due and accelerator.is_main_process:
                ckpt.save(progress, modules, optimizers)
            if on_step is not None:
                on_step(progress.step)
            kill_if_asked("aux", progress.step)
            bar.set_postfix({k.split("/")[-1][:12]: f"{v:.3f}" for k, v in row.items()})
    finally:
        bar.close()
        log.close()
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
