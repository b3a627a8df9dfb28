"""A cache of finished dense auxiliary stages (the first half of a STILTs teacher).

The stage depends on the model, the auxiliary rows, its schedule and the seed, not on the
target's budget or the sparsity, so every run of a grid over targets, sparsities and recipes
that shares those can start from one stage. Entries live under the cache root, keyed by a hash
of everything the stage reads, including the source of the code that trains it, the library
versions and the device type, so that an upgrade or an edit never serves a stage the current
code would not train; they are written atomically and never change once written.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tlprune.paths import atomic_dir, atomic_write_text, cache_dir

VERSION = 3  # the key's layout; the stage's code is hashed itself (code_digest)
# the modules that build and train a stage; everything of tlprune they import is hashed too
STAGE_CODE = (
    "tlprune.train.dense_stage",
    "tlprune.train.aux_stage",
    "tlprune.transfer.branch",
    "tlprune.arch",
    "tlprune.models",
)
_ROOT = Path(__file__).resolve().parents[1]  # the tlprune package folder


def _origin(module: str) -> Path | None:
    """The source file of a tlprune module, found without importing it."""
    base = _ROOT.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking(test: ast.expr) -> bool:
    """Whether an `if` test is exactly `TYPE_CHECKING` (or `typing.TYPE_CHECKING`)."""
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _nodes(node: ast.AST):
    """Every node under `node`, except the body of an `if TYPE_CHECKING:` (never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child.test):
            yield from (n for c in child.orelse for n in (c, *_nodes(c)))
            continue
        yield child
        yield from _nodes(child)


def _imports(module: str, path: Path) -> set[str]:
    """The tlprune modules a module's source imports anywhere (lazy imports included), and the
    packages on the way (importing a.b.c runs a and a.b first)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule`
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if m.split(".")[0] == "tlprune"}


def stage_modules(roots: tuple[str, ...]) -> dict[str, Path]:
    """`roots` and every tlprune module they import, transitively, with their source files."""
    missing = [r for r in roots if _origin(r) is None]
    if missing:  # a renamed root would silently leave its code out of the key
        raise RuntimeError(
            f"stage cache: no source for {missing} (tlprune/transfer/stage_cache.py)"
        )
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _origin(module)
        if path is None:  # a name imported from a module, not a module
            continue
        seen[module] = path
        todo += sorted(_imports(module, path) - seen.keys())
    return seen


@functools.cache
def code_digest(roots: tuple[str, ...] = STAGE_CODE) -> str:
    """A hash of the source of the stage's modules (stage_modules): what decides how a stage
    is trained. Any edit there, comments included, retrains stages: safe before cheap."""
    h = hashlib.sha256()
    for module, path in sorted(stage_modules(roots).items()):
        h.update(module.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _libraries() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "accelerate", "tokenizers", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def _model_identity(name: str) -> dict:
    """A hub id as written; a local folder (an alias's package folder too) by its weight,
    config and vocabulary files' names, sizes and mtimes."""
    from tlprune.models import ALIASES, resolve_model

    path = Path(resolve_model(name) if name in ALIASES else name).expanduser()
    if not path.is_dir():
        return {"id": name}
    kept = {".safetensors", ".bin", ".json", ".txt", ".model"}
    files = sorted(p for p in path.iterdir() if p.suffix in kept)
    return {"dir": str(path.resolve()), "files": [(p.name, *_stat(p)) for p in files]}


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _rows_digest(rows: Any) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()


def stage_key(cfg: Any, label_names: list[str], aux_data: list, device: str) -> str:
    """The hash of everything a dense auxiliary stage reads, on a device type (cpu, cuda)."""
    tc = cfg.transfer
    parts = {
        "device": device,
        "version": VERSION,
        "code": code_digest(),
        "libraries": _libraries(),
        "model": _model_identity(cfg.model.name),
        "labels": list(label_names),
        "seed": tc.seed_of_stage(cfg.seed),
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


def began_under(work: Path, key: str) -> str | None:
    """The key the run's stage began under: recorded when it begins, kept across resumes, so
    that a stage resumed after an upgrade is not filed under the new code's key. None: the
    stage began before keys were recorded (kept out of the cache)."""
    path = work / "aux_stage.key"
    began = (work / "aux_stage").exists() or (work / "aux_checkpoints").exists()
    if began:  # trained in part or whole: by the code of the recorded key, or of an older one
        return path.read_text().strip() if path.is_file() else None
    atomic_write_text(path, key)  # nothing trained yet: this code trains all of it
    return key


def entry(key: str) -> Path:
    return cache_dir() / "aux-stages" / key


RESTORED = "restored-from-cache"  # in a run's stage folder: the stage was copied, not trained


def restore(key: str, stage_dir: Path) -> bool:
    """Copy a cached stage into `stage_dir` (the run's aux_stage folder); whether the run's
    stage came from the cache, now or before a resume."""
    if (stage_dir / "done.json").is_file():  # the run's own finished stage (a resume)
        return (stage_dir / RESTORED).is_file()
    src = entry(key)
    if not (src / "done.json").is_file():
        return False
    with atomic_dir(stage_dir, overwrite=True) as tmp:
        for f in src.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / RESTORED).write_text(key)
    return True


def store(key: str, stage_dir: Path) -> None:
    """Keep a finished stage for later runs (first writer wins)."""
    dst = entry(key)
    if (dst / "done.json").is_file() or not (stage_dir / "done.json").is_file():
        return
    try:
        with atomic_dir(dst) as tmp:
            for f in stage_dir.iterdir():
                if f.is_file() and f.name != RESTORED:
                    shutil.copy2(f, tmp / f.name)
    except OSError:  # another run stored it meanwhile (exists / not empty), or a full disk:
        pass  # the run itself is done either way
