"""Human-readable summaries of run metrics for the terminal."""

from __future__ import annotations

from pathlib import Path


def print_metrics(metrics: dict, out_dir: Path | None) -> None:
    """A small table of dev and test metrics, and where the run was saved."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    b = metrics["budget"]
    title = (
        f"{metrics['method']}: {metrics['model']} on {metrics['target']}, budget {b['size']} "
        f"({b['train']} train + {b['dev']} dev), seed {metrics['seed']}"
    )
    table = Table("split", "n", "accuracy", "macro-F1", "loss", title=title)
    for split in ("dev", "test"):
        m = metrics[split]
        table.add_row(
            split, str(m["n"]), f"{m['accuracy']:.2%}", f"{m['macro_f1']:.3f}", f"{m['loss']:.4f}"
        )
    console.print(table)
    trunc = metrics["truncated_fraction"]
    console.print(
        f"steps {metrics['steps']} (best dev at {metrics['best_step']}), "
        f"train {metrics['train_seconds']:.1f}s, total {metrics['total_seconds']:.1f}s; "
        f"truncated at {metrics['max_length']} tokens: train {trunc['train']:.1%}, "
        f"test {trunc['test']:.1%}"
    )
    if metrics.get("smoke"):
        console.print("[yellow]smoke run: a few steps only, metrics are not meaningful[/yellow]")
    if out_dir is not None:
        console.print(f"saved to {out_dir}")
