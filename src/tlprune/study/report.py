"""`tlprune report DIR`: report.md, a self-contained report.html and results.csv of a study.

Per setting (target, budget, sparsity) and method: dev and test mean ± std over seeds, paired
differences to each baseline (Student-t over seeds; bootstrap over test examples within
seed), achieved and end-of-phase expected sparsity, minutes; the same differences pooled over
targets; the spec's questions as verdict sentences; the recommended recipe, chosen on dev.
Figures: accuracy per method with the seeds as points, against sparsity and budget where the
study varies them, and against measured speedup where cells were benchmarked.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlprune.errors import ConfigError
from tlprune.paths import atomic_dir
from tlprune.study.stats import Interval, bootstrap_interval, t_interval, verdict


@dataclass
class Row:
    """One finished cell."""

    cell: str
    method: str
    target: str
    budget: int | None
    sparsity: float | None
    seed: int
    dev: float
    test: float
    correct: list[int] = field(default_factory=list)
    seconds: float | None = None
    achieved: float | None = None
    expected: float | None = None
    worst_gap: float | None = None  # max |expected sparsity - target| after the target ramp
    speedup: float | None = None
    group: str = ""  # the cell's other axes (e.g. "model=bert"): rows pair within a group
    # rule -> {step, dev, test} of each checkpoint-selection rule on this run's trajectory
    selection: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class StudyData:
    name: str
    method_axis: str
    baselines: list[str]
    questions: dict[str, dict[str, Any]]
    rows: list[Row]
    failed: dict[str, str]


def rows_from_store(study, spec) -> StudyData:
    """The finished cells of a study's store, as report rows."""
    import tlprune.study.store as store

    rows = []
    plain = {spec.method, "seed", "target", "budget", "sparsity"}
    for t in store.completed(study).values():
        a, f = t.user_attrs, t.user_attrs["flags"]
        group = ", ".join(f"{k}={v}" for k, v in a["axes"].items() if k not in plain)
        rows.append(
            Row(
                cell=a["cell"],
                method=a["axes"][spec.method],
                target=str(f.get("target")),
                budget=f.get("budget"),
                sparsity=None if f.get("preset") == "finetune" else f.get("sparsity"),
                seed=int(f.get("seed", 0)),
                dev=a["dev"],
                test=a["test"],
                correct=a.get("correct", []),
                seconds=a.get("seconds"),
                achieved=a.get("achieved"),
                expected=a.get("expected_at_end"),
                worst_gap=a.get("worst_gap"),
                speedup=a.get("speedup"),
                group=group,
                selection=a.get("selection", {}),
            )
        )
    return StudyData(
        spec.name, spec.method, spec.baselines, spec.questions, rows, store.failures(study)
    )


Setting = tuple[str, Any, Any, str]  # target, budget, sparsity, other axes


def _settings(rows: list[Row]) -> list[Setting]:
    keys = {(r.target, r.budget, r.sparsity, r.group) for r in rows if r.sparsity is not None}
    if not keys:  # dense runs only
        keys = {(r.target, r.budget, None, r.group) for r in rows}
    return sorted(keys, key=lambda k: (k[0], k[1] or 0, k[2] or 0, k[3]))


def _cells(rows: list[Row], method: str, setting: Setting) -> dict[int, Row]:
    """seed -> row of `method` in `setting` (a dense method serves every sparsity)."""
    target, budget, sparsity, group = setting
    out = {}
    for r in rows:
        same = r.method == method and (r.target, r.budget, r.group) == (target, budget, group)
        if same and (r.sparsity is None or r.sparsity == sparsity):
            out[r.seed] = r
    return out


def compare(rows: list[Row], method: str, base: str, settings: list[Setting]) -> Interval:
    """Test-accuracy differences of `method` minus `base`, paired by setting and seed; each
    pair of runs counts once (a dense run serves every sparsity, but is one run)."""
    pairs: dict[tuple[str, str], float] = {}
    for s in settings:
        a, b = _cells(rows, method, s), _cells(rows, base, s)
        for k in sorted(set(a) & set(b)):
            pairs[(a[k].cell, b[k].cell)] = a[k].test - b[k].test
    return t_interval(list(pairs.values()))


