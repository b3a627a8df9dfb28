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


def print_prune_report(report: dict, out_dir: Path | None) -> None:
    """Sparsity, size and dev/test metrics of a prune run."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sp, p, b = report["sparsity"], report["params"], report["budget"]
    title = (
        f"{report['preset']}: {report['model']} on {report['target']}, budget {b['size']} "
        f"({b['train']} train + {b['dev']} dev), seed {report['seed']}"
    )
    table = Table("", "dense", "pruned", title=title)
    for key, label in (
        ("total", "params"),
        ("prunable", "prunable params"),
        ("num_layers", "layers"),
        ("heads", "heads"),
        ("ffn_units", "FFN units"),
        ("hidden", "hidden"),
    ):
        table.add_row(label, f"{p['dense'][key]:,}", f"{p['pruned'][key]:,}")
    console.print(table)
    expected = sp.get("expected_at_end")
    console.print(
        f"sparsity: target {sp['target']:.3f}, achieved {sp['achieved']:.4f}"
        + (f", expected at end of pruning {expected:.3f}" if expected is not None else "")
        + (
            f" (worst gap after the ramp {gap:.3f})"
            if (gap := sp.get("worst_gap_after_ramp")) is not None
            else ""
        )
    )
    if report.get("teacher"):
        t = report["teacher"]
        console.print(
            f"dense model: {t['dir']}; dev accuracy {t['dev']['accuracy']:.2%}, "
            f"test accuracy {t['test']['accuracy']:.2%}"
        )
    for u in report.get("unlabelled", []):
        console.print(f"unlabelled texts: {u['name']} ({u['texts']:,})")
    dev, test = report["dev"]["final"], report["test"]
    console.print(
        f"dev (final) accuracy {dev['accuracy']:.2%} loss {dev['loss']:.4f}; "
        f"test accuracy {test['accuracy']:.2%}, macro-F1 {test['macro_f1']:.3f} (n={test['n']})"
    )
    console.print(
        "seconds per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items())
    )
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning: {w}[/yellow]")
    if report.get("smoke"):
        console.print("[yellow]smoke run: a few steps only, metrics are not meaningful[/yellow]")
    if out_dir is not None:
        console.print(f"saved to {out_dir}")
