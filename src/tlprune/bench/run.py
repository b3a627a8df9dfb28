"""`tlprune bench`: a pruned model against its dense original, side by side in one process.

Per backend (eager, torch.compile, ONNX Runtime fp32 and int8, torch int8) and shape (batch 1
and 32 x 128 tokens): median seconds of interleaved runs after warm-up, the speedup, and the
FLOPs ratio beside it; then every pruned variant against the dense fp32 (eager) and dense int8
(ONNX Runtime) references, with each variant's size on disk.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from tlprune.bench.backends import BACKENDS, BackendUnavailable
from tlprune.bench.flops import forward_macs
from tlprune.bench.latency import random_inputs, time_interleaved
from tlprune.errors import ConfigError


@dataclass
class BenchConfig:
    """What to measure: backends, shapes (batch, tokens), repeats, threads."""

    backends: list[str] = field(default_factory=lambda: list(BACKENDS))  # registration order
    shapes: list[list[int]] = field(default_factory=lambda: [[1, 128], [32, 128]])
    repeats: int = 10
    warmup: int = 3
    threads: int | None = None  # None: torch's default on this machine

    def __post_init__(self) -> None:
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad or not self.backends:
            raise ConfigError(f"unknown backend(s) {bad}; choose from {BACKENDS.names()}")
        if self.repeats < 10:
            raise ConfigError(
                f"repeats must be >= 10 (medians of few runs mislead), got {self.repeats}"
            )
        if any(len(s) != 2 or min(s) < 1 for s in self.shapes):
            raise ConfigError(
                f"shapes must be [batch, tokens] pairs of positive ints: {self.shapes}"
            )
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")


def base_model_of(model_dir: Path) -> str | None:
    """The model a tlprune run started from, read from the run's saved config."""
    saved = model_dir / "config.yaml"
    if not saved.is_file():
        return None
    cfg = yaml.safe_load(saved.read_text()) or {}
    return (cfg.get("model") or {}).get("name")


def load_dense(against: str, labels: list[str]):
    """A model directory as saved, or an alias / hub id with a fresh head for `labels`
    (the head's weights do not change speed)."""
    from tlprune.models import load_classifier
    from tlprune.surgery.save import load_any

    path = Path(against).expanduser()
    if (path / "config.json").is_file():
        return load_any(path)[0]
    return load_classifier(against, labels)


