"""`tlprune study`: run a spec's stages cell by cell, several at a time, resumably.

Every cell runs `tlprune prune|finetune` in its own process into DIR/runs/CELL (a killed cell
continues there with --resume), its output in DIR/logs/CELL.log; the store records it. On CPU
each of the `jobs` workers gets cores // jobs threads (two default-thread torch processes on
two cores slow each other several-fold); with GPUs, worker i sees GPU i mod n only.
"""

from __future__ import annotations

import contextlib
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

import tlprune.study.store as store
from tlprune.errors import ConfigError
from tlprune.study.spec import Cell, Stage, StudySpec


class CellFailed(Exception):
    """A cell's run exited non-zero; the message is its last log line."""


@dataclass
class StudyResult:
    out_dir: Path
    storage: str
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)  # e.g. a worker crashed before them


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
        "worst_gap": r.get("sparsity", {}).get("worst_gap_after_ramp"),
    }
    if "selection" in r:  # what each checkpoint-selection rule kept on the same trajectory
        out["selection"] = {
            rule: {"step": c["step"], "dev": c["dev"]["accuracy"], "test": c["test"]["accuracy"]}
            for rule, c in r["selection"]["rules"].items()
        }
    preds = run_dir / "predictions.npz"
    if preds.is_file():
        p = np.load(preds)
        out["correct"] = (p["test_logits"].argmax(-1) == p["test_labels"]).astype(int).tolist()
    bench = run_dir / "bench.json"
    if bench.is_file():
        rows = json.loads(bench.read_text())["results"]
        big = [r for r in rows if r["backend"] == "eager" and r["batch"] > 1]
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
        # Optuna pops a waiting trial by reading it, then marking it running; two threads of
        # one process on SQLite can both read it before either marks it, and the second then
        # waits on the cell lock for the whole run. One thread at a time takes a trial.
        self._taking = threading.Lock()
        self._holds = threading.local()
        self.record_only = False  # never start a run (cells are filtered to finished ones)

    def take(self) -> None:
        """Before `study.optimize`: this thread alone pops a waiting trial."""
        self._taking.acquire()
        self._holds.taking = True

    def taken(self) -> None:
        """Once the trial is this thread's (or optimize returned): the next thread may pop."""
        if getattr(self._holds, "taking", False):
            self._holds.taking = False
            self._taking.release()

    def __call__(self, trial) -> float:
        import optuna

        self.taken()
        if "cell" not in trial.user_attrs:  # the queue emptied between our look and the take
            trial.set_user_attr("skipped", "no cell")
            raise optuna.TrialPruned()
        if not store.owns_cell(self.study, trial):
            trial.set_user_attr("skipped", "duplicate")
            raise optuna.TrialPruned()
        a = trial.user_attrs
        cell = Cell(a["cell"], a["stage"], a["axes"], a["flags"])
        before = [t for t in store.trials_by_cell(self.study).get(cell.name, [])
                  if t.number < trial.number]  # fmt: skip
        # the last attempt's worker died (failed without an error): continue its run
        retry = (
            bool(before)
            and before[-1].state.name == "FAIL"
            and "error" not in before[-1].user_attrs
        )
        with self._lock:
            slot = self._slots.pop(0)
        try:
            with _cell_lock(self.out, cell.name) as lock:  # one run per cell folder
                result = self.run(cell, slot, resume=retry, lock=lock)
        except CellFailed as exc:
            trial.set_user_attr("error", str(exc))
            raise
        except Exception as exc:  # a bug or a broken file: recorded, the worker goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise CellFailed(str(exc)) from exc
        finally:
            with self._lock:
                self._slots.append(slot)
        for k, v in result.items():
            trial.set_user_attr(k, v)
        return float(result["dev"])

    def run(
        self, cell: Cell, slot: int, resume: bool = True, lock: int | None = None
    ) -> dict[str, Any]:
        """Run (or continue, or just finish) one cell; its metrics."""
        run_dir = self.out / "runs" / cell.name
        done = cell_result(run_dir)
        if done is None:
            args = cell.args(run_dir, self.smoke)
            partial = run_dir.with_name(run_dir.name + ".partial")
            if resume and partial.is_dir() and cell.command == "prune":
                args.append("--resume")  # a killed run continues from its checkpoint
            elif run_dir.exists() or partial.exists():
                args.append("--overwrite")  # a failed run (the spec may have changed) restarts
            self._call(cell, args, slot, lock)
        if self.spec.bench and cell.command == "prune" and not (run_dir / "bench.json").is_file():
            b = self.spec.bench
            bench = ["bench", str(run_dir), "--repeats", str(b.get("repeats", 10))]
            bench += ["--backends", ",".join(b.get("backends", ["eager"]))]
            bench += ["--json", str(run_dir / "bench.json")]
            self._call(cell, bench, slot, lock)
        result = cell_result(run_dir)
        if result is None:
            raise CellFailed(f"{cell.name}: the run exited 0 but wrote no report")
        return result

    def _call(self, cell: Cell, args: list[str], slot: int, lock: int | None = None) -> None:
        """One `tlprune` process; its output appended to the cell's log (one header a start).
        The process inherits the cell lock: if this worker dies, the lock lasts until the run
        itself ends, so a retry never runs beside an orphaned run."""
        if self.record_only:
            raise CellFailed(f"{cell.name}: not finished, and --record-only runs nothing")
        log = self.out / "logs" / f"{cell.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            start = fh.tell()
            fh.write(f"$ tlprune {' '.join(args)}\n")
            fh.flush()
            code = subprocess.call(
                [sys.executable, "-m", "tlprune", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=_env(slot, self.jobs),
                pass_fds=(lock,) if lock is not None else (),
            )
        if code != 0:
            with open(log) as fh:
                fh.seek(start)
                lines = [x for x in fh.read().splitlines() if x.strip()]
            raise CellFailed(f"exit {code}: {lines[-1] if lines else 'no output'} (see {log})")


@contextlib.contextmanager
def _cell_lock(out: Path, name: str):
    """An exclusive lock on the cell's folder for the life of its run: two workers that took
    the same trial (SQLite can hand one waiting trial to two connections) or two trials of one
    cell never run it at once; the second waits, then finds it finished."""
    import fcntl

    path = out / "runs" / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh.fileno()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def handed_out_twice(exc: Exception) -> bool:
    """Whether Optuna refused to record a trial because another worker already finished it
    (SQLite can hand one waiting trial to two workers; the message differs by code path)."""
    from optuna.exceptions import UpdateFinishedTrialError

    return isinstance(exc, UpdateFinishedTrialError) or "Cannot tell a COMPLETE trial" in str(exc)


def _worker(study, runner: _Runner, names: set[str], heartbeat: int) -> None:
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    while True:
        fail_stale_trials(study)
        trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("cell") in names]
        if any(t.state == TrialState.WAITING for t in trials):
            runner.take()
            try:
                study.optimize(runner, n_trials=1, catch=(CellFailed,))
            except Exception as exc:  # e.g. the store said another worker finished it
                if handed_out_twice(exc):
                    continue  # the other worker finished its cell; the lock kept it single
                print(f"study worker: {type(exc).__name__}: {exc}", file=sys.stderr)
            finally:
                runner.taken()
        elif any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(heartbeat)  # another worker's cell, or a dead one going stale
        else:
            return


