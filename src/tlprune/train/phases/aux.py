"""Auxiliary phase (sequential coupling: presets stilts, sequential): the auxiliary branch
trains alone first; the target starts from its weights (and masks)."""

from __future__ import annotations

from tlprune.train.phases.state import PruneRun


def aux_phase(run: PruneRun) -> None:
    from tlprune.train.aux_stage import run_aux_stage
    from tlprune.train.dense_stage import stage_branch
    from tlprune.transfer.couplings import coupling_of

    cfg = run.cfg
    if not coupling_of(cfg.transfer).aux_stage:
        return
    branch = stage_branch(
        cfg, run.task.label_names, run.aux_data, run.tokenizer, run.gate_config(), run.shard
    )
    run.stage = run_aux_stage(
        branch, cfg, run.accelerator, run.work, run.log_path, run.resume, run.on_aux_step
    )
    run.seconds["aux"] = run.stage.seconds
