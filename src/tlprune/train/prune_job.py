"""The prune job: checks and data, then the phases (train/phases/: [teacher] -> [auxiliary
stage] -> warm fine-tune -> prune -> surgery and final fine-tune), then the report.

Work happens in `<out>.partial/` (teacher, warm model, checkpoints); `--resume` continues a
killed run from there. Only a finished run is renamed to `<out>`: a model directory that
`from_pretrained` loads, with its masks, config, report and model card.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from tlprune.config import RunConfig, to_dict
from tlprune.data.collate import truncated_fraction
from tlprune.data.metrics import classification_metrics
from tlprune.data.sources import load_task
from tlprune.data.split import draw_budget
from tlprune.errors import TlpruneError
from tlprune.models import load_tokenizer, resolve_model
from tlprune.train.evaluate import save_predictions
from tlprune.train.finetune import check_out_path, smoke_train
from tlprune.train.metrics_log import make_accelerator
from tlprune.train.phases import PIPELINE
from tlprune.train.phases.state import PruneRun
from tlprune.train.result import RunResult
from tlprune.transfer.couplings import check_transfer, coupling_of

SMOKE_PRUNE_STEPS = 4


def default_out(cfg: RunConfig) -> Path:
    target = Path(cfg.data.target).stem if "/" in cfg.data.target else cfg.data.target
    return Path("runs") / (
        f"{cfg.preset}-{target}-b{cfg.data.budget}-s{cfg.prune.sparsity}-seed{cfg.seed}"
    )


def smoke_config(cfg: RunConfig) -> RunConfig:
    """Every phase a few steps: an end-to-end check in about a minute."""
    pc = cfg.prune
    prune = dataclasses.replace(
        pc,
        warm=smoke_train(pc.warm),
        prune=dataclasses.replace(pc.prune, max_steps=SMOKE_PRUNE_STEPS, eval_every=2),
        final=smoke_train(pc.final),
        target_warmup=0.25,
        checkpoint_every=2,
    )
    transfer = dataclasses.replace(
        cfg.transfer, aux_stage=dataclasses.replace(cfg.transfer.aux_stage, max_steps=4)
    )
    return dataclasses.replace(cfg, train=smoke_train(cfg.train), prune=prune, transfer=transfer)


def check_workdir(cfg: RunConfig, out: Path, resume: bool) -> Path:
    """Check `out` and its `.partial` sibling against --overwrite/--resume; return the workdir.

    Changes nothing: every process checks before the main one starts the workdir.
    """
    work = out.with_name(out.name + ".partial")
    check_out_path(out, cfg.overwrite)
    if resume:
        saved = work / "config.yaml"
        if not saved.is_file():
            raise TlpruneError(f"nothing to resume at {work}: run without --resume to start")
        old = _flat(_comparable(yaml.safe_load(saved.read_text())))
        new = _flat(_comparable(to_dict(cfg)))
        # a key added by a newer tlprune, at its default, does not change the run
        defaults = _flat(to_dict(RunConfig()))
        diff = sorted(
            k
            for k in set(old) | set(new)
            if old.get(k) != new.get(k) and not (k not in old and new.get(k) == defaults.get(k))
        )
        if diff:
            raise TlpruneError(
                f"--resume with a different config (keys {diff[:5]}): resume with the same "
                "command, or start again with --overwrite"
            )
        return work
    if work.exists() and not cfg.overwrite:
        raise TlpruneError(
            f"an interrupted run is at {work}: pass --resume to continue it or --overwrite "
            "to start again"
        )
    return work


def start_workdir(cfg: RunConfig, work: Path) -> None:
    """A fresh workdir holding the run's config (compared on --resume)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(_comparable(to_dict(cfg)), sort_keys=False))