def stage_winners(study, spec: StudySpec, stage: Stage) -> list[str]:
    """The `top` methods of stage `winners_from` by mean dev accuracy (baselines out), over
    the cells every candidate finished (paired: the same targets, seeds, other axes)."""
    dev: dict[str, dict[tuple, float]] = {}
    for t in store.completed(study).values():
        if t.user_attrs["stage"] == stage.winners_from:
            axes = t.user_attrs["axes"]
            method = axes[spec.method]
            if method not in spec.baselines:
                key = tuple(sorted((a, v) for a, v in axes.items() if a != spec.method))
                dev.setdefault(method, {})[key] = t.user_attrs["dev"]
    if not dev:
        return []
    common = set.intersection(*(set(d) for d in dev.values()))
    if any(len(d) != len(common) for d in dev.values()):
        print(
            f"study: stage {stage.name!r} ranks the recipes of {stage.winners_from!r} on the "
            f"{len(common)} cells all of them finished",
            file=sys.stderr,
        )
    ranked = sorted(dev, key=lambda m: -float(np.mean([dev[m][k] for k in common] or [0.0])))
    return ranked[: stage.top]


def run_study(
    spec: StudySpec,
    out: str | Path,
    jobs: int = 1,
    storage: str | None = None,
    smoke: bool = False,
    progress: bool = True,
    heartbeat: int = 30,
    record_only: bool = False,
) -> StudyResult:
    """Run every stage of `spec` into `out`: finished cells are skipped, killed ones rerun,
    failed ones recorded with their error while the others go on. `record_only`: run nothing;
    record the cells whose run folders under OUT/runs are finished (copied from another
    machine, or committed results), and leave the others for a later run."""
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    url = storage or store.default_url(out)
    study = store.open_store(spec.name, url, heartbeat)
    study.set_user_attr("spec", {**spec.raw, "name": spec.name})
    runner = _Runner(study, spec, out, jobs, smoke)
    if record_only:
        runner.record_only = True
    for stage in spec.stages:
        winners = stage_winners(study, spec, stage) if stage.winners_from else None
        cells = spec.cells(stage, winners)
        if record_only:
            cells = [c for c in cells if cell_result(out / "runs" / c.name) is not None]
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
    wanted = {
        c.name
        for st in spec.stages
        for c in spec.cells(st, stage_winners(study, spec, st) if st.winners_from else None)
    }
    result = StudyResult(out, url, sorted(done), failed)
    result.not_run = sorted(wanted - set(done) - set(failed))
    return result
