"""The typed Python API: every CLI command is one call of these functions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tlprune.config import DataConfig, ModelConfig, RunConfig
from tlprune.train.finetune import FinetuneResult, run_finetune


def finetune(
    model: str | None = None,
    target: str | None = None,
    budget: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    *,
    config: RunConfig | None = None,
    smoke: bool | None = None,
) -> FinetuneResult:
    """Fine-tune a dense classifier on `budget` examples of `target` and test it.

    Arguments given here override the matching fields of `config` (default: RunConfig()).
    """
    cfg = config or RunConfig()
    if model is not None:
        cfg = replace(cfg, model=ModelConfig(name=model))
    if target is not None or budget is not None:
        cfg = replace(
            cfg,
            data=replace(
                cfg.data,
                target=target if target is not None else cfg.data.target,
                budget=budget if budget is not None else cfg.data.budget,
            ),
        )
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    if out is not None:
        cfg = replace(cfg, out=str(out))
    if smoke is not None:
        cfg = replace(cfg, smoke=smoke)
    return run_finetune(cfg)


__all__ = ["DataConfig", "FinetuneResult", "ModelConfig", "RunConfig", "finetune"]
