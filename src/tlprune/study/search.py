"""`tlprune study SPEC --search N`: N trials of Optuna's TPE over the spec's `search.space`,
scored on mean dev accuracy over `search.seeds` (never test); the best configuration is
written as a config file that `tlprune prune --config` takes.

    search:
      base: {preset: cofi}          # flags of the searched cell (on top of `fixed`)
      seeds: [0]
      space:
        prune.gate_lr: {low: 0.005, high: 0.1, log: true}
        prune.prune.max_steps: {choices: [300, 600]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

import tlprune.study.store as store
from tlprune.errors import ConfigError
from tlprune.paths import atomic_write_text
from tlprune.study.spec import Cell, StudySpec, _as_flags, _merge_flags


def _suggest(trial, key: str, dist: dict[str, Any]) -> Any:
    if "choices" in dist:
        return trial.suggest_categorical(key, list(dist["choices"]))
    if "low" not in dist or "high" not in dist:
        raise ConfigError(f"search.space.{key} needs low and high, or choices")
    low, high = dist["low"], dist["high"]
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(key, low, high, log=bool(dist.get("log")))
    return trial.suggest_float(key, float(low), float(high), log=bool(dist.get("log")))


def run_search(
    spec: StudySpec,
    out: str | Path,
    trials: int,
    jobs: int = 1,
    storage: str | None = None,
    smoke: bool = False,
    heartbeat: int = 30,
) -> Path:
    """Run `trials` more search trials; write OUT/best-config.yaml and return its path."""
    import optuna

    from tlprune.study.runner import CellFailed, _Runner

    cfg = spec.search
    if not cfg or not cfg.get("space"):
        raise ConfigError("--search needs a `search:` section with a `space` in the spec")
    if trials < 1:
        raise ConfigError(f"--search must be >= 1, got {trials}")
    base = _merge_flags(spec.fixed, _as_flags("search.base", cfg.get("base", {})))
    seeds = [int(s) for s in cfg.get("seeds", [0])]
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    study = store.open_store(f"{spec.name}-search", storage or store.default_url(out), heartbeat)
    # seeded by how many trials exist: a second `--search N` continues, it does not repeat
    study.sampler = optuna.samplers.TPESampler(seed=len(study.trials))
    runner = _Runner(study, spec, out, jobs, smoke)

    def objective(trial) -> float:
        params = {k: _suggest(trial, k, d) for k, d in cfg["space"].items()}
        overrides = [f"{k}={v}" for k, v in params.items()]
        devs = []
        for seed in seeds:
            flags = _merge_flags(base, {"seed": seed, "overrides": overrides})
            cell = Cell(f"search-{trial.number}-s{seed}", "search", {}, flags)
            with runner._lock:
                slot = runner._slots.pop(0)
            try:
                result = runner.run(cell, slot)
            except CellFailed as exc:
                trial.set_user_attr("error", str(exc))
                raise
            finally:
                with runner._lock:
                    runner._slots.append(slot)
            devs.append(result["dev"])
        trial.set_user_attr("dev_per_seed", devs)
        return float(np.mean(devs))

    study.optimize(objective, n_trials=trials, n_jobs=jobs, catch=(CellFailed,))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        raise ConfigError("no search trial finished: see the logs under " + str(out / "logs"))
    best = study.best_trial
    # the best trial's own resolved config (fixed flags, base flags, overrides and the searched
    # values), less what belongs to one run: a config file `tlprune prune --config` takes as is
    resolved = out / "runs" / f"search-{best.number}-s{seeds[0]}" / "config.yaml"
    config = yaml.safe_load(resolved.read_text())
    for key in ("out", "seed", "smoke", "overwrite"):
        config.pop(key, None)
    text = (
        f"# best of {len(done)} search trials of {spec.name} on dev accuracy "
        f"(mean over seeds {seeds}): {100 * best.value:.1f} %; searched: "
        f"{', '.join(f'{k}={v}' for k, v in best.params.items())}\n" + yaml.safe_dump(config)
    )
    path = out / "best-config.yaml"
    atomic_write_text(path, text)
    return path