def _comparable(d: dict) -> dict:
    # where the run lives is proven by finding its workdir; the path may be spelt differently
    return {k: v for k, v in d.items() if k not in ("overwrite", "out")}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_phases(cfg: RunConfig) -> None:
    """Settings that one Accelerator must share across phases."""
    from tlprune.errors import ConfigError

    phases = {
        "train": cfg.train,
        "prune.warm": cfg.prune.warm,
        "prune.prune": cfg.prune.prune,
        "prune.final": cfg.prune.final,
    }
    used = {k: v for k, v in phases.items() if k != "train" or cfg.distill.enabled}
    precisions = {v.mixed_precision for v in used.values()}
    if len(precisions) > 1:
        raise ConfigError(
            f"mixed_precision differs between phases "
            f"({ {k: v.mixed_precision for k, v in used.items()} }): one run uses one precision; "
            "set the same value in every phase"
        )
    if cfg.prune.prune.mixed_precision == "fp16":
        raise ConfigError(
            "fp16 is not supported while pruning (3 optimizers, one scaler): use bf16"
        )


def check_architecture(name: str) -> None:
    """Fail before any work when the model's architecture has no adapter."""
    from transformers import AutoConfig

    from tlprune.arch import get_adapter

    ref = resolve_model(name)
    try:
        model_type = AutoConfig.from_pretrained(ref).model_type
    except (OSError, ValueError) as exc:
        raise TlpruneError(f"cannot read the config of model {name!r}: {exc}") from None
    get_adapter(model_type)


def _prepare_run(cfg: RunConfig, out: Path, resume: bool) -> PruneRun:
    """Every check that needs no training, then the data, the work directory and the
    accelerator: a bad input fails here, before anything is written."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from tlprune.transfer.aux import load_aux, unique_names

    check_phases(cfg)
    if cfg.data.unlabelled:
        raise TlpruneError(
            "--unlabelled (data.unlabelled) is read by the fisher presets only: leave it out "
            "here, or give unlabelled text to a transfer preset as --aux mlm:SOURCE"
        )
    if cfg.distill.agreement_texts:
        raise TlpruneError(
            "distill.agreement_texts selects the fisher presets' final fine-tune on held-out "
            "unlabelled texts: leave it out here (gate presets select on dev loss)"
        )
    check_transfer(cfg.transfer, cfg.prune)
    check_architecture(cfg.model.name)
    work = check_workdir(cfg, out, resume)
    task = load_task(cfg.data)
    budget = draw_budget(
        task.train["label"], cfg.data.budget, cfg.seed, cfg.data.dev_fraction, task.num_labels
    )
    aux_seed = cfg.transfer.seed_of_stage(cfg.seed)  # the cap on its rows draws from it
    aux_data = [load_aux(a, task, budget, aux_seed) for a in cfg.transfer.aux]
    for d, name in zip(aux_data, unique_names([d.name for d in aux_data]), strict=True):
        d.name = name  # the report's names are the logs' names
    tokenizer = load_tokenizer(cfg.model.name)
    if any(d.cfg.task == "mlm" for d in aux_data) and tokenizer.mask_token_id is None:
        raise TlpruneError(
            f"the tokenizer of {cfg.model.name} has no mask token: MLM auxiliaries need one"
        )
    # Without a GPU, processes started by torchrun are CPU workers (Accelerate's MULTI_CPU).
    state = PartialState(
        cpu=not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    )
    tc = cfg.transfer
    if state.num_processes > 1 and (tc.adapt != "none" or tc.in_warm):
        # adapt's second backward per step and a branch beside the warm classifier are not
        # built for data-parallel gradients
        raise TlpruneError(
            "transfer.adapt and a warm phase with the auxiliary (warm_alpha > 0) run in one "
            "process: start without torchrun/accelerate launch, or leave them at their defaults"
        )
    state.wait_for_everyone()
    if not resume and state.is_main_process:
        start_workdir(cfg, work)
    state.wait_for_everyone()
    find_unused = coupling_of(tc).branch_in_prune  # its heads sit out steps where alpha is 0
    accelerator = make_accelerator(cfg.prune.prune.mixed_precision, work, find_unused=find_unused)
    return PruneRun(cfg, task, budget, tokenizer, aux_data, accelerator, work, resume)


def run_prune(
    cfg: RunConfig, resume: bool = False, on_step: Any = None, on_aux_step: Any = None
) -> RunResult:
    """Prune `cfg.model` for `cfg.data` under `cfg.prune` and save the small model."""
    started = time.perf_counter()
    if cfg.smoke:
        cfg = smoke_config(cfg)
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg)
    run = _prepare_run(cfg, out, resume)
    run.on_step, run.on_aux_step = on_step, on_aux_step
    for phase in PIPELINE:
        phase(run)
    run.seconds["total"] = time.perf_counter() - started
    report = prune_report(run)
    run.accelerator.end_training()
    if run.accelerator.is_main_process:
        logits, labels = run.test
        masks = run.phase.masks.masks
        _write_outputs(
            run.work, out, run.small, run.tokenizer, cfg, report, masks, logits, labels, run.budget
        )
    return RunResult(model=run.small, tokenizer=run.tokenizer, report=report, out_dir=out)


def prune_report(run: PruneRun) -> dict:
    """The run's report: data, sparsity achieved and expected, sizes, dev, test, times."""
    from tlprune.surgery import param_report

    cfg, phase, tc = run.cfg, run.phase, run.cfg.transfer
    logits, labels = run.test
    return {
        **base_report(cfg, run.task, run.budget, run.tokenizer),
        "sparsity": {
            "target": cfg.prune.sparsity,
            "achieved": phase.masks.sparsity,
            "expected_at_end": phase.expected_sparsity,
            "worst_gap_after_ramp": phase.worst_gap_after_ramp,
            "budget_params": phase.masks.budget,
            "kept_params": phase.masks.size,
            "notes": phase.masks.notes,
        },
        "params": {"dense": run.dense_report, "pruned": param_report(run.small)},
        "dev": {"prune": phase.best_dev, "final": run.final.best_dev},
        "test": classification_metrics(logits, labels, run.task.num_labels),
        "steps": {"prune": phase.steps, "prune_best": phase.best_step, "final": run.final.steps},
        "seconds": {k: round(v, 2) for k, v in run.seconds.items()},
        "warnings": phase.warnings,
        "distill": cfg.distill.enabled,
        "transfer": {
            "coupling": tc.coupling,
            "variant": tc.variant if coupling_of(tc).aux_stage else None,
            "aux": [
                {
                    "name": d.name,
                    "task": d.cfg.task,
                    "weight": d.cfg.weight,
                    "examples": len(d.rows),
                    "notes": d.notes,
                }
                for d in run.aux_data
            ],
            "aux_stage_steps": run.stage.steps if run.stage is not None else 0,
            "in_warm": tc.in_warm,
            "adapt": tc.adapt,
        },
        "processes": run.accelerator.num_processes,
    }


