"""Checkpoint selection on held-out agreement with the teacher (distill.agreement_texts,
distill.select) on tiny models: a seeded partition of the unlabelled texts, a probe that reads
zero on the teacher itself, both rules tracked on one trajectory, and bad input refused."""

import json

import pytest
import torch
from tests.test_fisher import _cli, _dense, _fisher_cfg
from tests.test_prune_job import sentiment_csv

from tlprune.cli import main
from tlprune.data.collate import ClassificationCollator
from tlprune.models import load_tokenizer
from tlprune.train.agreement import AgreementProbe, Heldout, selection_score, take_holdout
from tlprune.train.fisher_job import run_fisher


@pytest.fixture
def data(tmp_path):
    return sentiment_csv(tmp_path / "d.csv")


def test_take_holdout_draws_distinct_texts_and_removes_every_copy():
    from tlprune.transfer.unlabelled import Unlabelled

    def sources():
        return [Unlabelled("a", [f"t{i}" for i in range(30)] + ["t1", "t1"]),
                Unlabelled("b", [f"t{i}" for i in range(20, 40)])]  # fmt: skip

    src = sources()
    held = take_holdout(src, 12, seed=3)
    assert len(held) == len(set(held)) == 12
    left = [t for u in src for t in u.texts]
    assert not set(held) & set(left) and set(held) | set(left) == {f"t{i}" for i in range(40)}
    assert take_holdout(sources(), 12, seed=3) == held != take_holdout(sources(), 12, seed=4)
    assert any("held out for checkpoint selection" in n for u in src for n in u.notes)


class _Acc:
    def unwrap_model(self, model):
        return model


class _Log:
    def write(self, row):
        pass


def _scripted_selection(monkeypatch, losses, kls):
    """DevSelection over a linear model whose weight is the step, with scripted dev losses
    and held-out KLs: (selection, model)."""
    import tlprune.train.loop as loop
    from tlprune.train.checkpoint import Progress

    model = torch.nn.Linear(1, 1, bias=False)
    dev = iter([{"loss": x, "accuracy": 0.5} for x in losses])
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(dev))
    probe = iter([{"kl": x, "agreement": 1.0, "n": 4} for x in kls])
    held = Heldout(lambda m: next(probe), "agreement") if kls else None
    select = loop.DevSelection(model, None, 2, _Acc(), 1, len(losses), "final", None, held)
    progress = Progress()
    for step in range(1, len(losses) + 1):
        progress.step = step
        with torch.no_grad():
            model.weight.fill_(step)
        select(progress, None, _Log())
    return select, model


def test_dev_selection_keeps_each_rules_best_and_restores_the_chosen_one(monkeypatch):
    select, model = _scripted_selection(monkeypatch, [0.5, 0.4, 0.45, 0.6], [0.1, 0.3, 0.0, 0.2])
    assert {r: c.step for r, c in select.candidates.items()} == {"dev_loss": 2, "agreement": 3}
    select.restore()
    assert model.weight.item() == 3.0  # the agreement rule's state, not the last or dev loss's
    select.rule = "dev_loss"
    select.restore()
    assert model.weight.item() == 2.0


def test_dev_selection_without_heldout_is_dev_loss_and_a_nan_never_wins(monkeypatch):
    nan = float("nan")
    select, _ = _scripted_selection(monkeypatch, [0.5, nan, 0.6, 0.4, nan], [])
    assert list(select.candidates) == ["dev_loss"] and select.chosen.step == 4
    select, _ = _scripted_selection(monkeypatch, [nan, 0.4, 0.3], [])
    assert select.chosen.step == 1  # as the rule has always been: a first NaN is kept


def test_probe_reads_zero_kl_and_full_agreement_on_the_teacher_itself(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    collate = ClassificationCollator(load_tokenizer(str(tiny_bert_dir)), 32)
    texts = ["good phone", "bad film", "the movie was long", "great", "awful sound"]
    batch = collate([{"text": t, "label": 0} for t in texts])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    same = AgreementProbe(texts, logits, collate, batch_size=2)(model)
    assert same["n"] == 5 and same["agreement"] == 1.0 and abs(same["kl"]) < 1e-5
    flipped = AgreementProbe(texts, logits.flip(-1) * 5, collate, batch_size=2)(model)
    assert flipped["kl"] > 0.01 and flipped["agreement"] < 1.0
    assert selection_score("agreement", {"loss": 0.5}, flipped) == 0.5 + flipped["kl"]
    assert selection_score("dev_loss", {"loss": 0.5}, flipped) == 0.5


def _teacher(tmp_path, tiny_bert_dir, data):
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--target", str(data), "--budget",
                 "60", "--smoke", "--out", str(teacher)]) == 0  # fmt: skip
    return teacher


