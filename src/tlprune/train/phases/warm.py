"""Warm phase: the dense model fine-tuned on the budget before the gates (CoFi prunes a
fine-tuned model), from the auxiliary stage's weights where there is one, with the auxiliary
branch beside it when `transfer.in_warm`. Saved in the work directory; a resume reuses it."""

from __future__ import annotations

import time

from tlprune.models import load_classifier
from tlprune.train.loop import train_classifier
from tlprune.train.phases.state import PruneRun, save_main

CARRIED = "aux_branch.safetensors"  # in the warm model's directory, after warm-phase transfer


def masks_fixed_by_aux(run: PruneRun) -> bool:
    """`sequential` with `fixed_masks`: the auxiliary stage's masks are the model's."""
    stage, tc = run.stage, run.cfg.transfer
    return stage is not None and stage.masks is not None and tc.variant == "fixed_masks"


def warm_phase(run: PruneRun) -> None:
    from accelerate.utils import set_seed

    from tlprune.arch import from_hf, unit_sizes
    from tlprune.modeling import TlpruneForSequenceClassification
    from tlprune.surgery import param_report
    from tlprune.transfer.branch import build_branch
    from tlprune.transfer.groups import copy_weights

    cfg, tc, acc = run.cfg, run.cfg.transfer, run.accelerator
    t0 = time.perf_counter()
    warm_dir = run.work / "warm"
    if (warm_dir / "config.json").is_file():
        model = TlpruneForSequenceClassification.from_pretrained(warm_dir)
    else:
        set_seed(cfg.seed)  # the new head's initialisation follows the run's seed
        model = from_hf(load_classifier(cfg.model.name, run.task.label_names))
        if run.stage is not None:
            copy_weights(run.stage.encoder, model.tlprune, tc.weights)
        carried: dict = {}  # the auxiliary branch's heads after a warm phase with transfer
        if not masks_fixed_by_aux(run):  # fixed masks: T trains only as the small model
            branch = None
            if tc.in_warm:  # the branch trains beside T already; the prune phase takes it over
                sizes = unit_sizes(model.config)
                branch = build_branch(
                    model, None, run.aux_data, run.tokenizer, tc, None, sizes, cfg.seed
                )
            train_dl, dev_dl, _ = run.loaders(2, cfg.prune.warm)
            warm = cfg.prune.warm
            train_classifier(
                model, train_dl, dev_dl, warm, acc, run.log_path, "warm", branch=branch
            )
            model = acc.unwrap_model(model)
            if branch is not None:
                carried = {CARRIED: branch.carried_state()}
                del branch  # the prune phase builds its own branch and loads this state
        save_main(acc, model, warm_dir, carried)
        del carried
        acc.free_memory()
    run.seconds["warm"] = time.perf_counter() - t0
    run.model = model
    run.dense_report = param_report(model)
