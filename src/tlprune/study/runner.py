"""`tlprune study`: run a spec's stages cell by cell, several at a time, resumably.

Every cell runs `tlprune prune|finetune` in its own process into DIR/runs/CELL (a killed cell
continues there with --resume), its output in DIR/logs/CELL.log; the store records it. On CPU
each of the `jobs` workers gets cores // jobs threads (two default-thread torch processes on
two cores slow each other several-fold); with GPUs, worker i sees GPU i mod n only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlprune.errors import ConfigError
from tlprune.study import store
from tlprune.study.spec import Cell, Stage, StudySpec


class CellFailed(Exception):
    """A cell's run exited non-zero; the message is its last log line."""


@dataclass
class StudyResult:
    out_dir: Path
    storage: str
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def cell_result(run_dir: Path) -> dict[str, Any] | None:
    """What the store keeps of a finished run folder (None when it is not finished)."""
    report = next(
        (run_dir / f for f in ("prune_report.json", "metrics.json") if (run_dir / f).is_file()),
        None,
    )
    if report is None:
        return None
    r = json.loads(report.read_text())
    dev = r["dev"].get("final", r["dev"]) if "accuracy" not in r["dev"] else r["dev"]
    out: dict[str, Any] = {
        "dir": str(run_dir),
        "dev": dev["accuracy"],
        "dev_loss": dev.get("loss"),
        "test": r["test"]["accuracy"],
        "test_macro_f1": r["test"].get("macro_f1"),
        "seconds": r.get("seconds", {}).get("total", r.get("total_seconds")),
        "achieved": r.get("sparsity", {}).get("achieved"),
        "expected_at_end": r.get("sparsity", {}).get("expected_at_end"),
    }
    preds = run_dir / "predictions.npz"
    if preds.is_file():
        p = np.load(preds)
        out["correct"] = (p["test_logits"].argmax(-1) == p["test_labels"]).astype(int).tolist()
    bench = run_dir / "bench.json"
    if bench.is_file():
        rows = json.loads(bench.read_text())["results"]
        big = [r for r in rows if r["backend"] == "eager" and r["batch"] > 1] or rows
        if big and "speedup" in big[-1]:
            out["speedup"] = big[-1]["speedup"]
    return out


def _env(slot: int, jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    gpus = _gpu_count()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    else:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


class _Runner:
    """The objective workers call: one trial runs one cell."""

    def __init__(self, study, spec: StudySpec, out: Path, jobs: int, smoke: bool):
        self.study, self.spec, self.out, self.jobs, self.smoke = study, spec, out, jobs, smoke
        self._slots = list(range(jobs))
        self._lock = threading.Lock()

    def __call__(self, trial) -> float:
        import optuna

        if "cell" not in trial.user_attrs:  # the queue emptied between our look and the take
            trial.set_user_attr("skipped", "no cell")
            raise optuna.TrialPruned()
        if not store.owns_cell(self.study, trial):
            trial.set_user_attr("skipped", "duplicate")
            raise optuna.TrialPruned()
        a = trial.user_attrs
        cell = Cell(a["cell"], a["stage"], a["axes"], a["flags"])
        with self._lock:
            slot = self._slots.pop(0)
        try:
            result = self.run(cell, slot)
        except CellFailed as exc:
            trial.set_user_attr("error", str(exc))
            raise
        finally:
            with self._lock:
                self._slots.append(slot)
        for k, v in result.items():
            trial.set_user_attr(k, v)
        return float(result["dev"])

    def run(self, cell: Cell, slot: int) -> dict[str, Any]:
        run_dir = self.out / "runs" / cell.name
        done = cell_result(run_dir)
        if done is not None:  # finished before its worker could record it
            return done
        args = cell.args(run_dir, self.smoke)
        if run_dir.with_name(run_dir.name + ".partial").is_dir() and cell.command == "prune":
            args.append("--resume")
        elif run_dir.exists():
            args.append("--overwrite")
        self._call(cell, args, slot)
        if self.spec.bench and cell.command == "prune":
            b = self.spec.bench
            bench = ["bench", str(run_dir), "--repeats", str(b.get("repeats", 10))]
            bench += ["--backends", ",".join(b.get("backends", ["eager"]))]
            bench += ["--json", str(run_dir / "bench.json")]
            self._call(cell, bench, slot, append=True)
        result = cell_result(run_dir)
        if result is None:
            raise CellFailed(f"{cell.name}: the run exited 0 but wrote no report")
        return result

    def _call(self, cell: Cell, args: list[str], slot: int, append: bool = False) -> None:
        log = self.out / "logs" / f"{cell.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a" if append else "w") as fh:
            fh.write(f"$ tlprune {' '.join(args)}\n")
            fh.flush()
            code = subprocess.call(
                [sys.executable, "-m", "tlprune", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=_env(slot, self.jobs),
            )
        if code != 0:
            lines = [x for x in log.read_text().splitlines() if x.strip()]
            raise CellFailed(f"exit {code}: {lines[-1] if lines else 'no output'} (see {log})")


def _worker(study, runner: _Runner, names: set[str], heartbeat: int) -> None:
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    while True:
        fail_stale_trials(study)
        trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("cell") in names]
        if any(t.state == TrialState.WAITING for t in trials):
            study.optimize(runner, n_trials=1, catch=(CellFailed,))
        elif any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(heartbeat)  # another worker's cell, or a dead one going stale
        else:
            return


def stage_winners(study, spec: StudySpec, stage: Stage) -> list[str]:
    """The `top` method values of stage `winners_from` by mean dev accuracy (baselines out)."""
    dev: dict[str, list[float]] = {}
    for t in store.completed(study).values():
        if t.user_attrs["stage"] == stage.winners_from:
            method = t.user_attrs["axes"][spec.method]
            if method not in spec.baselines:
                dev.setdefault(method, []).append(t.user_attrs["dev"])
    ranked = sorted(dev, key=lambda m: -float(np.mean(dev[m])))
    return ranked[: stage.top]


def run_study(
    spec: StudySpec,
    out: str | Path,
    jobs: int = 1,
    storage: str | None = None,
    smoke: bool = False,
    progress: bool = True,
    heartbeat: int = 30,
) -> StudyResult:
    """Run every stage of `spec` into `out`: finished cells are skipped, killed ones rerun,
    failed ones recorded with their error while the others go on."""
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    url = storage or store.default_url(out)
    study = store.open_store(spec.name, url, heartbeat)
    study.set_user_attr("spec", {**spec.raw, "name": spec.name})
    runner = _Runner(study, spec, out, jobs, smoke)
    for stage in spec.stages:
        winners = stage_winners(study, spec, stage) if stage.winners_from else None
        cells = spec.cells(stage, winners)
        store.enqueue_missing(study, cells)
        names = {c.name for c in cells}
        threads = [
            threading.Thread(target=_worker, args=(study, runner, names, heartbeat), daemon=True)
            for _ in range(jobs)
        ]
        for th in threads:
            th.start()
        bar = tqdm(total=len(cells), desc=f"study {stage.name}", unit="cell", disable=not progress)
        while any(th.is_alive() for th in threads):
            finished = len(names & set(store.completed(study))) + len(
                names & set(store.failures(study))
            )
            bar.update(finished - bar.n)
            time.sleep(1.0)
        for th in threads:
            th.join()
        bar.update(len(cells) - bar.n)
        bar.close()
    done, failed = store.completed(study), store.failures(study)
    return StudyResult(out, url, sorted(done), failed)
