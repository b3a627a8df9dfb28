"""Prune phase: hard-concrete gates trained with the warm model's weights under the sparsity
constraint (train/prune_phase.py), with the coupling's auxiliary branch and the distiller
where the run has them; or, with fixed auxiliary masks, the auxiliary stage's masks."""

from __future__ import annotations

import sys

import torch

from tlprune.errors import TlpruneError
from tlprune.train.phases.state import PruneRun
from tlprune.train.phases.warm import CARRIED, masks_fixed_by_aux


def _fixed(run: PruneRun):
    from tlprune.train.prune_phase import PrunePhaseResult, convergence_warnings

    stage, cfg = run.stage, run.cfg
    return PrunePhaseResult(
        masks=stage.masks,
        best_dev={},
        best_step=0,
        steps=0,
        expected_sparsity=stage.expected_sparsity,
        worst_gap_after_ramp=None,  # the auxiliary stage's own ramp: not tracked here
        target=cfg.transfer.aux_sparsity or cfg.prune.sparsity,
        seconds=0.0,
        # A's masks are the model's: say when A's constraint had not converged
        warnings=convergence_warnings(
            stage.expected_sparsity, cfg.prune.sparsity, "transfer.aux_stage steps"
        ),
    )


def _branch(run: PruneRun, gates, sizes):
    """The auxiliary branch of a `shared` or `soft` run (None otherwise)."""
    from safetensors.torch import load_file

    from tlprune.transfer.branch import build_branch
    from tlprune.transfer.couplings import coupling_of

    tc = run.cfg.transfer
    if not coupling_of(tc).branch_in_prune:
        return None
    gate_cfg, seed = run.gate_config(), run.cfg.seed
    branch = build_branch(
        run.model, gates, run.aux_data, run.tokenizer, tc, gate_cfg, sizes, seed, run.shard
    )
    if tc.in_warm:
        warm_dir = run.work / "warm"
        if not (warm_dir / CARRIED).is_file():
            raise TlpruneError(
                f"{warm_dir} has no {CARRIED} (the warm phase's auxiliary branch): delete "
                f"{warm_dir} and resume to redo the warm phase"
            )
        branch.load_carried(load_file(warm_dir / CARRIED))
    if run.accelerator.is_main_process:
        print(branch.memory_note(), file=sys.stderr)
    return branch


def _fisher_init(run: PruneRun, gates, sizes) -> None:
    """Head and FFN-unit log-alphas from the warm model's Fisher scores on the budget's
    training examples (no randomness: a resumed run computes the same start)."""
    from torch.utils.data import DataLoader

    from tlprune.data.collate import ClassificationCollator
    from tlprune.gates.fisher import collect_mask_grads
    from tlprune.gates.importance_init import log_alphas_from_fisher, set_log_alphas

    pc = run.cfg.prune
    rows = run.task.train.select(run.budget.train)
    collate = ClassificationCollator(run.tokenizer, run.task.max_length)
    batches = DataLoader(rows, batch_size=pc.prune.batch_size, collate_fn=collate)
    device = run.accelerator.device  # where a fresh and a resumed run both compute it
    with torch.random.fork_rng(devices=[]):  # the loader's iterator draws a seed: undo it
        grads = collect_mask_grads(run.model.to(device), batches, device)
    values = log_alphas_from_fisher(grads.diagonal(), sizes, pc.init_log_alpha, pc.gate_init_span)
    set_log_alphas(gates, values)


def prune_phase(run: PruneRun) -> None:
    from tlprune.arch import unit_sizes
    from tlprune.gates import GateSet
    from tlprune.train.distill import Distiller
    from tlprune.train.prune_phase import run_prune_phase
    from tlprune.transfer.groups import copy_log_alphas

    if masks_fixed_by_aux(run):
        run.phase = _fixed(run)
        return
    cfg, model, teacher = run.cfg, run.model, run.teacher
    sizes = unit_sizes(model.config)
    gates = GateSet(run.gate_config(), sizes, seed=cfg.seed)
    if run.stage is not None and run.stage.gates is not None:  # reprune: A's log-alphas first
        copy_log_alphas(run.stage.gates, gates, cfg.transfer.masks)
    if cfg.prune.gate_init == "fisher":
        _fisher_init(run, gates, sizes)
    distiller = None
    if teacher is not None:
        t = teacher.config
        distiller = Distiller(
            cfg.distill, model.config.hidden_size, t.hidden_size, t.num_hidden_layers
        )
    branch = _branch(run, gates, sizes)
    run.phase = run_prune_phase(run, gates, distiller, branch)
    run.seconds["prune"] = run.phase.seconds
    run.accelerator.free_memory()
