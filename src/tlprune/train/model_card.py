"""The model card (README.md) saved with every pruned model."""

from __future__ import annotations

import shlex
import sys

from tlprune.config import RunConfig


def model_card(report: dict, cfg: RunConfig) -> str:
    """Base model, data budget, sparsity, metrics and the exact command, in Markdown."""
    sp, p = report["sparsity"], report["params"]
    b = report["budget"]
    dense, pruned = p["dense"], p["pruned"]
    from_cli = sys.argv and sys.argv[0].endswith(("tlprune", "__main__.py"))
    command = (
        " ".join(shlex.quote(a) for a in ["tlprune", *sys.argv[1:]])
        if from_cli
        else "(run from the Python API; config.yaml holds the resolved config)"
    )
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [tlprune, structured-pruning]",
        "---",
        f"# {report['target']} classifier pruned from `{report['model']}`",
        "",
        *(
            ["**Smoke run: a few steps only; the metrics are not meaningful.**", ""]
            if report.get("smoke")
            else []
        ),
        f"Structured pruning with tlprune (preset `{report['preset']}`), seed {report['seed']}.",
        "",
        "| | value |",
        "|---|---|",
        f"| base model | `{report['model']}` |",
        f"| target task | {report['target']} ({', '.join(report['labels'])}) |",
        f"| labelled data budget | {b['size']} ({b['train']} train + {b['dev']} dev) |",
        f"| target / achieved sparsity | {sp['target']:.2f} / {sp['achieved']:.4f} |",
        f"| prunable params kept | {sp['kept_params']:,} (budget {sp['budget_params']:,}) |",
        f"| total params | {pruned['total']:,} (dense {dense['total']:,}) |",
        f"| layers, heads, FFN units, hidden | {pruned['num_layers']}, {pruned['heads']}, "
        f"{pruned['ffn_units']}, {pruned['hidden']} |",
        f"| test accuracy | {report['test']['accuracy']:.4f} (n={report['test']['n']}) |",
        f"| test macro-F1 | {report['test']['macro_f1']:.4f} |",
        f"| distillation | {'yes' if report['distill'] else 'no'} |",
        *_teacher_rows(report),
        f"| transfer | {_transfer(report.get('transfer') or {})} |",
        "",
        "Load it with `AutoModelForSequenceClassification.from_pretrained(dir, "
        "trust_remote_code=True)` (the modelling file is saved beside the weights) or "
        "`tlprune.load(dir)`.",
        "",
        "Command:",
        "",
        f"    {command}",
        "",
    ]
    return "\n".join(lines)


def _teacher_rows(report: dict) -> list[str]:
    """The dense model the small one came from, and the unlabelled texts it read."""
    rows = []
    if t := report.get("teacher"):
        rows.append(
            f"| dense model (teacher) | {t['dir']} ({t.get('recipe', '')}): dev accuracy "
            f"{t['dev']['accuracy']:.4f}, test accuracy {t['test']['accuracy']:.4f} |"
        )
    if steps := (report.get("fisher") or {}).get("steps"):
        path = " -> ".join(
            f"{s['target']:.2f} (dev accuracy {s['dev_after']['accuracy']:.4f} after "
            f"{s['fine_tune_steps']} optimizer steps)"
            for s in steps
        )
        rows.append(f"| gradual pruning | {path} -> {report['sparsity']['target']:.2f} |")
    for u in report.get("unlabelled", []):
        rows.append(f"| unlabelled texts | {u['name']}: {u['texts']:,} |")
    kl, layer = report.get("distill_unlabelled"), report.get("distill_unlabelled_layer")
    if kl or layer:
        parts = [f"logit KL, weight {kl}"] if kl else []
        parts += [f"hidden states layer by layer, weight {layer}"] if layer else []
        rows.append(f"| distillation on unlabelled texts | {'; '.join(parts)} |")
    if sel := report.get("selection"):
        kept = sel["rules"][sel["kept"]]
        held = next((c["heldout"]["n"] for c in sel["rules"].values() if c.get("heldout")), 0)
        rule = "dev loss" if sel["kept"] == "dev_loss" else "dev loss + held-out KL to the teacher"
        rows.append(
            f"| checkpoint selection | {rule}, step {kept['step']} ({held:,} unlabelled texts "
            "held out of the distillation) |"
        )
    return rows


def _transfer(t: dict) -> str:
    """`coupling: aux (task, weight), ...`, or `none`."""
    if t.get("coupling", "none") == "none":
        return "none"
    aux = ", ".join(f"{a['name']} ({a['task']}, weight {a['weight']})" for a in t.get("aux", []))
    variant = f" ({t['variant']})" if t.get("variant") else ""
    when = " (warm and prune phases)" if t.get("in_warm") else ""
    if t.get("adapt", "none") != "none":
        when += f", alpha adapted by gradient {t['adapt']}"
    return f"{t['coupling']}{variant}{when}: {aux}"
