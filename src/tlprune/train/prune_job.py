"""The prune job: [teacher] -> warm fine-tune -> prune -> physical prune -> final fine-tune.

Work happens in `<out>.partial/` (teacher, warm model, checkpoints); `--resume` continues a
killed run from there. Only a finished run is renamed to `<out>`: a model directory that
`from_pretrained` loads, with its masks, config, report and model card.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tlprune.config import RunConfig, to_dict
from tlprune.data.collate import ClassificationCollator, truncated_fraction
from tlprune.data.metrics import classification_metrics
from tlprune.data.sources import load_task
from tlprune.data.split import draw_budget
from tlprune.errors import TlpruneError
from tlprune.models import load_classifier, load_tokenizer, resolve_model
from tlprune.paths import atomic_dir
from tlprune.train.checkpoint import CheckpointManager
from tlprune.train.evaluate import predict, save_predictions
from tlprune.train.finetune import check_out_path, make_loaders, smoke_train
from tlprune.train.loop import train_classifier
from tlprune.train.metrics_log import make_accelerator

SMOKE_PRUNE_STEPS = 4
CARRIED = "aux_branch.safetensors"  # in the warm model's directory, after warm-phase transfer


@dataclass
class PruneResult:
    """A finished prune run: the small model, its report and its directory."""

    model: Any
    tokenizer: Any
    report: dict
    out_dir: Path


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


def load_teacher(path: Path, label_names: list[str]):
    """The distillation teacher, checked against the task's labels."""
    from transformers import AutoModelForSequenceClassification

    try:
        teacher = AutoModelForSequenceClassification.from_pretrained(path).eval()
    except (OSError, ValueError) as exc:
        raise TlpruneError(f"cannot load the teacher {path}: {str(exc).splitlines()[0]}") from None
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if names != list(label_names):
        raise TlpruneError(
            f"the teacher {path} predicts {names}, the task has {list(label_names)}: "
            "give a teacher fine-tuned on this task"
        )
    return teacher


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


