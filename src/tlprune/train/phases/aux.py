"""Auxiliary phase (sequential coupling: presets stilts, sequential): the auxiliary branch
trains alone first; the target starts from its weights (and masks)."""

from __future__ import annotations

from tlprune.train.phases.state import PruneRun


def aux_phase(run: PruneRun) -> None:
    from tlprune.arch import unit_sizes
    from tlprune.train.aux_stage import run_aux_stage
    from tlprune.train.dense_stage import stage_base
    from tlprune.transfer.branch import build_branch
    from tlprune.transfer.couplings import coupling_of

    cfg, tc = run.cfg, run.cfg.transfer
    if not coupling_of(tc).aux_stage:
        return
    base = stage_base(cfg, run.task.label_names)
    sizes = unit_sizes(base.config)
    branch = build_branch(
        base,
        None,
        run.aux_data,
        run.tokenizer,
        tc,
        run.gate_config(),
        sizes,
        tc.seed_of_stage(cfg.seed),
        run.shard,
    )
    run.stage = run_aux_stage(
        branch, cfg, run.accelerator, run.work, run.log_path, run.resume, run.on_aux_step
    )
    run.seconds["aux"] = run.stage.seconds
