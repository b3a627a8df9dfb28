"""The retraining-free presets on tiny models: Fisher gradients, mask search, rearrangement,
mask tuning, folding, and the `fisher` / `fisher-ft` jobs end to end."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from tests.test_prune_job import sentiment_csv, tiny_cfg
from transformers import AutoModelForSequenceClassification

from tlprune.arch import from_hf, unit_sizes
from tlprune.cli import main
from tlprune.gates.fisher import (
    collect_mask_grads,
    layer_floor_counts,
    rearrange,
    rearrange_layer,
    removal_cost,
    search_masks,
)
from tlprune.gates.mask_tuning import fold_scales, tune_masks
from tlprune.gates.size import exact_size
from tlprune.surgery import prune_model
from tlprune.train.fisher_job import run_fisher


@pytest.fixture
def data(tmp_path):
    return sentiment_csv(tmp_path / "d.csv")


def _dense(tiny_bert_dir):
    torch.manual_seed(1)
    model = from_hf(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)).eval()
    with torch.no_grad():  # a non-trivial function: random weights of a usual scale
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _batches(n=3, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 35, (bs, 7), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 5:] = 0  # some padding
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids[:, 1] % 2})
    return out


def test_mask_grads_are_each_examples_own_gradient(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    batch = _batches(1)[0]
    grads = collect_mask_grads(model, [batch])
    assert not any(p.grad is not None for p in model.parameters())  # weights untouched
    sizes = unit_sizes(model.config)
    for b in range(batch["labels"].shape[0]):  # one example at a time, through the model's gates
        gates = {
            "head": torch.ones(sizes.num_layers, sizes.num_heads, requires_grad=True),
            "ffn_unit": torch.ones(sizes.num_layers, sizes.ffn, requires_grad=True),
        }
        one = {k: v[b : b + 1] for k, v in batch.items() if k != "labels"}
        logits = model(**one, gates=gates).logits
        F.cross_entropy(logits, batch["labels"][b : b + 1]).backward()
        assert torch.allclose(grads.head[b], gates["head"].grad, atol=1e-6)
        assert torch.allclose(grads.ffn_unit[b], gates["ffn_unit"].grad, atol=1e-6)


@pytest.mark.parametrize("sparsity", [0.3, 0.6, 0.9])
def test_search_meets_the_budget_within_one_unit_and_is_optimal(tiny_bert_dir, sparsity):
    sizes = unit_sizes(_dense(tiny_bert_dir).config)
    g = torch.Generator().manual_seed(3)
    diag = {"head": torch.rand(2, 4, generator=g), "ffn_unit": torch.rand(2, 64, generator=g)}
    budget = math.floor((1 - sparsity) * sizes.full_size)
    masks = search_masks(diag, sizes, budget)
    kept = exact_size(masks, sizes)
    # within one FFN unit, unless every FFN unit is in and a head would not fit
    assert kept <= budget
    assert budget < kept + sizes.ffn_unit_params() or bool(masks["ffn_unit"].all())
    # no other head count keeps more importance within the budget (exhaustive over n)
    value = float(
        (diag["head"] * masks["head"]).sum() + (diag["ffn_unit"] * masks["ffn_unit"]).sum()
    )
    heads = torch.sort(diag["head"].flatten(), descending=True).values
    units = torch.sort(diag["ffn_unit"].flatten(), descending=True).values
    for n in range(9):
        room = budget - n * sizes.head_params()
        if room >= 0:
            k = min(room // sizes.ffn_unit_params(), 128)
            assert float(heads[:n].sum() + units[:k].sum()) <= value + 1e-4


@pytest.mark.parametrize("floor", [0.5, 1.0])
def test_layer_floor_keeps_every_layer_alive_and_still_meets_the_budget(tiny_bert_dir, floor):
    sizes = unit_sizes(_dense(tiny_bert_dir).config)
    # layer 1 scores far below layer 0: without a floor the search starves it
    diag = {
        "head": torch.rand(2, 4) + torch.tensor([[10.0], [0.0]]),
        "ffn_unit": torch.rand(2, 64) + torch.tensor([[10.0], [0.0]]),
    }
    budget = math.floor(0.25 * sizes.full_size)
    min_heads, min_units = layer_floor_counts(sizes, budget, floor)
    assert min_units > 0
    bare = search_masks(diag, sizes, budget)
    assert bare["head"][1].sum() < min_heads or bare["ffn_unit"][1].sum() < min_units
    masks = search_masks(diag, sizes, budget, floor=floor)
    assert (masks["head"].sum(1) >= min_heads).all()
    assert (masks["ffn_unit"].sum(1) >= min_units).all()
    kept = exact_size(masks, sizes)
    assert kept <= budget < kept + sizes.ffn_unit_params()
    # the reserved units of the weak layer are its best ones
    best = torch.argsort(diag["ffn_unit"][1], descending=True)[:min_units]
    assert masks["ffn_unit"][1, best].all()


def test_layer_floor_keeps_a_head_where_the_share_rounds_to_none(tiny_bert_dir):
    sizes = unit_sizes(_dense(tiny_bert_dir).config)
    budget = math.floor(0.3 * sizes.full_size)  # 0.5 x 0.3 x 4 heads = 0.6: rounds to 0
    heads, units = layer_floor_counts(sizes, budget, 0.5)
    assert heads == 1 and units == math.floor(0.5 * budget / sizes.full_size * sizes.ffn)
    diag = {"head": torch.rand(2, 4) + torch.tensor([[10.0], [0.0]]), "ffn_unit": torch.rand(2, 64)}
    masks = search_masks(diag, sizes, budget, floor=0.5)
    assert (masks["head"].sum(1) >= 1).all()


def test_layer_floor_zero_is_the_plain_search(tiny_bert_dir):
    sizes = unit_sizes(_dense(tiny_bert_dir).config)
    diag = {"head": torch.rand(2, 4), "ffn_unit": torch.rand(2, 64)}
    budget = math.floor(0.3 * sizes.full_size)
    plain = search_masks(diag, sizes, budget)
    zero = search_masks(diag, sizes, budget, floor=0.0)
    assert all(torch.equal(plain[k], zero[k]) for k in plain)


def test_full_budget_keeps_everything(tiny_bert_dir):
    sizes = unit_sizes(_dense(tiny_bert_dir).config)
    diag = {"head": torch.rand(2, 4), "ffn_unit": torch.rand(2, 64)}
    masks = search_masks(diag, sizes, sizes.full_size)
    assert masks["head"].all() and masks["ffn_unit"].all()


def test_rearrangement_follows_the_off_diagonal_fisher():
    # Two of four units go. Units 0 and 1 matter most alone but are redundant together (removing
    # both costs 1 + 1 - 2 * 0.95); units 2 and 3 matter less alone but compound (0.8 + 0.8 +
    # 2 * 0.7). The diagonal removes {2, 3}; the Fisher says remove {0, 1}.
    I = torch.tensor(  # noqa: E741
        [[1.0, -0.95, 0, 0], [-0.95, 1.0, 0, 0], [0, 0, 0.8, 0.7], [0, 0, 0.7, 0.8]]
    )
    diag_mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    new = rearrange_layer(I, diag_mask)
    assert torch.equal(new, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert removal_cost(I, new) == pytest.approx(0.1) and removal_cost(
        I, diag_mask
    ) == pytest.approx(3.0)


def test_rearrange_never_raises_the_cost_and_keeps_counts(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    grads = collect_mask_grads(model, _batches(4))
    sizes = unit_sizes(model.config)
    masks = search_masks(grads.diagonal(), sizes, math.floor(0.4 * sizes.full_size))
    new, costs = rearrange(grads, masks)
    for kind in ("head", "ffn_unit"):
        assert torch.equal(new[kind].sum(1), masks[kind].sum(1))  # per layer, same counts
        assert costs[kind]["after"] <= costs[kind]["before"] + 1e-9


def test_mask_tuning_lowers_the_reconstruction_error(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    sizes = unit_sizes(model.config)
    grads = collect_mask_grads(model, _batches(4))
    masks = search_masks(grads.diagonal(), sizes, math.floor(0.5 * sizes.full_size))
    scales, stats = tune_masks(model, model, masks, lambda: _batches(4, seed=1))
    assert stats.before and sum(stats.after.values()) < sum(stats.before.values())

    # measured independently of the solver's statistics: the last hidden state of the pruned
    # model moves towards the dense model's on the tuning texts
    def distance(gates):
        total = 0.0
        with torch.no_grad():
            for b in _batches(4, seed=1):
                inputs = {k: v for k, v in b.items() if k != "labels"}
                want = model.tlprune(**inputs).last_hidden_state
                got = model.tlprune(**inputs, gates=gates).last_hidden_state
                total += float(((want - got) ** 2).sum())
        return total

    assert distance(scales) < distance(masks)
    for kind in ("head", "ffn_unit"):  # removed units stay removed
        assert torch.all(scales[kind][masks[kind] == 0] == 0)


def test_folded_small_model_computes_the_tuned_masked_model(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    sizes = unit_sizes(model.config)
    grads = collect_mask_grads(model, _batches(2))
    masks = search_masks(grads.diagonal(), sizes, math.floor(0.5 * sizes.full_size))
    scales, _ = tune_masks(model, model, masks, lambda: _batches(2))
    batch = {k: v for k, v in _batches(1, seed=5)[0].items() if k != "labels"}
    with torch.no_grad():
        want = model(**batch, gates=scales).logits
        fold_scales(model, scales)
        small = prune_model(model, masks).eval()
        assert torch.allclose(small(**batch).logits, want, atol=1e-5)
    assert exact_size(masks, sizes) == sum(
        layer.attention.num_heads * sizes.head_params() + layer.ffn.units * sizes.ffn_unit_params()
        for layer in small.tlprune.encoder.layers
    )


def test_every_mask_kept_reproduces_the_dense_model(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    sizes = unit_sizes(model.config)
    batch = {k: v for k, v in _batches(1, seed=7)[0].items() if k != "labels"}
    with torch.no_grad():
        want = model(**batch).logits
    grads = collect_mask_grads(model, _batches(2))
    masks = search_masks(grads.diagonal(), sizes, sizes.full_size)
    masks, _ = rearrange(grads, masks)
    scales, _ = tune_masks(model, model, masks, lambda: _batches(2))
    for kind in ("head", "ffn_unit"):  # a perfect fit needs no change
        assert torch.allclose(scales[kind], torch.ones_like(scales[kind]), atol=1e-4)
    with torch.no_grad():
        fold_scales(model, scales)
        small = prune_model(model, masks).eval()
        assert torch.allclose(small(**batch).logits, want, atol=1e-4)


def _fisher_cfg(tiny_bert_dir, data, out, *extra):
    return tiny_cfg(
        tiny_bert_dir,
        data,
        out,
        "preset=fisher",
        "prune.method=fisher",
        "train.max_steps=3",
        *extra,
    )


def test_fisher_job_end_to_end(tmp_path, tiny_bert_dir, data):
    out = tmp_path / "run"
    unl = tmp_path / "u.txt"
    unl.write_text("good movie\nbad phone really\nthe film was great\n")
    result = run_fisher(
        _fisher_cfg(tiny_bert_dir, data, out, "fisher.final=true", f"data.unlabelled=[{unl}]")
    )
    report = json.loads((out / "prune_report.json").read_text())
    for name in (
        "config.json",
        "model.safetensors",
        "masks.safetensors",
        "README.md",
        "predictions.npz",
        "log.jsonl",
        "tokenizer_config.json",
    ):
        assert (out / name).is_file(), name
    assert not out.with_name("run.partial").exists()
    sp = report["sparsity"]
    assert sp["kept_params"] <= sp["budget_params"] < sp["kept_params"] + 2 * 32 + 1
    assert report["teacher"]["built"] and "accuracy" in report["teacher"]["test"]
    assert report["fisher"]["scored"] == {"labelled": 48, "u": 3}
    assert report["unlabelled"] == [{"name": "u", "texts": 3, "notes": []}]
    assert report["steps"]["final"] > 0 and "final" in report["seconds"]
    assert result.model.config.model_type == "tlprune"


def test_tool_built_teacher_is_reused_on_resume(tmp_path, tiny_bert_dir, data, monkeypatch):
    import tlprune.train.fisher_job as job

    out = tmp_path / "run"
    cfg = _fisher_cfg(tiny_bert_dir, data, out)

    def crash(*a, **k):
        raise KeyboardInterrupt

    real = job._Run.prune
    monkeypatch.setattr(job._Run, "prune", crash)
    with pytest.raises(KeyboardInterrupt):
        run_fisher(cfg)
    assert (out.with_name("run.partial") / "teacher" / "config.json").is_file()
    monkeypatch.setattr(job._Run, "prune", real)
    monkeypatch.setattr(job, "train_classifier", crash)  # no training on resume: no final here
    result = run_fisher(cfg, resume=True)
    assert result.report["teacher"]["built"] is False
    assert out.is_dir() and not out.with_name("run.partial").exists()


def _cli(tiny_bert_dir, data, out, *extra, preset="fisher"):
    return main(
        [
            "prune",
            "--preset",
            preset,
            "--model",
            str(tiny_bert_dir),
            "--target",
            str(data),
            "--out",
            str(out),
            "--budget",
            "60",
            "--smoke",
            *extra,
        ]
    )


def test_fisher_cli_with_teacher_dir(tmp_path, tiny_bert_dir, data, capsys):
    out = tmp_path / "run"
    teacher = tmp_path / "teacher"
    assert (
        main(
            [
                "finetune",
                "--model",
                str(tiny_bert_dir),
                "--target",
                str(data),
                "--budget",
                "60",
                "--smoke",
                "--out",
                str(teacher),
            ]
        )
        == 0
    )
    assert _cli(tiny_bert_dir, data, out, "--teacher", str(teacher)) == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["teacher"]["dir"] == str(teacher) and not report["teacher"]["built"]
    assert "dense model:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--unlabelled", "MISSING"], "not found"),
        (["--unlabelled", "EMPTY"], "no examples"),
        (["--unlabelled", "BUDGET"], "no texts beyond the budget"),
        (["--teacher", "OTHER"], "predicts"),
        (["--teacher", "NOMODEL"], "cannot load the teacher"),
        (["--unlabelled", "NOTEXT"], "text"),
    ],
)
def test_fisher_bad_input(tmp_path, tiny_bert_dir, data, capsys, extra, fragment):
    from tests.conftest import make_tiny_model_dir

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    other = make_tiny_model_dir(tmp_path / "other", num_labels=3)
    notext = tmp_path / "notext.csv"
    notext.write_text("sentence,label\ngood,pos\nbad,neg\n")
    (tmp_path / "nomodel").mkdir()
    names = {
        "MISSING": str(tmp_path / "missing.txt"),
        "EMPTY": str(empty),
        "BUDGET": "target",  # the budget's own texts: nothing beyond them
        "OTHER": str(other),
        "NOMODEL": str(tmp_path / "nomodel"),
        "NOTEXT": str(notext),
    }
    extra = [names.get(a, a) for a in extra]
    out = tmp_path / "run"
    code = _cli(tiny_bert_dir, data, out, *extra)
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_unlabelled_is_refused_by_the_gate_presets(tmp_path, tiny_bert_dir, data, capsys):
    out = tmp_path / "run"
    code = _cli(tiny_bert_dir, data, out, "--unlabelled", "target-train", preset="cofi")
    err = capsys.readouterr().err
    assert code == 2 and "--unlabelled" in err and not out.exists()


def test_fisher_stilts_trains_the_teacher_on_the_auxiliary_and_distils(
    tmp_path, tiny_bert_dir, data
):
    from tests.test_transfer import aux_csv

    aux = aux_csv(tmp_path / "aux.csv")
    out = tmp_path / "run"
    code = main(["prune", "--preset", "fisher-stilts", "--model", str(tiny_bert_dir),
                 "--target", str(data), "--out", str(out), "--budget", "60", "--smoke",
                 "--aux", str(aux), "--unlabelled", "target-train"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["teacher"]["recipe"].startswith("STILTs")
    assert report["transfer"]["aux"][0]["examples"] > 0
    assert report["unlabelled"][0]["name"] == "target-texts"
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("phase") == "aux" for r in rows)
    assert any("distill/unlabelled_kl" in r for r in rows if r.get("phase") == "final")
    card = (out / "README.md").read_text()
    assert "dense model (teacher)" in card and "STILTs" in card
    assert "| unlabelled texts | target-texts:" in card and "weight 1.0" in card


def test_stilts_teacher_reuses_a_cached_auxiliary_stage(tmp_path, tiny_bert_dir, data):
    """A second run with the same model, auxiliary and seed (another sparsity) starts from the
    first run's auxiliary stage: same teacher, no auxiliary steps; another seed trains anew.
    transfer.stage_seed gives the stage a seed of its own: trained afresh under another run
    seed, the stage takes exactly the steps it took under its own seed."""
    from tests.test_transfer import aux_csv

    aux = aux_csv(tmp_path / "aux.csv")

    def run(name, *extra):
        out = tmp_path / name
        code = main(["prune", "--preset", "fisher-stilts", "--model", str(tiny_bert_dir),
                     "--target", str(data), "--out", str(out), "--budget", "60", "--smoke",
                     "--aux", str(aux), *extra])  # fmt: skip
        assert code == 0
        report = json.loads((out / "prune_report.json").read_text())
        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        return report, [r for r in rows if r.get("phase") == "aux"]

    first, first_aux = run("a", "--sparsity", "0.5")
    second, second_aux = run("b", "--sparsity", "0.7")
    third, third_aux = run("c", "--sparsity", "0.5", "--seed", "1")
    assert first_aux and not first["teacher"]["aux_stage_from_cache"]
    assert not second_aux and second["teacher"]["aux_stage_from_cache"]
    assert second["teacher"]["dev"] == first["teacher"]["dev"]
    assert second["teacher"]["test"] == first["teacher"]["test"]
    assert third_aux and not third["teacher"]["aux_stage_from_cache"]
    _, own = run("d", "--seed", "1", "transfer.stage_seed=0", "transfer.cache_stage=false")
    # a row per stage step: its step and each auxiliary's loss (keyed aux/<source>)
    losses = [
        {k: v for k, v in r.items() if k.startswith("aux/") or k == "step"} for r in first_aux
    ]
    assert losses and all(len(x) > 1 for x in losses)
    assert [{k: r[k] for k in x} for r, x in zip(own, losses, strict=True)] == losses
    assert [{k: r[k] for k in x} for r, x in zip(third_aux, losses, strict=True)] != losses


def test_unlabelled_weight_zero_draws_nothing_and_equals_plain_fine_tune(
    tmp_path, tiny_bert_dir, data
):
    """With the unlabelled weight at 0 the run is fisher-ft's bit for bit; above 0 it differs
    only through the final fine-tune (48 = the budget's training texts: nothing else scored)."""
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--target", str(data), "--budget",
                 "60", "--smoke", "--out", str(teacher)]) == 0  # fmt: skip
    common = (f"distill.teacher={teacher}", "fisher.final=true", "fisher.examples=48")
    unl = "data.unlabelled=[target-train]"
    plain = run_fisher(_fisher_cfg(tiny_bert_dir, data, tmp_path / "a", *common))
    off = run_fisher(
        _fisher_cfg(
            tiny_bert_dir, data, tmp_path / "b", *common, unl, "distill.unlabelled_weight=0"
        )
    )
    on = run_fisher(_fisher_cfg(tiny_bert_dir, data, tmp_path / "c", *common, unl))
    sa, sb, sc = (r.model.state_dict() for r in (plain, off, on))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)

    def rows(r):
        return [json.loads(x) for x in (r.out_dir / "log.jsonl").read_text().splitlines()]

    assert not any("distill/unlabelled_kl" in r for r in rows(off))
    assert any("distill/unlabelled_kl" in r for r in rows(on))
    assert off.report["distill_unlabelled"] == 0 and on.report["distill_unlabelled"] == 1.0