def _boot(a: dict[int, Row], b: dict[int, Row]) -> Interval | None:
    seeds = [k for k in sorted(set(a) & set(b)) if a[k].correct and b[k].correct]
    if not seeds:
        return None
    return bootstrap_interval([np.array(a[k].correct) for k in seeds],
                              [np.array(b[k].correct) for k in seeds])  # fmt: skip


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x * scale, spec)


def tables(data: StudyData) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report."""
    rows, out = data.rows, []
    methods = sorted({r.method for r in rows}, key=lambda m: (m not in data.baselines, m))
    settings = _settings(rows)
    for s in settings:
        target, budget, sparsity, group = s
        header = ["method", "seeds", "dev %", "test % mean ± std"]
        for b in data.baselines:
            header += [f"vs {b}: t 95%", f"vs {b}: bootstrap"]
        header += ["achieved sparsity", "expected at end", "worst gap after ramp", "minutes"]
        body = []
        for m in methods:
            cells = _cells(rows, m, s)
            if not cells:
                continue
            test = np.array([c.test for c in cells.values()]) * 100
            std = f" ± {test.std(ddof=1):.1f}" if len(test) > 1 else ""
            line = [m, ",".join(map(str, sorted(cells))),
                    _fmt(_mean([c.dev for c in cells.values()]), ".1f", 100),
                    f"{test.mean():.1f}{std}"]  # fmt: skip
            for b in data.baselines:
                if b == m:
                    line += ["-", "-"]
                    continue
                ref = _cells(rows, b, s)
                boot = _boot(cells, ref)
                line += [str(compare(rows, m, b, [s])) if set(cells) & set(ref) else "-",
                         f"[{boot.lo:+.1f}, {boot.hi:+.1f}]" if boot else "-"]  # fmt: skip
            exp = [c.expected for c in cells.values() if c.expected is not None]
            gaps = [c.worst_gap for c in cells.values() if c.worst_gap is not None]
            line += [_fmt(_mean([c.achieved for c in cells.values()]), ".3f"),
                     ", ".join(f"{e:.3f}" for e in exp) or "-",
                     f"{max(gaps):.3f}" if gaps else "-",
                     _fmt(_mean([c.seconds for c in cells.values()]), ".1f", 1 / 60)]  # fmt: skip
            body.append(line)
        title = f"{target}, budget {budget}" + (f", sparsity {sparsity}" if sparsity else "")
        title += f", {group}" if group else ""
        out.append((title, header, body))
    targets = {s[0] for s in settings}
    if len(targets) > 1 and data.baselines:
        header = ["budget", "sparsity", "method"] + [
            f"vs {b}: t 95% (pairs)" for b in data.baselines
        ]
        body = []
        header.insert(2, "other axes")
        for budget, sparsity, other in sorted({(s[1], s[2], s[3]) for s in settings}, key=str):
            group = [s for s in settings if (s[1], s[2], s[3]) == (budget, sparsity, other)]
            for m in methods:
                if m in data.baselines[:1] or not any(_cells(rows, m, s) for s in group):
                    continue  # the reference itself, or a method not run at this setting
                ivs = [compare(rows, m, b, group) if b != m else None for b in data.baselines]
                body.append([str(budget), str(sparsity), other or "-", m]
                            + [str(iv) if iv and iv.n else "-" for iv in ivs])  # fmt: skip
        out.append(("pooled over targets (paired by target and seed)", header, body))
    if any(r.selection for r in rows):
        out.append(selection_table(rows, methods, settings))
    return out


def selection_table(rows: list[Row], methods: list[str], settings: list[Setting]):
    """Each checkpoint-selection rule against dev loss on the same runs (the training is
    shared, only the kept state differs): per setting, then pooled over settings."""
    header = ["setting", "method", "rule", "seeds", "steps kept", "dev %", "test % mean ± std",
              "dev vs dev_loss: t 95%", "test vs dev_loss: t 95%"]  # fmt: skip
    body = []

    def label(s: Setting) -> str:  # as the per-setting tables' titles say it
        return ", ".join(str(x) for x in (s[0], f"budget {s[1]}", s[2] and f"sparsity {s[2]}",
                                           s[3]) if x)  # fmt: skip

    scopes = [(label(s), [s]) for s in settings]
    if len(settings) > 1:
        scopes.append(("pooled", settings))
    for label, group in scopes:
        for m in methods:
            runs = [c for s in group for c in _cells(rows, m, s).values() if c.selection]
            for rule in sorted({k for c in runs for k in c.selection}):
                picked = [c for c in runs if rule in c.selection and "dev_loss" in c.selection]
                sel = [c.selection[rule] for c in picked]
                test = np.array([x["test"] for x in sel]) * 100
                std = f" ± {test.std(ddof=1):.1f}" if len(test) > 1 else ""
                diff = [] if rule == "dev_loss" else [  # paired within each run
                    t_interval([c.selection[rule][k] - c.selection["dev_loss"][k] for c in picked])
                    for k in ("dev", "test")
                ]  # fmt: skip
                body.append([label, m, rule, ",".join(str(c.seed) for c in picked),
                             ",".join(str(int(x["step"])) for x in sel),
                             f"{100 * np.mean([x['dev'] for x in sel]):.1f}",
                             f"{test.mean():.1f}{std}",
                             *(str(iv) for iv in diff or ["-", "-"])])  # fmt: skip
    return ("checkpoint selection within runs (one trajectory, each rule's kept state)", header,
            body)  # fmt: skip


def verdicts(data: StudyData) -> list[str]:
    """The spec's questions, each comparison as a sentence with its pooled interval."""
    settings = _settings(data.rows)
    lines = []
    for q, body in data.questions.items():
        for m in body["compare"]:
            iv = compare(data.rows, m, body["against"], settings)
            lines.append(f"**{q}**: {verdict(m, body['against'], iv)}")
    return lines


