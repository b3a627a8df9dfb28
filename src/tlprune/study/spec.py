"""Study specs: named axes whose product is a grid of runs, and stages that narrow it.

A spec (YAML) declares `fixed` flags for every cell, `axes` (each a list of values of one run
flag, or a mapping of named variants, each a dict of flags), the `method` axis the report
compares (default: the first variant axis), its `baselines`, optional `questions` (how, what,
when: which methods to compare with which reference) and `stages`: each stage restricts axes
(`only`) and may keep, of the method axis, only the baselines and the `top` methods of an
earlier stage by mean dev accuracy (`winners`). A cell's `teacher` may be `cell:RECIPE`: the
run folder of the cell that differs from it only in the method axis, where it is RECIPE (the
dense fine-tune of the same target and seed, say), run in an earlier stage. Every mistake is
one ConfigError line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlprune.errors import ConfigError

# run flags a cell may set, and the CLI option each becomes
SCALAR_FLAGS = {"preset", "model", "target", "budget", "sparsity", "seed", "teacher"}
LIST_FLAGS = {"aux", "unlabelled", "overrides"}
FLAGS = SCALAR_FLAGS | LIST_FLAGS
SHORT = {"seed": "s", "sparsity": "sp", "budget": "b"}
CELL_REF = "cell:"  # a teacher that is another cell of the study: cell:RECIPE in the spec


@dataclass
class Stage:
    name: str
    only: dict[str, list[str]] = field(default_factory=dict)  # axis -> value names kept
    winners_from: str | None = None  # keep the top methods of this earlier stage
    top: int = 1


@dataclass
class Cell:
    """One run: its name (also its folder), stage, axis values and flags."""

    name: str
    stage: str
    axes: dict[str, str]
    flags: dict[str, Any]

    @property
    def command(self) -> str:
        return "finetune" if self.flags.get("preset") == "finetune" else "prune"

    def args(self, out: Path, smoke: bool = False) -> list[str]:
        """`tlprune` arguments that run this cell into `out`."""
        f = self.flags
        args = [self.command]
        for key in ("model", "target", "budget", "seed"):
            if key in f:
                args += [f"--{key}", str(f[key])]
        if self.command == "prune":
            for key in ("preset", "sparsity", "teacher"):
                if key in f:
                    args += [f"--{key}", str(_resolve(f[key], out))]
            for key in ("aux", "unlabelled"):
                for v in f.get(key, []):
                    args += [f"--{key}", str(v)]
        args += ["--out", str(out)]
        if smoke:
            args.append("--smoke")
        return args + [str(o) for o in f.get("overrides", [])]


@dataclass
class StudySpec:
    name: str
    fixed: dict[str, Any]
    axes: dict[str, dict[str, dict[str, Any]]]  # axis -> value name -> flags
    method: str
    baselines: list[str]
    questions: dict[str, dict[str, Any]]
    stages: list[Stage]
    bench: dict[str, Any] | None = None
    search: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # as written (the store keeps it)

    def cells(self, stage: Stage, winners: list[str] | None = None) -> list[Cell]:
        """The stage's cells in axis order (later axes vary fastest), duplicates dropped."""
        values = {a: list(v) for a, v in self.axes.items()}
        for axis, kept in stage.only.items():
            values[axis] = [v for v in values[axis] if v in kept]
        if winners is not None:
            keep = set(self.baselines) | set(winners)
            values[self.method] = [v for v in values[self.method] if v in keep]
        combos: list[dict[str, str]] = [{}]
        for axis, names in values.items():
            combos = [{**c, axis: n} for c in combos for n in names]
        cells, seen = [], set()
        for combo in combos:
            flags = self._flags(combo)
            name = _cell_name(combo, flags, self.axes)
            if name not in seen:
                seen.add(name)
                ref = flags.get("teacher")
                if isinstance(ref, str) and ref.startswith(CELL_REF):  # cell:RECIPE -> its cell
                    twin = {**combo, self.method: ref[len(CELL_REF) :]}
                    flags["teacher"] = CELL_REF + _cell_name(twin, self._flags(twin), self.axes)
                cells.append(Cell(name, stage.name, combo, flags))
        return cells

    def _flags(self, combo: dict[str, str]) -> dict[str, Any]:
        return _merge_flags(self.fixed, *(self.axes[a][n] for a, n in combo.items()))


def _resolve(value: Any, out: Path) -> Any:
    """A `cell:NAME` teacher is the folder of cell NAME beside this cell's folder `out`."""
    if isinstance(value, str) and value.startswith(CELL_REF):
        return out.parent / value[len(CELL_REF) :]
    return value