def run_prune(
    cfg: RunConfig, resume: bool = False, on_step: Any = None, on_aux_step: Any = None
) -> PruneResult:
    """Prune `cfg.model` for `cfg.data` under `cfg.prune` and save the small model."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env, set_seed
    from safetensors.torch import load_file

    from tlprune.arch import from_hf, unit_sizes
    from tlprune.gates import GateConfig, GateSet
    from tlprune.modeling import TlpruneForSequenceClassification
    from tlprune.surgery import param_report, prune_model
    from tlprune.train.aux_stage import run_aux_stage
    from tlprune.train.distill import Distiller
    from tlprune.train.prune_phase import (
        PrunePhaseResult,
        convergence_warnings,
        run_prune_phase,
    )
    from tlprune.transfer.aux import load_aux, unique_names
    from tlprune.transfer.branch import build_branch
    from tlprune.transfer.groups import copy_log_alphas, copy_weights

    started = time.perf_counter()
    if cfg.smoke:
        cfg = smoke_config(cfg)
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg)
    check_phases(cfg)
    if cfg.data.unlabelled:
        raise TlpruneError(
            "--unlabelled (data.unlabelled) is read by the fisher presets only: leave it out "
            "here, or give unlabelled text to a transfer preset as --aux mlm:SOURCE"
        )
    cfg.transfer.check_ready(cfg.prune)
    check_architecture(cfg.model.name)
    work = check_workdir(cfg, out, resume)
    task = load_task(cfg.data)
    budget = draw_budget(
        task.train["label"], cfg.data.budget, cfg.seed, cfg.data.dev_fraction, task.num_labels
    )
    aux_data = [load_aux(a, task, budget, cfg.seed) for a in cfg.transfer.aux]
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
    if cfg.transfer.coupling != "none" and state.num_processes > 1:
        # the auxiliary streams are not sharded and the branch's heads sit idle while alpha
        # is 0, which DDP rejects: one process until that is built
        raise TlpruneError(
            "transfer presets run in one process for now: start without torchrun/accelerate "
            "launch (or use --preset cofi for several processes)"
        )
    state.wait_for_everyone()
    if not resume and state.is_main_process:
        start_workdir(cfg, work)
    state.wait_for_everyone()
    accelerator = make_accelerator(cfg.prune.prune.mixed_precision, work)
    log_path = work / "log.jsonl"
    seconds: dict[str, float] = {}

    def loaders(phase: int, train_cfg):
        """Fresh seeded loaders per phase: a resumed run replays later phases identically."""
        set_seed(cfg.seed + phase)
        phase_cfg = dataclasses.replace(cfg, train=train_cfg, seed=cfg.seed + phase)
        return make_loaders(task, budget, tokenizer, phase_cfg, cfg.smoke)

    # -- teacher --------------------------------------------------------------------------------
    teacher = None
    if cfg.distill.enabled:
        t0 = time.perf_counter()
        tdir = Path(cfg.distill.teacher) if cfg.distill.teacher else work / "teacher"
        if not (tdir / "config.json").is_file():
            if cfg.distill.teacher:
                raise TlpruneError(f"teacher {tdir} has no config.json: give a model directory")
            dense = load_classifier(cfg.model.name, task.label_names)
            train_dl, dev_dl, _ = loaders(1, cfg.train)
            train_classifier(
                dense,
                train_dl,
                dev_dl,
                cfg.train,
                task.num_labels,
                accelerator,
                log_path,
                desc="teacher",
            )
            _save_main(accelerator, accelerator.unwrap_model(dense), tdir)
            accelerator.free_memory()
        teacher = load_teacher(tdir, task.label_names)
        seconds["teacher"] = time.perf_counter() - t0

    # -- auxiliary stage (sequential coupling: stilts, sequential) ------------------------------
    tc = cfg.transfer
    gate_cfg = GateConfig(
        kinds=list(cfg.prune.kinds),
        init_log_alpha=cfg.prune.init_log_alpha,
        log_alpha_min=cfg.prune.log_alpha_clamp[0],
        log_alpha_max=cfg.prune.log_alpha_clamp[1],
    )
    stage = None
    if tc.coupling == "sequential":
        base = from_hf(load_classifier(cfg.model.name, task.label_names))
        sizes = unit_sizes(base.config)
        branch = build_branch(base, None, aux_data, tokenizer, tc, gate_cfg, sizes, cfg.seed)
        stage = run_aux_stage(branch, cfg, accelerator, work, log_path, resume, on_aux_step)
        seconds["aux"] = stage.seconds
        del base, branch

    # -- warm fine-tune -------------------------------------------------------------------------
    t0 = time.perf_counter()
    warm_dir = work / "warm"
    fixed = stage is not None and stage.masks is not None and tc.variant == "fixed_masks"
    carried: dict = {}  # the auxiliary branch's heads after a warm phase with transfer
    if (warm_dir / "config.json").is_file():
        model = TlpruneForSequenceClassification.from_pretrained(warm_dir)
    else:
        set_seed(cfg.seed)  # the new head's initialisation follows the run's seed
        model = from_hf(load_classifier(cfg.model.name, task.label_names))
        if stage is not None:
            copy_weights(stage.encoder, model.tlprune, tc.weights)
        if not fixed:  # with A's masks fixed, T trains only as the small model (final phase)
            warm_branch = None
            if tc.in_warm:  # the branch trains beside T already; the prune phase takes it over
                warm_branch = build_branch(
                    model, None, aux_data, tokenizer, tc, None, unit_sizes(model.config), cfg.seed
                )
            train_dl, dev_dl, _ = loaders(2, cfg.prune.warm)
            train_classifier(
                model,
                train_dl,
                dev_dl,
                cfg.prune.warm,
                task.num_labels,
                accelerator,
                log_path,
                desc="warm",
                branch=warm_branch,
            )
            model = accelerator.unwrap_model(model)
            if warm_branch is not None:
                carried = {CARRIED: warm_branch.carried_state()}
                del warm_branch  # the prune phase builds its own branch and loads this state
        _save_main(accelerator, model, warm_dir, carried)
        del carried
        accelerator.free_memory()
    seconds["warm"] = time.perf_counter() - t0
    dense_report = param_report(model)

    # -- prune ----------------------------------------------------------------------------------
    sizes = unit_sizes(model.config)
    if fixed:
        phase = PrunePhaseResult(
            masks=stage.masks,
            best_dev={},
            best_step=0,
            steps=0,
            expected_sparsity=stage.expected_sparsity,
            worst_gap_after_ramp=None,  # the auxiliary stage's own ramp: not tracked here
            target=tc.aux_sparsity or cfg.prune.sparsity,
            seconds=0.0,
            # A's masks are the model's: say when A's constraint had not converged
            warnings=convergence_warnings(
                stage.expected_sparsity, cfg.prune.sparsity, "transfer.aux_stage steps"
            ),
        )
    else:
        gates = GateSet(gate_cfg, sizes, seed=cfg.seed)
        if stage is not None and stage.gates is not None:  # reprune: A's log-alphas as T's start
            copy_log_alphas(stage.gates, gates, tc.masks)
        distiller = None
        if teacher is not None:
            distiller = Distiller(
                cfg.distill,
                model.config.hidden_size,
                teacher.config.hidden_size,
                teacher.config.num_hidden_layers,
            )
        branch = None
        if tc.coupling in ("shared", "soft"):
            branch = build_branch(model, gates, aux_data, tokenizer, tc, gate_cfg, sizes, cfg.seed)
            if tc.in_warm:
                if not (warm_dir / CARRIED).is_file():
                    raise TlpruneError(
                        f"{warm_dir} has no {CARRIED} (the warm phase's auxiliary branch): delete "
                        f"{warm_dir} and resume to redo the warm phase"
                    )
                branch.load_carried(load_file(warm_dir / CARRIED))
            if accelerator.is_main_process:
                print(branch.memory_note(), file=sys.stderr)
        collate = ClassificationCollator(tokenizer, task.max_length)
        _, dev_dl, _ = loaders(3, cfg.prune.prune)
        phase = run_prune_phase(
            model,
            gates,
            task.train.select(budget.train),
            collate,
            dev_dl,
            cfg,
            task.num_labels,
            accelerator,
            CheckpointManager(work / "checkpoints"),
            resume,
            teacher,
            distiller,
            log_path,
            on_step,
            branch,
        )
        seconds["prune"] = phase.seconds
        accelerator.free_memory()

    # -- surgery and final fine-tune -------------------------------------------------------------
    t0 = time.perf_counter()
    small = prune_model(accelerator.unwrap_model(model).cpu(), phase.masks.masks)
    train_dl, dev_dl, test_dl = loaders(4, cfg.prune.final)
    loop = train_classifier(
        small,
        train_dl,
        dev_dl,
        cfg.prune.final,
        task.num_labels,
        accelerator,
        log_path,
        desc="final",
    )
    small = accelerator.unwrap_model(small)
    seconds["final"] = time.perf_counter() - t0

    logits, labels = predict(small, accelerator.prepare(test_dl), accelerator, desc="test")
    test = classification_metrics(logits, labels, task.num_labels)
    small_report = param_report(small)
    seconds["total"] = time.perf_counter() - started
    report = {
        **base_report(cfg, task, budget, tokenizer),
        "sparsity": {
            "target": cfg.prune.sparsity,
            "achieved": phase.masks.sparsity,
            "expected_at_end": phase.expected_sparsity,
            "worst_gap_after_ramp": phase.worst_gap_after_ramp,
            "budget_params": phase.masks.budget,
            "kept_params": phase.masks.size,
            "notes": phase.masks.notes,
        },
        "params": {"dense": dense_report, "pruned": small_report},
        "dev": {"prune": phase.best_dev, "final": loop.best_dev},
        "test": test,
        "steps": {"prune": phase.steps, "prune_best": phase.best_step, "final": loop.steps},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "warnings": phase.warnings,
        "distill": cfg.distill.enabled,
        "transfer": {
            "coupling": tc.coupling,
            "variant": tc.variant if tc.coupling == "sequential" else None,
            "aux": [
                {
                    "name": d.name,
                    "task": d.cfg.task,
                    "weight": d.cfg.weight,
                    "examples": len(d.rows),
                    "notes": d.notes,
                }
                for d in aux_data
            ],
            "aux_stage_steps": stage.steps if stage is not None else 0,
            "in_warm": tc.in_warm,
            "adapt": tc.adapt,
        },
        "processes": accelerator.num_processes,
    }
    accelerator.end_training()
    if accelerator.is_main_process:
        _write_outputs(
            work, out, small, tokenizer, cfg, report, phase.masks.masks, logits, labels, budget
        )
    return PruneResult(model=small, tokenizer=tokenizer, report=report, out_dir=out)


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


def _save_main(accelerator, model, path: Path, tensors: dict | None = None) -> None:
    """Save a model directory (and `tensors`: file name -> state) atomically from the main
    process; everyone waits for it."""
    from safetensors.torch import save_file

    if accelerator.is_main_process:
        with atomic_dir(path, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            for name, state in (tensors or {}).items():
                save_file(state, tmp / name)
    accelerator.wait_for_everyone()


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