def test_pruning_leaves_a_tlprune_teacher_unchanged(tmp_path, tiny_bert_dir, data):
    """Tuning and folding work on a copy: the teacher still distils afterwards."""
    import tlprune.train.fisher_job as job

    cfg = _fisher_cfg(tiny_bert_dir, data, tmp_path / "run")
    teacher = _dense(tiny_bert_dir)  # a TlpruneForSequenceClassification, as STILTs builds
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    run = job._Run(cfg, *_task_budget_tokenizer(cfg), None, tmp_path / "log.jsonl")
    run.aux_data = []
    from tlprune.train.metrics_log import make_accelerator

    run.accelerator = make_accelerator("no")
    run.prune(teacher, [])
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _task_budget_tokenizer(cfg):
    from tlprune.data.sources import load_task
    from tlprune.data.split import draw_budget
    from tlprune.models import load_tokenizer

    task = load_task(cfg.data)
    budget = draw_budget(task.train["label"], cfg.data.budget, cfg.seed, 0.2, task.num_labels)
    return task, budget, load_tokenizer(cfg.model.name)


def test_built_teacher_is_the_finetune_presets_model(tmp_path, tiny_bert_dir, data):
    ft = tmp_path / "ft"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--target", str(data), "--budget",
                 "60", "--out", str(ft), "train.max_steps=3"]) == 0  # fmt: skip
    result = run_fisher(_fisher_cfg(tiny_bert_dir, data, tmp_path / "run"))
    metrics = json.loads((ft / "metrics.json").read_text())
    teacher = result.report["teacher"]
    assert (
        teacher["built"] and teacher["dev"] == metrics["dev"] and teacher["test"] == metrics["test"]
    )


def test_a_pruned_teacher_is_refused(tmp_path, tiny_bert_dir, data, capsys):
    pruned = tmp_path / "pruned"
    assert _cli(tiny_bert_dir, data, pruned) == 0
    out = tmp_path / "run"
    code = _cli(tiny_bert_dir, data, out, "--teacher", str(pruned))
    err = capsys.readouterr().err
    assert code == 2 and "already pruned" in err and "Traceback" not in err, err
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_transfer_preset_is_fisher_through_a_stilts_teacher_with_a_layer_floor():
    from tlprune.presets import preset_config

    cfg = preset_config("transfer")
    assert cfg.prune.method == "fisher" and cfg.fisher.final and cfg.fisher.layer_floor == 0.5
    assert not cfg.fisher.score_unlabelled
    assert [a.source for a in cfg.transfer.aux] == ["vader-movies"]
    assert cfg.transfer.coupling == "sequential" and not cfg.transfer.aux_prune
    assert cfg.data.unlabelled == ["target-train"] and cfg.distill.unlabelled_weight == 1.0