def test_both_rules_are_tracked_on_one_trajectory_and_heldout_texts_are_read_by_nothing_else(
    tmp_path, tiny_bert_dir, data, monkeypatch
):
    """select only chooses which state is kept: two runs that differ in it train alike and
    report the same candidates; the held-out texts are neither distilled on nor scored. The
    probe is rigged to read best at the first evaluation, so the rules disagree."""
    import tlprune.train.agreement as agreement
    import tlprune.train.fisher_job as job
    import tlprune.train.unlabelled_distill as ud

    seen: dict[str, list[str]] = {"scored": []}
    for name, cls in (("distilled", ud.UnlabelledDistill), ("held", agreement.AgreementProbe)):
        real = cls.__init__

        def spy(self, *a, _real=real, _name=name, **k):
            _real(self, *a, **k)
            seen[_name] = list(self.texts)

        monkeypatch.setattr(cls, "__init__", spy)
    real_call, real_rows = agreement.AgreementProbe.__call__, job._Run._scoring_rows

    def rigged(self, model):
        out = real_call(self, model)
        self.calls = getattr(self, "calls", 0) + 1
        return {**out, "kl": out["kl"] - 100 * (self.calls == 1)}

    def scoring_rows(self, *a, **k):
        rows, counts = real_rows(self, *a, **k)
        seen["scored"] += [r["text"] for r in rows]
        return rows, counts

    monkeypatch.setattr(agreement.AgreementProbe, "__call__", rigged)
    monkeypatch.setattr(job._Run, "_scoring_rows", scoring_rows)
    common = (
        f"distill.teacher={_teacher(tmp_path, tiny_bert_dir, data)}",
        "fisher.final=true",
        "fisher.examples=80",  # the 48 training texts, then unlabelled ones (their teacher labels)
        "data.unlabelled=[target-train]",
        "distill.agreement_texts=8",
        "prune.final.max_steps=6",
        "prune.final.eval_every=1",
        "prune.final.lr=0.01",  # a tiny model that moves: dev loss differs between steps
    )
    by_loss = run_fisher(_fisher_cfg(tiny_bert_dir, data, tmp_path / "a", *common))
    held, distilled = set(seen["held"]), set(seen["distilled"])
    assert len(held) == 8 and not held & distilled and not held & set(seen["scored"])
    assert by_loss.report["fisher"]["scored"]["target-texts"] > 0  # unlabelled texts scored
    assert len(seen["distilled"]) == by_loss.report["unlabelled"][0]["texts"]
    by_agree = run_fisher(
        _fisher_cfg(tiny_bert_dir, data, tmp_path / "b", *common, "distill.select=agreement")
    )
    sel_a, sel_b = by_loss.report["selection"], by_agree.report["selection"]
    assert (sel_a["kept"], sel_b["kept"]) == ("dev_loss", "agreement")
    assert sel_a["rules"] == sel_b["rules"] and set(sel_a["rules"]) == {"dev_loss", "agreement"}
    assert sel_a["rules"]["agreement"]["heldout"]["n"] == 8
    assert sel_a["rules"]["agreement"]["step"] == 1 != sel_a["rules"]["dev_loss"]["step"]
    for run, rule in ((by_loss, "dev_loss"), (by_agree, "agreement")):
        chosen = run.report["selection"]["rules"][rule]
        assert run.report["test"]["accuracy"] == chosen["test"]["accuracy"]
        assert run.report["dev"]["final"] == chosen["dev"]
    card = (by_agree.out_dir / "README.md").read_text()
    assert "| checkpoint selection | dev loss + held-out KL to the teacher, step 1 (8" in card
    rows = [json.loads(x) for x in (by_loss.out_dir / "log.jsonl").read_text().splitlines()]
    assert sum("heldout" in r for r in rows if r.get("phase") == "final") == 6


def test_without_agreement_texts_nothing_is_held_out(tmp_path, tiny_bert_dir, data):
    run = run_fisher(
        _fisher_cfg(
            tiny_bert_dir, data, tmp_path / "a", "fisher.final=true",
            "data.unlabelled=[target-train]",
        )
    )  # fmt: skip
    assert "selection" not in run.report


@pytest.mark.parametrize(
    ("preset", "extra", "fragment"),
    [
        ("fisher-ft", ["--unlabelled", "target-train", "distill.agreement_texts=100000"],
         "leaves none to distil on"),
        ("fisher-ft", ["distill.agreement_texts=4"], "give --unlabelled"),
        ("fisher-ft", ["distill.select=agreement"], "needs held-out texts"),
        ("fisher-ft", ["distill.select=vote"], "distill.select must be one of"),
        ("cofi", ["distill.agreement_texts=4"], "gate presets select on dev loss"),
    ],
)  # fmt: skip
def test_bad_selection_settings_are_refused_before_anything_is_written(
    tmp_path, tiny_bert_dir, data, capsys, preset, extra, fragment
):
    out = tmp_path / "run"
    code = _cli(tiny_bert_dir, data, out, *extra, preset=preset)
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name("run.partial").exists()