def recommended(data: StudyData) -> str:
    """The non-baseline method with the best mean dev accuracy (never test), over the cells
    every such method finished (paired), so that no recipe wins by where it was run; then
    that method against each baseline on the cells both ran: a recipe that is not above a
    baseline on dev is not recommended over it."""
    by: dict[str, dict[tuple, Row]] = defaultdict(dict)
    for r in data.rows:
        by[r.method][(r.target, r.budget, r.sparsity, r.group, r.seed)] = r
    candidates = {m: cells for m, cells in by.items() if m not in data.baselines}
    if not candidates:
        return "No recipe beyond the baselines was run."
    common = set.intersection(*(set(d) for d in candidates.values()))
    if not common:
        return "No cell was run by every recipe: no paired recommendation."
    best = max(candidates, key=lambda m: np.mean([by[m][k].dev for k in common]))
    rs = [by[best][k] for k in common]
    d, t = 100 * np.mean([r.dev for r in rs]), 100 * np.mean([r.test for r in rs])
    text = (
        f"Best recipe beyond the baselines (chosen on dev accuracy over the {len(common)} cells "
        f"every such recipe ran): **{best}**, mean dev {d:.1f} %, test {t:.1f} %."
    )
    for base in data.baselines:
        shared = set(by.get(base, {})) & set(by[best])
        if not shared:
            continue
        mine = 100 * np.mean([by[best][k].dev for k in shared])
        theirs = 100 * np.mean([by[base][k].dev for k in shared])
        if mine <= theirs:
            text += (
                f" It is not above the baseline **{base}** on dev over the {len(shared)} cells "
                f"both ran ({mine:.1f} % against {theirs:.1f} %): keep {base}."
            )
    return text