def _merge_flags(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = [*out.get(k, []), *v] if k == "overrides" else v
    return out


def _cell_name(combo: dict[str, str], flags: dict[str, Any], axes: dict) -> str:
    parts = []
    for axis, name in combo.items():
        if flags.get("preset") == "finetune" and axis == "sparsity":
            continue  # a dense run has no sparsity: one cell serves every sparsity
        parts.append(f"{SHORT[axis]}{name}" if axis in SHORT else name)
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", "_".join(parts))


def _as_flags(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of run flags, got {value!r}")
    unknown = sorted(set(value) - FLAGS)
    if unknown:
        raise ConfigError(f"{where}: unknown flag(s) {unknown}; a cell takes {sorted(FLAGS)}")
    out = dict(value)
    for k in LIST_FLAGS & set(out):
        if not isinstance(out[k], list):
            out[k] = [out[k]]
    return out


def _axis(name: str, raw: Any) -> dict[str, dict[str, Any]]:
    if name in SCALAR_FLAGS:
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"axis {name!r} needs a non-empty list of values")
        return {str(v): {name: v} for v in raw}
    if name in LIST_FLAGS:
        raise ConfigError(f"axis {name!r}: make it a named axis of variants ({{name: {{...}}}})")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"unknown axis {name!r}: an axis is a run flag ({sorted(SCALAR_FLAGS)}) with a list "
            "of values, or a mapping of named variants, each a dict of run flags"
        )
    return {str(k): _as_flags(f"axes.{name}.{k}", v) for k, v in raw.items()}


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a spec file."""
    from tlprune.config import load_yaml

    return parse_spec(load_yaml(path, "study spec", "tlprune study"), Path(path).stem)


def parse_spec(raw: dict[str, Any], default_name: str = "study", check: bool = True) -> StudySpec:
    """A StudySpec from a spec's YAML mapping; `check`: its presets and targets exist here
    (a report of a finished study skips that: it reads the store only)."""
    known = {"name", "fixed", "axes", "method", "baselines", "questions", "stages", "bench"}
    known |= {"search", "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown spec key(s) {unknown}; a spec has {sorted(known)}")
    fixed = _as_flags("fixed", raw.get("fixed", {}))
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise ConfigError("the spec declares no axes: the grid is empty")
    axes = {str(a): _axis(str(a), v) for a, v in axes_raw.items()}
    variant_axes = [a for a in axes if a not in SCALAR_FLAGS]
    method = raw.get("method") or (variant_axes[0] if variant_axes else next(iter(axes)))
    if method not in axes:
        raise ConfigError(f"method axis {method!r} is not one of the axes {list(axes)}")
    baselines = [str(b) for b in raw.get("baselines", [])]
    _check_values("baselines", baselines, axes[method])
    questions = raw.get("questions") or {}
    for q, body in questions.items():
        if not isinstance(body, dict) or "against" not in body or "compare" not in body:
            raise ConfigError(f"question {q!r} needs `compare: [methods]` and `against: method`")
        _check_values(f"questions.{q}", [*body["compare"], body["against"]], axes[method])
    stages = _stages(raw.get("stages") or [{"name": "all"}], axes, method)
    for where, flags in [("fixed", fixed)] + [
        (f"axes.{a}.{n}", f) for a, values in axes.items() for n, f in values.items()
    ]:
        ref = flags.get("teacher")
        if isinstance(ref, str) and ref.startswith(CELL_REF):
            _check_values(f"{where}.teacher", [ref[len(CELL_REF) :]], axes[method])
    spec = StudySpec(
        str(raw.get("name") or default_name), fixed, axes, method, baselines, questions,
        stages, raw.get("bench"), raw.get("search"), raw,
    )  # fmt: skip
    if check:
        _check_cells(spec)
    return spec


def _check_values(where: str, names: list[str], axis: dict) -> None:
    missing = [n for n in names if n not in axis]
    if missing:
        raise ConfigError(f"{where}: {missing} not among the method axis values {list(axis)}")


def _stages(raw: list, axes: dict, method: str) -> list[Stage]:
    stages: list[Stage] = []
    for i, s in enumerate(raw):
        if not isinstance(s, dict) or "name" not in s:
            raise ConfigError(f"stage {i + 1} needs a name")
        only = {}
        for axis, kept in (s.get("only") or {}).items():
            if axis not in axes:
                raise ConfigError(f"stage {s['name']!r} names axis {axis!r}, which the spec lacks")
            kept = [str(k) for k in (kept if isinstance(kept, list) else [kept])]
            bad = [k for k in kept if k not in axes[axis]]
            if bad:
                raise ConfigError(f"stage {s['name']!r}: {bad} are not values of axis {axis!r}")
            only[axis] = kept
        winners = s.get("winners") or {}
        source = winners.get("from")
        if winners and source is None:
            raise ConfigError(f"stage {s['name']!r}: winners needs `from: STAGE`")
        if source is not None and source not in [p.name for p in stages]:
            raise ConfigError(f"stage {s['name']!r} takes winners from {source!r}: no such stage")
        stages.append(Stage(str(s["name"]), only, source, int(winners.get("top", 1))))
    return stages


def _check_cells(spec: StudySpec) -> None:
    from tlprune.data import bundled
    from tlprune.presets import available

    presets = set(available())
    earlier: set[str] = set()  # the cells of the stages before this one
    for stage in spec.stages:
        everyone = list(spec.axes[spec.method]) if stage.winners_from else None
        cells = spec.cells(stage, winners=everyone)
        if not cells:
            raise ConfigError(f"stage {stage.name!r} has no cells: its `only` keeps nothing")
        for c in cells:
            ref = str(c.flags.get("teacher", ""))
            twin = ref[len(CELL_REF) :] if ref.startswith(CELL_REF) else None
            if c.command == "prune" and twin is not None and twin not in earlier:
                raise ConfigError(
                    f"cell {c.name}: its teacher {twin} is no cell of an earlier stage: run the "
                    "teacher's recipe in a stage before this one"
                )
            preset = c.flags.get("preset", "cofi")
            if preset not in presets:
                raise ConfigError(
                    f"cell {c.name}: unknown preset {preset!r}; choose from {sorted(presets)}"
                )
            target = str(c.flags.get("target", ""))
            if not target:
                raise ConfigError(f"cell {c.name} has no target: set it in fixed or as an axis")
            if target not in bundled.REGISTRY and not Path(target).expanduser().exists():
                raise ConfigError(
                    f"cell {c.name}: unknown target {target!r}; use one of "
                    f"{sorted(bundled.REGISTRY)} or an existing file or folder"
                )
        earlier |= {c.name for c in cells}
