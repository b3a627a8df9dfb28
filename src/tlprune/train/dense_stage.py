"""The auxiliary stage's start and, for a STILTs teacher, the cached dense stage itself.

Kept apart from the jobs that call it so that the stage cache's code hash
(transfer/stage_cache.py: STAGE_CODE) covers every line that decides what a stage trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tlprune.config import RunConfig
from tlprune.models import load_classifier


def stage_base(cfg: RunConfig, label_names: list[str]):
    """The pre-trained model the stage starts from. Fresh head layers (RoBERTa's classifier
    dense, which an auxiliary head copies) are drawn from the stage's seed, and the process's
    random stream is left as it was."""
    from tlprune.arch import from_hf

    with torch.random.fork_rng(devices=[]):  # the CPU stream only, so seed only that one
        torch.default_generator.manual_seed(cfg.transfer.seed_of_stage(cfg.seed))
        return from_hf(load_classifier(cfg.model.name, label_names))


def stage_branch(
    cfg: RunConfig,
    label_names: list[str],
    aux_data: list,
    tokenizer: Any,
    gate_cfg: Any = None,
    shard: tuple[int, int] = (0, 1),
):
    """The auxiliary branch a stage trains, from `stage_base`, under the stage's seed: dense
    when `gate_cfg` is None (a STILTs teacher), else with its own gates (sequential)."""
    from tlprune.arch import unit_sizes
    from tlprune.transfer.branch import build_branch

    base = stage_base(cfg, label_names)
    seed = cfg.transfer.seed_of_stage(cfg.seed)
    sizes = unit_sizes(base.config)
    return build_branch(base, None, aux_data, tokenizer, cfg.transfer, gate_cfg, sizes, seed, shard)


def dense_stage(
    cfg: RunConfig,
    label_names: list[str],
    aux_data: list,
    tokenizer: Any,
    accelerator: Any,
    work: Path,
    log_path: Path,
    resume: bool,
) -> tuple[torch.nn.Module, bool]:
    """A STILTs teacher's dense pass over the auxiliaries: (its trained encoder, whether it came
    from the cache). A finished stage is kept in the cache only under the key it began with."""
    from tlprune.train.aux_stage import run_aux_stage
    from tlprune.transfer import stage_cache

    tc = cfg.transfer
    branch = stage_branch(cfg, label_names, aux_data, tokenizer)
    main = accelerator.is_main_process
    key = None
    if tc.cache_stage:
        key = stage_cache.stage_key(cfg, label_names, aux_data, accelerator.device.type)
    began = stage_cache.began_under(work, key) if key and main else None
    cached = bool(key) and main and stage_cache.restore(key, work / "aux_stage")
    stage = run_aux_stage(branch, cfg, accelerator, work, log_path, resume)
    if key and main and began == key:
        stage_cache.store(key, work / "aux_stage")
    return stage.encoder, cached
