"""The results store of a study: an Optuna study on an RDB storage (SQLite by default).

Each cell is one Optuna trial, enqueued with the cell in its user attributes; workers take
waiting trials (`study.optimize`), send heartbeats while a cell runs, and a trial whose worker
died is failed after the grace period and enqueued again (Optuna's
RetryHeartbeatStaleTrialCallback). A finished trial holds the cell's metrics, so a report needs
the store only. Point workers on several machines at one server database (`--storage
postgresql://...`) and they share the grid.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from tlprune.errors import ConfigError
from tlprune.study.spec import Cell

ACTIVE = ("WAITING", "RUNNING", "COMPLETE")


def default_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_store(
    name: str, url: str, heartbeat: int = 30, grace: int | None = None, create: bool = True
):
    """The Optuna study `name` on storage `url` (created if missing and `create`)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(logging.WARNING)
    # heartbeats and their retry callback are marked experimental; they are what we rely on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # several workers write to one file: wait for the lock
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    last: Exception | None = None
    for attempt in range(5):  # workers starting together race to create the tables
        try:
            storage = RDBStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=grace or 4 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                **kwargs,
            )
            if not create:
                return optuna.load_study(study_name=name, storage=storage)
            return optuna.create_study(
                study_name=name, storage=storage, direction="maximize", load_if_exists=True
            )
        except KeyError:
            raise ConfigError(f"the store {url} holds no study {name!r}") from None
        except Exception as exc:  # a bad URL, an unreachable server, or the race above
            last = exc
            time.sleep(0.5 * (attempt + 1))
    raise ConfigError(f"cannot open the study store {url}: {str(last).splitlines()[0]}")


def trials_by_cell(study) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        if "cell" in t.user_attrs:
            out.setdefault(t.user_attrs["cell"], []).append(t)
    return out


def enqueue_missing(study, cells: list[Cell]) -> int:
    """Enqueue every cell that has no waiting, running or finished trial; return how many."""
    have = trials_by_cell(study)
    n = 0
    for c in cells:
        for t in have.get(c.name, []):
            if t.state.name == "COMPLETE" and t.user_attrs.get("flags") != c.flags:
                raise ConfigError(
                    f"cell {c.name} of this store ran with other flags than the spec now gives "
                    f"({t.user_attrs.get('flags')}): use a new --out (or --storage) for a "
                    "changed spec"
                )
        if any(t.state.name in ACTIVE for t in have.get(c.name, [])):
            continue
        attrs = {"cell": c.name, "stage": c.stage, "axes": c.axes, "flags": c.flags}
        study.enqueue_trial({}, user_attrs=attrs)
        n += 1
    return n


def owns_cell(study, trial) -> bool:
    """Whether `trial` should run its cell: no other trial of the cell is finished, and none
    running started before it (ties: the lower number). Two workers that took duplicates
    both see both, and exactly one goes on."""
    name = trial.user_attrs["cell"]
    me = (trial.datetime_start, trial.number)
    for t in trials_by_cell(study).get(name, []):
        if t.number == trial.number:
            continue
        if t.state.name == "COMPLETE":
            return False
        if t.state.name == "RUNNING" and t.datetime_start and (t.datetime_start, t.number) < me:
            return False
    return True


def completed(study) -> dict[str, Any]:
    """cell name -> its finished trial (the first, should duplicates exist)."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=None):
        if t.state.name == "COMPLETE" and "cell" in t.user_attrs:
            out.setdefault(t.user_attrs["cell"], t)
    return out


def failures(study) -> dict[str, str]:
    """cell name -> the error of its last failed trial, for cells that never finished."""
    done = completed(study)
    pending = {t.user_attrs.get("cell") for t in study.get_trials(deepcopy=False)
               if t.state.name in ("WAITING", "RUNNING")}  # fmt: skip
    out: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("cell")
        if name and name not in done and name not in pending and t.state.name == "FAIL":
            out[name] = t.user_attrs.get("error", "worker lost (no heartbeat)")
    return out