def figures(data: StudyData) -> dict[str, bytes]:
    """PNG figures by file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, out = data.rows, {}
    methods = sorted({r.method for r in rows}, key=lambda m: (m not in data.baselines, m))
    settings = _settings(rows)
    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.6), squeeze=False)
    for ax, s in zip(axes[0], settings, strict=True):
        for i, m in enumerate(methods):
            pts = [100 * c.test for c in _cells(rows, m, s).values()]
            if pts:
                ax.scatter([i] * len(pts), pts, s=18, alpha=0.7)
                ax.hlines(np.mean(pts), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{s[0]}" + (f" sp {s[2]}" if s[2] else ""), fontsize=9)
        ax.set_ylabel("test accuracy %")
    out["accuracy.png"] = _png(fig, plt)
    for axis, label in (("sparsity", "sparsity"), ("budget", "labelled budget")):
        values = sorted({getattr(r, axis) for r in rows if getattr(r, axis) is not None})
        if len(values) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for m in methods:
            xs, ys = [], []
            for v in values:
                pts = [r.test for r in rows if r.method == m and getattr(r, axis) == v]
                if pts:
                    xs.append(v)
                    ys.append(100 * np.mean(pts))
            if xs:
                ax.plot(xs, ys, marker="o", label=m)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy % (mean over targets and seeds)")
        ax.legend(fontsize=7)
        out[f"{axis}.png"] = _png(fig, plt)
    timed = [r for r in rows if r.speedup]
    if timed:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for m in sorted({r.method for r in timed}):
            rs = [r for r in timed if r.method == m]
            ax.scatter([r.speedup for r in rs], [100 * r.test for r in rs], label=m, s=18)
        ax.set_xlabel("measured speedup over the dense model (eager, batch 32)")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
        out["speedup.png"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in body)]  # fmt: skip


def _html_table(header: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def write_report(data: StudyData, out: str | Path) -> Path:
    """Write report.md, report.html, results.csv and figures/ into `out` (atomically)."""
    if not data.rows:
        raise ConfigError("the study has no finished cells yet: run `tlprune study` first")
    out = Path(out)
    tabs, said, best, figs = tables(data), verdicts(data), recommended(data), figures(data)
    md = [f"# Study {data.name}", "", best, ""]
    if said:
        md += ["## Verdicts", "", *(f"- {s}" for s in said), ""]
    for title, header, body in tabs:
        md += [f"## {title}", "", *_md_table(header, body), ""]
    md += [f"![{n}](figures/{n})" for n in figs]
    if data.failed:
        md += ["", "## Failed cells", "", *(f"- {c}: {e}" for c, e in sorted(data.failed.items()))]

    def h(text: str) -> str:  # escaped, with the Markdown bold as <b>
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))

    parts = [f"<h1>Study {html.escape(data.name)}</h1>", f"<p>{h(best)}</p>"]
    if said:
        parts.append("<h2>Verdicts</h2><ul>" + "".join(f"<li>{h(x)}</li>" for x in said) + "</ul>")
    for title, header, body in tabs:
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(header, body)]
    for n, png in figs.items():
        b64 = base64.b64encode(png).decode()
        parts.append(f'<figure><img alt="{n}" src="data:image/png;base64,{b64}"></figure>')
    if data.failed:
        items = "".join(
            f"<li>{html.escape(c)}: {html.escape(e)}</li>" for c, e in sorted(data.failed.items())
        )
        parts.append(f"<h2>Failed cells</h2><ul>{items}</ul>")
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto}td,th{padding:2px 8px}"
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.name)}"
    page += f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "report", overwrite=True) as tmp:
        (tmp / "figures").mkdir()
        for n, png in figs.items():
            (tmp / "figures" / n).write_bytes(png)
        (tmp / "report.md").write_text("\n".join(md) + "\n")
        (tmp / "report.html").write_text(page)
        _write_csv(data, tmp / "results.csv")
    return out / "report"


def _write_csv(data: StudyData, path: Path) -> None:
    cols = ["cell", "method", "target", "budget", "sparsity", "group", "seed", "dev", "test",
            "seconds", "achieved", "expected", "worst_gap", "speedup"]  # fmt: skip
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in sorted(data.rows, key=lambda r: r.cell):
            w.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in cols])


def report(
    study_dir: str | Path,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
) -> Path:
    """Open a study's store (default DIR/study.db) and write its report to DIR/report."""
    import optuna

    import tlprune.study.store as store
    from tlprune.study.spec import parse_spec

    study_dir = Path(study_dir).expanduser()
    if storage is None and not (study_dir / "study.db").is_file():
        raise ConfigError(
            f"{study_dir} holds no study.db: give a `tlprune study` folder or --storage"
        )
    url = storage or store.default_url(study_dir)
    names = [  # the grids, not their searches (which record no spec)
        s.study_name for s in optuna.get_all_study_summaries(url) if "spec" in s.user_attrs
    ]
    if study_name is None:
        if len(names) != 1:
            raise ConfigError(f"the store holds studies {names}: choose one with --study")
        study_name = names[0]
    study = store.open_store(study_name, url, create=False)
    raw = study.user_attrs.get("spec")
    if raw is None:
        raise ConfigError(f"study {study_name!r} has no spec recorded: was it run by tlprune?")
    data = rows_from_store(study, parse_spec(raw, study_name, check=False))
    return write_report(data, out or study_dir)
