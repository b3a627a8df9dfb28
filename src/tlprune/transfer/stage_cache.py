"""A cache of finished dense auxiliary stages (the first half of a STILTs teacher).

The stage depends on the model, the auxiliary rows, its schedule and the seed, not on the
target's budget or the sparsity, so every run of a grid over targets, sparsities and recipes
that shares those can start from one stage. Entries live under the cache root, keyed by a hash
of everything the stage reads; they are written atomically and never change once written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tlprune.paths import atomic_dir, cache_dir

VERSION = 2  # bump when the stage's training changes what the same inputs produce


def _model_identity(name: str) -> dict:
    """A hub id as written; a local folder by its weight files' names, sizes and mtimes."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return {"id": name}
    files = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".json"})
    return {"dir": str(path.resolve()), "files": [(p.name, *_stat(p)) for p in files]}


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _rows_digest(rows: Any) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()


def stage_key(cfg: Any, label_names: list[str], aux_data: list) -> str:
    """The hash of everything a dense auxiliary stage reads."""
    tc = cfg.transfer
    parts = {
        "version": VERSION,
        "model": _model_identity(cfg.model.name),
        "labels": list(label_names),
        "seed": cfg.seed,
        "smoke": cfg.smoke,
        "precision": cfg.prune.final.mixed_precision,
        "aux_stage": dataclasses.asdict(tc.aux_stage),
        "weights": list(tc.weights),
        "aux": [
            {
                "name": d.name,
                "cfg": dataclasses.asdict(d.cfg),
                "labels": list(d.label_names),
                "max_length": d.max_length,
                "rows": _rows_digest(d.rows),
            }
            for d in aux_data
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def entry(key: str) -> Path:
    return cache_dir() / "aux-stages" / key


def restore(key: str, stage_dir: Path) -> bool:
    """Copy a cached stage into `stage_dir` (the run's aux_stage folder); whether it did."""
    src = entry(key)
    if not (src / "done.json").is_file() or (stage_dir / "done.json").is_file():
        return False  # nothing cached, or the run's own finished stage (a resume)
    with atomic_dir(stage_dir, overwrite=True) as tmp:
        for f in src.iterdir():
            shutil.copy2(f, tmp / f.name)
    return True


def store(key: str, stage_dir: Path) -> None:
    """Keep a finished stage for later runs (first writer wins)."""
    dst = entry(key)
    if (dst / "done.json").is_file() or not (stage_dir / "done.json").is_file():
        return
    try:
        with atomic_dir(dst) as tmp:
            for f in stage_dir.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
    except OSError:  # another run stored it meanwhile (exists / not empty), or a full disk:
        pass  # the run itself is done either way
