"""Per-step metrics: a JSON-lines file always, plus Accelerate's trackers (TensorBoard, wandb,
MLflow) when the run's Accelerator was created with `log_with`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only log of dict rows; only the main process writes."""

    def __init__(self, path: Path | None, accelerator: Any):
        self.accelerator = accelerator
        self._fh = None
        if path is not None and accelerator.is_main_process:
            self._fh = open(path, "a")  # noqa: SIM115 - closed in close()

    def write(self, row: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        if self.accelerator.trackers and "step" in row:
            flat = {f"{row.get('phase', 'run')}/{k}": v for k, v in _scalars(row).items()}
            self.accelerator.log(flat, step=row["step"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in ("phase", "step"):
            continue
        if isinstance(v, dict):
            out.update(_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def make_accelerator(
    mixed_precision: str,
    project_dir: Path | None = None,
    grad_accum: int = 1,
    find_unused: bool = False,
):
    """An Accelerator that logs to TensorBoard when it is installed and a directory is given.
    `find_unused`: parameters may sit out a step (an auxiliary branch while its weight is 0),
    which DDP must be told on several processes."""
    import importlib.util

    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    use_tb = project_dir is not None and importlib.util.find_spec("tensorboard") is not None
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused else []
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        kwargs_handlers=handlers,
        log_with="tensorboard" if use_tb else None,
        project_dir=str(project_dir) if use_tb else None,
    )
    if use_tb:
        accelerator.init_trackers("tlprune")
    return accelerator
