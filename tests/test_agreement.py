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
from tlprune.train.agreement import AgreementProbe, selection_score, split_holdout
from tlprune.train.fisher_job import run_fisher


@pytest.fixture
def data(tmp_path):
    return sentiment_csv(tmp_path / "d.csv")


def test_split_holdout_is_a_seeded_partition():
    keep, held = split_holdout(50, 12, seed=3)
    assert len(held) == 12 and sorted(keep + held) == list(range(50))
    assert split_holdout(50, 12, seed=3) == (keep, held)
    assert split_holdout(50, 12, seed=4)[1] != held


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


def test_both_rules_are_tracked_on_one_trajectory_and_heldout_texts_are_not_distilled(
    tmp_path, tiny_bert_dir, data, monkeypatch
):
    """select only chooses which state is kept: two runs that differ in it train alike and
    report the same candidates; the held-out texts and the distilled ones are disjoint."""
    import tlprune.train.agreement as agreement
    import tlprune.train.unlabelled_distill as ud

    seen: dict[str, list[str]] = {}
    for name, cls in (("distilled", ud.UnlabelledDistill), ("held", agreement.AgreementProbe)):
        real = cls.__init__

        def spy(self, *a, _real=real, _name=name, **k):
            _real(self, *a, **k)
            seen[_name] = list(self.texts)

        monkeypatch.setattr(cls, "__init__", spy)
    common = (
        f"distill.teacher={_teacher(tmp_path, tiny_bert_dir, data)}",
        "fisher.final=true",
        "fisher.examples=48",
        "data.unlabelled=[target-train]",
        "distill.agreement_texts=8",
        "prune.final.max_steps=6",
        "prune.final.eval_every=1",
    )
    by_loss = run_fisher(_fisher_cfg(tiny_bert_dir, data, tmp_path / "a", *common))
    assert len(seen["held"]) == 8 and not set(seen["held"]) & set(seen["distilled"])
    assert len(seen["held"]) + len(seen["distilled"]) == by_loss.report["unlabelled"][0]["texts"]
    by_agree = run_fisher(
        _fisher_cfg(tiny_bert_dir, data, tmp_path / "b", *common, "distill.select=agreement")
    )
    sel_a, sel_b = by_loss.report["selection"], by_agree.report["selection"]
    assert (sel_a["kept"], sel_b["kept"]) == ("dev_loss", "agreement")
    assert sel_a["rules"] == sel_b["rules"] and set(sel_a["rules"]) == {"dev_loss", "agreement"}
    assert sel_a["rules"]["agreement"]["heldout"]["n"] == 8
    for run, rule in ((by_loss, "dev_loss"), (by_agree, "agreement")):
        chosen = run.report["selection"]["rules"][rule]
        assert run.report["test"]["accuracy"] == chosen["test"]["accuracy"]
        assert run.report["dev"]["final"] == chosen["dev"]
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