def base_report(cfg: RunConfig, task, budget, tokenizer) -> dict:
    """What every prune report starts with: the run, its data and budget."""
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "target": task.name,
        "labels": task.label_names,
        "seed": cfg.seed,
        "budget": {"size": budget.size, "train": len(budget.train), "dev": len(budget.dev)},
        "truncated_fraction": {
            "test": truncated_fraction(tokenizer, task.test, task.max_length),
        },
        "smoke": cfg.smoke,
        "notes": task.notes,
    }


def _write_outputs(work, out, small, tokenizer, cfg, report, masks, logits, labels, budget):
    from safetensors.torch import save_file

    from tlprune.surgery import save_pruned
    from tlprune.train.model_card import model_card

    final = work / "final"
    shutil.rmtree(final, ignore_errors=True)
    extra = {
        "prune_report.json": json.dumps(report, indent=2),
        "config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
        "README.md": model_card(report, cfg),
    }
    save_pruned(small, tokenizer, final, extra)
    save_file({k: v.contiguous().float() for k, v in masks.items()}, final / "masks.safetensors")
    save_predictions(final / "predictions.npz", logits, labels, budget)
    shutil.copyfile(work / "log.jsonl", final / "log.jsonl")
    if (work / "tlprune").is_dir():  # TensorBoard event files, when tensorboard is installed
        shutil.copytree(work / "tlprune", final / "tensorboard")
    if out.exists():
        shutil.rmtree(out)
    final.replace(out)
    shutil.rmtree(work)
