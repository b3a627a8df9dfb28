"""The retraining-free prune job (presets `fisher`, `fisher-ft`), after Kwon et al. 2022:

dense fine-tune on the budget (or `--teacher DIR`) -> per-example Fisher gradients of head and
FFN-unit masks on the budget's training texts (their labels) and unlabelled texts (the dense
model's predictions as labels) -> mask search under the exact parameter budget -> mask
rearrangement within layers -> layer-wise least-squares mask tuning, folded into the weights
-> surgery -> [final fine-tune of the small model] -> the same outputs as every prune preset.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from tlprune.config import RunConfig
from tlprune.data.collate import ClassificationCollator
from tlprune.data.metrics import classification_metrics
from tlprune.data.sources import load_task
from tlprune.data.split import draw_budget
from tlprune.errors import TlpruneError
from tlprune.models import load_classifier, load_tokenizer
from tlprune.train.agreement import selection_report, take_holdout
from tlprune.train.evaluate import evaluate, predict
from tlprune.train.finetune import make_loaders
from tlprune.train.loop import train_classifier
from tlprune.train.metrics_log import MetricsLog, make_accelerator
from tlprune.train.phases.state import save_main
from tlprune.train.phases.teacher import load_teacher
from tlprune.train.prune_job import (
    _write_outputs,
    base_report,
    check_architecture,
    check_workdir,
    default_out,
    smoke_config,
    start_workdir,
)
from tlprune.train.result import RunResult
from tlprune.train.unlabelled_distill import text_batch

SMOKE_EXAMPLES = 32


def _smoke(cfg: RunConfig) -> RunConfig:
    cfg = smoke_config(cfg)
    small = min(cfg.fisher.examples, SMOKE_EXAMPLES)
    fisher = dataclasses.replace(cfg.fisher, examples=small, tune_examples=small)
    return dataclasses.replace(cfg, fisher=fisher)


def _prepare(cfg: RunConfig, out: Path, resume: bool):
    """Every check, the data and the work directory: (the run's state, workdir, unlabelled)."""
    from accelerate import PartialState

    from tlprune.transfer.unlabelled import load_unlabelled

    if PartialState().num_processes > 1:
        raise TlpruneError(
            "the fisher presets run in one process (they take minutes): start without "
            "torchrun/accelerate launch"
        )
    check_architecture(cfg.model.name)
    work = check_workdir(cfg, out, resume)
    task = load_task(cfg.data)
    budget = draw_budget(
        task.train["label"], cfg.data.budget, cfg.seed, cfg.data.dev_fraction, task.num_labels
    )
    tokenizer = load_tokenizer(cfg.model.name)
    unlabelled = load_unlabelled(cfg.data.unlabelled, task, budget, cfg.seed)
    if cfg.smoke:  # a few texts: the dense model's logits on all of them take a while
        for u in unlabelled:
            u.texts = u.texts[:SMOKE_EXAMPLES]
    _check_holdout(cfg, len({t for u in unlabelled for t in u.texts}))
    _check_steps(cfg)
    if cfg.train.mixed_precision != cfg.prune.final.mixed_precision:
        raise TlpruneError(
            "train.mixed_precision and prune.final.mixed_precision differ: one run uses one "
            "precision; set the same value for both"
        )
    if cfg.distill.teacher:
        path = Path(cfg.distill.teacher)
        _check_dense(load_teacher(path, task.label_names), path)  # fail before writing
    aux_data = _check_transfer(cfg, task, budget, tokenizer)
    if not resume:
        start_workdir(cfg, work)
    accelerator = make_accelerator(cfg.prune.final.mixed_precision, work)
    log_path = work / "log.jsonl"
    log_path.touch()
    run = _Run(cfg, task, budget, tokenizer, accelerator, log_path)
    run.aux_data = aux_data
    if cfg.distill.agreement_texts:  # out of everything else the run reads
        run.held_texts = take_holdout(unlabelled, cfg.distill.agreement_texts, cfg.seed + 7_907)
    return run, work, unlabelled


def run_fisher(cfg: RunConfig, resume: bool = False) -> RunResult:
    """Prune `cfg.model` for `cfg.data` to `cfg.prune.sparsity` without gate training."""
    started = time.perf_counter()
    if cfg.smoke:
        cfg = _smoke(cfg)
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg)
    run, work, unlabelled = _prepare(cfg, out, resume)
    task, budget, tokenizer = run.task, run.budget, run.tokenizer
    accelerator, log_path = run.accelerator, run.log_path
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    teacher, teacher_info = run.teacher(work, resume)
    seconds["teacher"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    small, masks, fisher_info = run.prune(teacher, unlabelled)
    seconds["fisher"] = time.perf_counter() - t0
    dev_loader, test_loader = run.eval_loaders()
    dev_prune = evaluate(small, dev_loader, task.num_labels)
    final_dev, final_steps, heldout = dev_prune, 0, None
    if cfg.fisher.final:
        t0 = time.perf_counter()
        train_dl, dev_dl, _ = run.loaders(4, cfg.prune.final)
        distill, heldout = run.unlabelled_distill(teacher, unlabelled)
        loop = train_classifier(
            small,
            train_dl,
            dev_dl,
            cfg.prune.final,
            accelerator,
            log_path,
            desc="final",
            extra_loss=distill,
            heldout=heldout,
        )
        small = accelerator.unwrap_model(small).cpu()
        teacher.cpu()  # the layer loss ran it on the training device
        final_dev, final_steps = loop.best_dev, loop.steps
        seconds["final"] = time.perf_counter() - t0
    logits, labels = predict(small, test_loader, desc="test")
    test = classification_metrics(logits, labels, task.num_labels)
    selection = heldout and selection_report(small, loop, cfg.distill.select, test_loader)
    seconds["total"] = time.perf_counter() - started
    report = run.report(small, teacher, masks, fisher_info, teacher_info, unlabelled)
    report.update(
        dev={"prune": dev_prune, "final": final_dev},
        test=test,
        steps={"prune": 0, "prune_best": 0, "final": final_steps},
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )
    if selection:
        report["selection"] = selection
    accelerator.end_training()
    _write_outputs(work, out, small, tokenizer, cfg, report, masks, logits, labels, budget)
    return RunResult(model=small, tokenizer=tokenizer, report=report, out_dir=out)


def _check_holdout(cfg: RunConfig, texts: int) -> None:
    """distill.agreement_texts needs a distilling final fine-tune and texts left to distil."""
    held, dc = cfg.distill.agreement_texts, cfg.distill
    if not held:
        return
    if not (cfg.fisher.final and dc.on_unlabelled and texts):
        raise TlpruneError(
            "distill.agreement_texts holds out unlabelled texts of the final fine-tune's "
            "distillation: give --unlabelled SOURCE, fisher.final=true and "
            "distill.unlabelled_weight (or unlabelled_layer_weight) > 0, or set "
            "distill.agreement_texts=0"
        )
    if held >= texts:
        raise TlpruneError(
            f"distill.agreement_texts={held} holds out all {texts} unlabelled texts and leaves "
            f"none to distil on: set it below {texts} (e.g. {max(1, texts // 5)})"
        )


def _check_steps(cfg: RunConfig) -> None:
    """Gradual steps lie below the target, and fine-tune with the final fine-tune's recipe."""
    fc = cfg.fisher
    if fc.steps and fc.steps[-1] >= cfg.prune.sparsity:
        raise TlpruneError(
            f"fisher.steps {fc.steps} must lie below prune.sparsity={cfg.prune.sparsity}: "
            "they are the sparsities reached before it"
        )
    if fc.steps and not fc.final:
        raise TlpruneError(
            "fisher.steps fine-tunes after each step with the final fine-tune's recipe: set "
            "fisher.final=true (the fisher-ft, fisher-stilts and transfer presets have it)"
        )


class _Run:
    """The steps of one fisher run, sharing its task, budget, tokenizer and log."""

    def __init__(self, cfg: RunConfig, task, budget, tokenizer, accelerator, log_path: Path):
        self.cfg, self.task, self.budget = cfg, task, budget
        self.tokenizer, self.accelerator, self.log_path = tokenizer, accelerator, log_path
        self.collate = ClassificationCollator(tokenizer, task.max_length)
        self.aux_data: list = []
        self.held_texts: list[str] = []  # unlabelled texts held out for checkpoint selection
        self._logits: list | None = None  # the teacher's logits on the unlabelled sources
        self.stage_cached = False  # the STILTs teacher's auxiliary stage came from the cache

    def loaders(self, phase: int, train_cfg):
        """Seeded loaders, as the gate-based prune job makes them for the same phase."""
        from accelerate.utils import set_seed

        set_seed(self.cfg.seed + phase)
        phase_cfg = dataclasses.replace(self.cfg, train=train_cfg, seed=self.cfg.seed + phase)
        return make_loaders(self.task, self.budget, self.tokenizer, phase_cfg, self.cfg.smoke)

    def eval_loaders(self):
        _, dev, test = make_loaders(
            self.task, self.budget, self.tokenizer, self.cfg, self.cfg.smoke
        )
        return dev, test

    def teacher(self, work: Path, resume: bool):
        """The dense fine-tuned model: `--teacher DIR`, or trained here and reused on resume:
        on the budget exactly as the `finetune` preset trains it (same seed, data order and
        recipe), after the auxiliary stage when the run has `--aux` (STILTs)."""
        cfg, task = self.cfg, self.task
        given = Path(cfg.distill.teacher) if cfg.distill.teacher else None
        tdir = given or work / "teacher"
        built = False
        if given is None and not (tdir / "config.json").is_file():
            dense = self._train_teacher(work, resume)
            save_main(self.accelerator, dense, tdir)
            built = True
        teacher = _load_dense(tdir, task.label_names)
        _check_dense(teacher, tdir)
        dev, test = self.eval_loaders()
        info = {
            "dir": str(given) if given else "built by this run",
            "recipe": "given" if given else self._teacher_recipe(),
            "built": built,
            "aux_stage_from_cache": self.stage_cached,
            "dev": evaluate(teacher, dev, task.num_labels),
            "test": evaluate(teacher, test, task.num_labels),
        }
        return teacher, info

    def _teacher_recipe(self) -> str:
        if not self.aux_data:
            return "dense fine-tune on the budget"
        names = ", ".join(d.name for d in self.aux_data)
        steps = self.cfg.transfer.aux_stage.max_steps
        return f"STILTs: {steps} dense steps on {names}, then the dense fine-tune on the budget"

    def _train_teacher(self, work: Path, resume: bool):
        from accelerate.utils import set_seed

        from tlprune.arch import from_hf
        from tlprune.train.dense_stage import dense_stage
        from tlprune.transfer.groups import copy_weights

        cfg, task = self.cfg, self.task
        encoder = None
        if self.aux_data:  # STILTs: the auxiliary first, dense
            encoder, self.stage_cached = dense_stage(
                cfg, task.label_names, self.aux_data, self.tokenizer, self.accelerator, work,
                self.log_path, resume,
            )  # fmt: skip
        set_seed(cfg.seed)
        dense = load_classifier(cfg.model.name, task.label_names)
        if encoder is not None:
            dense = from_hf(dense)
            copy_weights(encoder, dense.tlprune, cfg.transfer.weights)
        train_dl, dev_dl, _ = make_loaders(task, self.budget, self.tokenizer, cfg, cfg.smoke)
        train_classifier(
            dense,
            train_dl,
            dev_dl,
            cfg.train,
            self.accelerator,
            self.log_path,
            desc="teacher",
        )
        return self.accelerator.unwrap_model(dense).cpu()

    def _distils(self, unlabelled) -> bool:
        """Whether the final fine-tune reads the unlabelled texts (and so all their logits)."""
        return self.cfg.fisher.final and self.cfg.distill.on_unlabelled and bool(unlabelled)

    def unlabelled_distill(self, teacher, unlabelled):
        """The final fine-tune's distillation on unlabelled texts and its held-out selection
        texts (distill.agreement_texts, taken out of the sources by _prepare): (distill or
        None, heldout or None); no batch is drawn when there is no distillation."""
        from tlprune.train.agreement import AgreementProbe, Heldout
        from tlprune.train.unlabelled_distill import UnlabelledDistill

        dc = self.cfg.distill
        texts = [t for u in unlabelled for t in u.texts]
        if not texts or not self._distils(unlabelled):
            return None, None
        logits = torch.cat(self._teacher_logits(teacher, unlabelled))
        heldout = None
        if self.held_texts:
            with torch.no_grad():
                held_logits = self._logits_of(teacher.eval(), self.held_texts)
            probe = AgreementProbe(
                self.held_texts, held_logits, self.collate, self.cfg.train.eval_batch_size
            )
            heldout = Heldout(probe, dc.select)
        distill = UnlabelledDistill(
            logits,
            texts,
            self.collate,
            dc.unlabelled_batch_size,
            dc.unlabelled_weight,
            dc.temperature,
            seed=self.cfg.seed + 7_919,
            teacher=teacher if dc.unlabelled_layer_weight else None,
            layer_weight=dc.unlabelled_layer_weight,
        )
        return distill, heldout

    def _scoring_rows(self, teacher, unlabelled) -> tuple[list[dict], dict]:
        """The budget's training rows (their labels), then unlabelled texts labelled with the
        teacher's predictions, up to `fisher.examples`; and how many came from each."""
        cap = self.cfg.fisher.examples
        rows = [dict(r) for r in self.task.train.select(self.budget.train)][:cap]
        counts = {"labelled": len(rows)}
        if not self.cfg.fisher.score_unlabelled:
            return rows, counts
        logits = self._teacher_logits(teacher, unlabelled, cap - len(rows)) if unlabelled else []
        for source, source_logits in zip(unlabelled, logits, strict=True):
            take = source.texts[: max(0, cap - len(rows))]
            labels = source_logits[: len(take)].argmax(-1).tolist()
            rows += [{"text": t, "label": int(y)} for t, y in zip(take, labels, strict=True)]
            counts[source.name] = len(take)
        return rows, counts

    @torch.no_grad()
    def _teacher_logits(self, teacher, unlabelled, scored: int = 0) -> list[torch.Tensor]:
        """The teacher's logits on each unlabelled source, computed once: for every text when
        the final fine-tune distils, else for the `scored` first texts (pseudo-labels)."""
        if self._logits is None:
            teacher.eval()
            self._logits, left = [], scored
            for u in unlabelled:
                n = len(u.texts) if self._distils(unlabelled) else max(0, min(left, len(u.texts)))
                left -= n
                self._logits.append(self._logits_of(teacher, u.texts[:n]))
        return self._logits

    def _logits_of(self, model, texts: list[str]) -> torch.Tensor:
        out, size = [torch.zeros(0, self.task.num_labels)], self.cfg.train.eval_batch_size
        for i in range(0, len(texts), size):
            batch = text_batch(self.collate, texts[i : i + size])
            out.append(model(**batch).logits.float().cpu())
        return torch.cat(out)

    def _batches(self, rows: list[dict]):
        bs = self.cfg.fisher.batch_size
        for i in range(0, len(rows), bs):
            yield self.collate(rows[i : i + bs])

    def prune(self, teacher, unlabelled):
        """Scores, search, rearrangement, tuning, surgery: the small model and its masks. With
        `fisher.steps`, gradually: each step's sparsity first, then a fine-tune of the
        dense-shaped model with the pruned units held at zero, and the next step scored on it
        and restricted to the units it kept."""
        from tlprune.surgery import prune_model

        # a copy: tuning and folding rewrite its weights, and the teacher still distils later
        dense = copy.deepcopy(_as_tlprune(teacher)).eval()
        allowed, steps = None, []
        for i, sparsity in enumerate(self.cfg.fisher.steps):
            masks, info = self._masks(dense, teacher, unlabelled, sparsity, allowed)
            sp = info.pop("sparsity")
            size = {k: sp[k] for k in ("target", "achieved", "budget_params", "kept_params")}
            tuned = self._step_tune(dense, masks, teacher, unlabelled, i)
            steps.append({**size, **tuned, **info})
            allowed = masks
        masks, info = self._masks(dense, teacher, unlabelled, self.cfg.prune.sparsity, allowed)
        if steps:
            info["steps"] = steps
        small = prune_model(dense, masks)
        log = MetricsLog(self.log_path, self.accelerator)
        counts = info["scored"]
        log.write({"phase": "fisher", "step": 0, **{f"scored/{k}": v for k, v in counts.items()}})
        log.close()
        return small, masks, info

    def _masks(self, dense, teacher, unlabelled, sparsity: float, allowed):
        """One step: Fisher scores of `dense` as it is now, the masks at `sparsity` (among the
        `allowed` units), rearranged, tuned towards `dense` itself and folded into it."""
        from tlprune.arch import unit_sizes
        from tlprune.gates.fisher import (
            collect_mask_grads,
            layer_floor_counts,
            rearrange,
            search_masks,
        )
        from tlprune.gates.mask_tuning import fold_scales, tune_masks
        from tlprune.gates.size import exact_size

        fc = self.cfg.fisher
        sizes = unit_sizes(dense.config)
        budget = math.floor((1 - sparsity) * sizes.full_size)
        rows, counts = self._scoring_rows(teacher, unlabelled)
        grads = collect_mask_grads(dense, self._batches(rows))
        masks = search_masks(grads.diagonal(), sizes, budget, fc.layer_floor, allowed)
        info: dict[str, Any] = {"scored": counts, "rearrange": None, "tune": None}
        min_heads, min_units = layer_floor_counts(sizes, budget, fc.layer_floor)
        info["layer_floor"] = {"floor": fc.layer_floor, "heads": min_heads, "ffn_units": min_units}
        if fc.rearrange:
            masks, info["rearrange"] = rearrange(grads, masks, allowed=allowed)
        tuned = {k: v.clone() for k, v in masks.items()}
        if fc.tune:
            tune_rows = rows[: fc.tune_examples]
            tuned, stats = tune_masks(
                dense, dense, masks, lambda: self._batches(tune_rows), damping=fc.damping
            )
            info["tune"] = {
                "examples": len(tune_rows),
                "error_before": sum(stats.before.values()),
                "error_after": sum(stats.after.values()),
                "per_sublayer": {k: [stats.before[k], stats.after[k]] for k in stats.before},
            }
        fold_scales(dense, tuned)
        kept = exact_size(masks, sizes)
        info["sparsity"] = {
            "target": sparsity,
            "achieved": 1 - kept / sizes.full_size,
            "expected_at_end": None,  # no gates: nothing is expected, the masks are chosen
            "budget_params": budget,
            "kept_params": kept,
            "notes": [],
        }
        return masks, info

    def _step_tune(self, dense, masks, teacher, unlabelled, index: int) -> dict:
        """The fine-tune after an intermediate step: `dense` with its pruned units at zero and
        held there, prune.final's recipe for fisher.step_epochs (its distillation too; its
        max_steps, where set, caps this one as well), kept at its best dev loss; what it
        reached."""
        from tlprune.gates.fixed_masks import hold_pruned, zero_pruned

        t0 = time.perf_counter()
        zero_pruned(dense, masks)
        dev_loader, _ = self.eval_loaders()
        before = evaluate(dense, dev_loader, self.task.num_labels)
        step_cfg = dataclasses.replace(self.cfg.prune.final, epochs=self.cfg.fisher.step_epochs)
        train_dl, dev_dl, _ = self.loaders(5 + index, step_cfg)
        distill, _ = self.unlabelled_distill(teacher, unlabelled)
        handles = hold_pruned(dense, masks)
        try:
            loop = train_classifier(
                dense,
                train_dl,
                dev_dl,
                step_cfg,
                self.accelerator,
                self.log_path,
                desc=f"step {index + 1}",
                extra_loss=distill,
            )
        finally:
            for h in handles:
                h.remove()
        # the same module, trained in place; without the mixed-precision forward wrapper
        model = self.accelerator.unwrap_model(dense, keep_fp32_wrapper=False)
        model.cpu().eval()
        teacher.cpu()
        self.accelerator.free_memory()  # the step's optimizer state, before the final tune
        return {
            "dev_before": before,
            "dev_after": loop.best_dev,  # the kept state's, as the final fine-tune reports
            "fine_tune_steps": loop.steps,
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def report(self, small, teacher, masks, info, teacher_info, unlabelled) -> dict:
        from tlprune.surgery import param_report

        cfg, task, budget = self.cfg, self.task, self.budget
        distils = self._distils(unlabelled)
        return {
            **base_report(cfg, task, budget, self.tokenizer),
            "sparsity": info["sparsity"],
            "params": {"dense": param_report(_as_tlprune(teacher)), "pruned": param_report(small)},
            "warnings": [],
            "distill": distils,
            "teacher": teacher_info,
            "unlabelled": [
                {"name": u.name, "texts": len(u.texts), "notes": u.notes} for u in unlabelled
            ],
            "fisher": {k: v for k, v in info.items() if k != "sparsity"},
            "transfer": {
                "coupling": "sequential" if self.aux_data else "none",
                "variant": "teacher" if self.aux_data else None,
                "aux_stage_steps": cfg.transfer.aux_stage.max_steps if self.aux_data else 0,
                "aux": [
                    {
                        "name": d.name,
                        "task": d.cfg.task,
                        "weight": d.cfg.weight,
                        "examples": len(d.rows),
                        "notes": d.notes,
                    }
                    for d in self.aux_data
                ],
            },
            "distill_unlabelled": self.cfg.distill.unlabelled_weight if distils else 0.0,
            "distill_unlabelled_layer": (
                self.cfg.distill.unlabelled_layer_weight if distils else 0.0
            ),
            "processes": 1,
        }


def _as_tlprune(model):
    """The model as a TlpruneForSequenceClassification (converted from BERT/RoBERTa)."""
    from tlprune.arch import from_hf
    from tlprune.modeling import TlpruneForSequenceClassification

    return model if isinstance(model, TlpruneForSequenceClassification) else from_hf(model)


def _load_dense(path: Path, label_names: list[str]):
    """A dense model directory: a tlprune one (a STILTs teacher built here) or BERT/RoBERTa."""
    from tlprune.modeling import TlpruneForSequenceClassification

    if json.loads((path / "config.json").read_text()).get("model_type") == "tlprune":
        return TlpruneForSequenceClassification.from_pretrained(path).eval()
    return load_teacher(path, label_names)


def _check_dense(model, path: Path) -> None:
    """The fisher presets score a dense model: every layer whole, all alike."""
    cfg = _as_tlprune(model).config
    whole = all(cfg.mha_present) and all(cfg.ffn_present)
    if not whole or len(set(cfg.heads_per_layer)) > 1 or len(set(cfg.ffn_per_layer)) > 1:
        raise TlpruneError(
            f"the teacher {path} is already pruned: the fisher presets need the dense model "
            "(a fine-tuned BERT/RoBERTa directory, or none to fine-tune one first)"
        )


def _check_transfer(cfg: RunConfig, task, budget, tokenizer) -> list:
    """The auxiliaries of a STILTs teacher (sequential coupling, dense auxiliary stage), or
    none; anything else is refused before work starts."""
    from tlprune.transfer.aux import load_aux, unique_names
    from tlprune.transfer.couplings import check_transfer

    tc = cfg.transfer
    if tc.coupling == "none":
        return []
    if tc.coupling != "sequential" or tc.aux_prune or cfg.distill.teacher:
        raise TlpruneError(
            "the fisher presets take auxiliary data only to train their dense teacher first "
            "(STILTs: transfer.coupling=sequential, transfer.aux_prune=false, no --teacher); "
            f"got coupling {tc.coupling}"
            + (", aux_prune" if tc.aux_prune else "")
            + (", --teacher" if cfg.distill.teacher else "")
        )
    check_transfer(tc, cfg.prune)
    if any(a.task == "mlm" for a in tc.aux) and tokenizer.mask_token_id is None:
        raise TlpruneError(
            f"the tokenizer of {cfg.model.name} has no mask token: MLM auxiliaries need one"
        )
    aux = [load_aux(a, task, budget, tc.seed_of_stage(cfg.seed)) for a in tc.aux]
    for d, name in zip(aux, unique_names([d.name for d in aux]), strict=True):
        d.name = name
    return aux
