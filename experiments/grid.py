"""A resumable grid of tlprune runs, several at a time.

Each cell is a name and the `tlprune` arguments that produce it under OUT/NAME. A finished cell
(its metrics.json or prune_report.json exists) is skipped, a killed one continues with
--resume, and a failed one is reported and left for the next invocation. Several workers may
share one folder: each cell is claimed by an exclusive-create file (delete stale `.claim`
files of killed workers before restarting). Cells start in the
order given, `jobs` at a time: on a CPU box give each job one thread (OMP_NUM_THREADS=1; two
default-thread torch processes on 2 cores slowed each step 8x); on a GPU several small runs
share the card.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Cell:
    name: str
    args: list[str]


def done(out: Path, name: str) -> bool:
    return any((out / name / f).is_file() for f in ("metrics.json", "prune_report.json"))


def claim(out: Path, name: str) -> bool:
    """Take cell `name` for this worker (an exclusive-create file), so that two workers on one
    folder never run the same cell; False when it is done or another worker holds it."""
    if done(out, name):
        return False
    try:
        fd = os.open(out / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def run_cell(cell: Cell, out: Path, env: dict[str, str]) -> bool:
    """Run (or resume) one cell unless another worker has it; output goes to OUT/NAME.log."""
    if not claim(out, cell.name):
        return True
    try:
        return _run(cell, out, env)
    finally:
        (out / f"{cell.name}.claim").unlink(missing_ok=True)


def _run(cell: Cell, out: Path, env: dict[str, str]) -> bool:
    resume = ["--resume"] if (out / f"{cell.name}.partial").is_dir() else []
    cmd = [sys.executable, "-m", "tlprune", *cell.args, "--out", str(out / cell.name), *resume]
    print(f"{time.strftime('%H:%M:%S')} start {cell.name}", flush=True)
    with open(out / f"{cell.name}.log", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    state = "done" if code == 0 else f"FAILED (exit {code}; see {out / cell.name}.log)"
    print(f"{time.strftime('%H:%M:%S')} {state} {cell.name}", flush=True)
    return code == 0


def run_grid(cells: list[Cell], out: Path, jobs: int = 1, only: str = ".") -> int:
    """Run the cells not yet done whose names match `only`; return how many failed."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if re.search(only, c.name) and not done(out, c.name)]
    print(f"{len(todo)} of {len(cells)} cells to run, {jobs} at a time", flush=True)
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = "1"
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(lambda c: run_cell(c, out, env), todo))
    return results.count(False)