def _machine(threads: int) -> dict[str, Any]:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def bench(
    model_dir: str | Path,
    against: str | None = None,
    config: BenchConfig | None = None,
    out_json: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure `model_dir` (pruned) against `against` (dense: a directory, alias or hub id;
    default the run's base model) and return the results; write them to `out_json` if given."""
    from tqdm.auto import tqdm

    from tlprune.surgery.save import load_any

    cfg = config or BenchConfig()
    model_dir = Path(model_dir).expanduser()
    pruned = load_any(model_dir)[0].eval()
    labels = [pruned.config.id2label[i] for i in range(pruned.config.num_labels)]
    against = against or base_model_of(model_dir)
    models = {"pruned": pruned}
    if against:
        models = {"dense": load_dense(against, labels).eval(), "pruned": pruned}
    longest = max(t for _, t in cfg.shapes)
    for name, m in models.items():
        limit = getattr(m.config, "max_position_embeddings", None)
        if limit is not None and longest > limit:
            raise ConfigError(
                f"{longest} tokens exceed the {name} model's {limit} positions: "
                "benchmark shorter sequences (--tokens)"
            )
    threads = cfg.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    vocab = min(m.config.vocab_size for m in models.values())
    info: dict[str, Any] = {
        "model": str(model_dir),
        "against": against,
        "machine": _machine(threads),
        "config": asdict(cfg),
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "macs": {
            k: {f"{b}x{t}": forward_macs(m.config, b, t) for b, t in cfg.shapes}
            for k, m in models.items()
        },
        "results": [],
        "skipped": {},
        "size_bytes": {},
    }
    steps = [(b, s) for b in cfg.backends for s in cfg.shapes]
    bar = tqdm(total=len(steps), desc="bench", disable=not progress)
    for backend in cfg.backends:
        _bench_backend(backend, models, cfg, threads, vocab, info, bar)
    bar.close()
    _against_references(info["results"])
    if out_json is not None:
        write_json(info, Path(out_json))
    return info


def _bench_backend(backend, models, cfg, threads, vocab, info, bar) -> None:
    """Every shape on one backend, the models interleaved; rows into `info["results"]`, or
    the reason into `info["skipped"]`."""
    try:
        runners = {k: BACKENDS[backend](m, threads) for k, m in models.items()}
    except BackendUnavailable as exc:
        info["skipped"][backend] = str(exc)
        bar.update(len(cfg.shapes))
        return
    info["size_bytes"][backend] = {k: getattr(r, "size_bytes", None) for k, r in runners.items()}
    for batch, tokens in cfg.shapes:
        inputs = random_inputs(vocab, batch, tokens)
        fns = {k: (lambda r=r, x=inputs: r(x)) for k, r in runners.items()}
        try:
            timing = time_interleaved(fns, cfg.repeats, cfg.warmup)
        except Exception as exc:
            info["skipped"][backend] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            bar.update(1)
            return
        row: dict[str, Any] = {"backend": backend, "batch": batch, "tokens": tokens}
        for k, t in timing.items():
            row[f"{k}_median_s"] = t["median_s"]
            row[f"{k}_seq_per_s"] = batch / t["median_s"]
        if "dense" in timing:
            key = f"{batch}x{tokens}"
            row["speedup"] = timing["dense"]["median_s"] / timing["pruned"]["median_s"]
            row["flops_ratio"] = info["macs"]["dense"][key] / info["macs"]["pruned"][key]
            row["speedup_over_flops_ratio"] = row["speedup"] / row["flops_ratio"]
        info["results"].append(row)
        bar.update(1)


REFERENCES = {"vs_dense_fp32": "eager", "vs_dense_int8_ort": "onnxruntime-int8"}


def _against_references(rows: list[dict]) -> None:
    """Each row's pruned model against what users run today, at the same shape: the dense
    fp32 model in eager PyTorch and the dense model in ONNX Runtime int8 (when measured)."""
    dense = {(r["backend"], r["batch"], r["tokens"]): r.get("dense_median_s") for r in rows}
    for r in rows:
        for column, backend in REFERENCES.items():
            ref = dense.get((backend, r["batch"], r["tokens"]))
            if ref:
                r[column] = ref / r["pruned_median_s"]


def write_json(data: dict, path: Path) -> None:
    """Write atomically: a crash never leaves a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def format_table(info: dict[str, Any]) -> str:
    """The results as a Markdown table (paste into a report)."""
    m = info["machine"]
    lines = [
        f"{info['model']} vs {info['against'] or '(no dense model)'}: {m['cpu']}, "
        f"{m['threads']} threads, torch {m['torch']}, medians of {info['config']['repeats']} "
        "interleaved repeats",
        "",
    ]
    if info["against"]:
        p = info["params"]
        lines.append(f"params: dense {p['dense']:,}, pruned {p['pruned']:,}")
        lines += [
            "",
            "| backend | batch x tokens | dense seq/s | pruned seq/s | speedup | FLOPs ratio "
            "| speedup / FLOPs ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in info["results"]:
            lines.append(
                f"| {r['backend']} | {r['batch']} x {r['tokens']} | {r['dense_seq_per_s']:.1f} "
                f"| {r['pruned_seq_per_s']:.1f} | {r['speedup']:.2f}x | {r['flops_ratio']:.2f}x "
                f"| {r['speedup_over_flops_ratio']:.2f} |"
            )
    else:
        lines += ["| backend | batch x tokens | seq/s |", "|---|---|---|"]
        for r in info["results"]:
            lines.append(
                f"| {r['backend']} | {r['batch']} x {r['tokens']} | {r['pruned_seq_per_s']:.1f} |"
            )
    lines += _reference_table(info)
    for backend, why in info["skipped"].items():
        lines.append(f"\n{backend}: skipped ({why})")
    return "\n".join(lines)


def _reference_table(info: dict[str, Any]) -> list[str]:
    """Every pruned variant against the dense fp32 and dense int8 ONNX Runtime references,
    with each variant's size on disk."""
    rows = [r for r in info["results"] if any(c in r for c in REFERENCES)]
    if not rows:
        return []
    sizes = info.get("size_bytes", {})

    def mb(backend: str, model: str) -> str:
        b = sizes.get(backend, {}).get(model)
        return "-" if b is None else f"{b / 1e6:.1f}"

    def ratio(r: dict, column: str) -> str:
        return f"{r[column]:.2f}x" if column in r else "-"

    lines = [
        "",
        "| pruned in | batch x tokens | pruned seq/s | vs dense fp32 eager | vs dense int8 ORT "
        "| size MB (pruned / dense) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['batch']} x {r['tokens']} | {r['pruned_seq_per_s']:.1f} "
            f"| {ratio(r, 'vs_dense_fp32')} | {ratio(r, 'vs_dense_int8_ort')} "
            f"| {mb(r['backend'], 'pruned')} / {mb(r['backend'], 'dense')} |"
        )
    return lines
