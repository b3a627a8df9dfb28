"""Hidden-state distillation on unlabelled texts (distill.unlabelled_layer_weight): the
relative layer error, its gradient, and the fisher job with it on a tiny model."""

import copy
import json

import pytest
import torch
from tests.test_fisher import _dense, _fisher_cfg, data  # noqa: F401 (fixture)
from transformers import AutoTokenizer

from tlprune.cli import main
from tlprune.data.collate import ClassificationCollator
from tlprune.train.fisher_job import run_fisher
from tlprune.train.unlabelled_distill import UnlabelledDistill, layer_mse


def _states(seed=0, layers=3, shape=(2, 5, 8)):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g) for _ in range(layers + 1))


def test_layer_mse_is_zero_on_itself_and_relative_to_the_teachers_scale():
    mask = torch.ones(2, 5, dtype=torch.long)
    t, s = _states(0), _states(1)
    assert layer_mse(t, t, mask) == 0
    scaled = layer_mse(tuple(3 * x for x in s), tuple(3 * x for x in t), mask)
    torch.testing.assert_close(scaled, layer_mse(s, t, mask))
    # hand computation: mean over layers 1..L of the squared error over the teacher's energy
    pairs = zip(s[1:], t[1:], strict=True)
    want = torch.stack([((a - b) ** 2).sum() / (b**2).sum() for a, b in pairs])
    torch.testing.assert_close(layer_mse(s, t, mask), want.mean())


def test_layer_mse_ignores_padding_and_the_embeddings():
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 3:] = 0
    t, s = _states(0), list(_states(1))
    moved = [x.clone() for x in s]
    moved[0] += 100.0  # the embedding output is not a layer
    for x in moved[1:]:
        x[1, 3:] += 100.0  # padded positions
    torch.testing.assert_close(layer_mse(tuple(moved), t, mask), layer_mse(tuple(s), t, mask))


def test_layer_mse_refuses_other_depth_or_width():
    mask = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="depth and width"):
        layer_mse(_states(0, layers=2), _states(1, layers=3), mask)
    with pytest.raises(ValueError, match="depth and width"):
        layer_mse(_states(0, shape=(2, 5, 4)), _states(1), mask)


def test_the_layer_term_trains_the_student_only(tiny_bert_dir):
    """The teacher runs on each batch without gradients and is never changed; the student's
    gradient is the KL's plus the layer term's, and the logged parts are both terms."""
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    collate = ClassificationCollator(tok, 16)
    teacher = _dense(tiny_bert_dir)
    student = copy.deepcopy(teacher).train()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    texts = ["good film", "bad phone really", "it was fine", "never again", "great"]
    logits = torch.randn(len(texts), teacher.config.num_labels)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    def loss_of(layer_weight):
        torch.manual_seed(0)
        student.zero_grad()
        d = UnlabelledDistill(logits, texts, collate, 4, 1.0, 2.0, seed=3,
                              teacher=teacher, layer_weight=layer_weight)  # fmt: skip
        loss, parts = d(student)
        loss.backward()
        return loss, parts, [p.grad.clone() for p in student.parameters() if p.grad is not None]

    kl_only, kl_parts, kl_grads = loss_of(0.0)
    both, parts, grads = loss_of(0.5)
    assert set(kl_parts) == {"distill/unlabelled_kl"}
    assert set(parts) == {"distill/unlabelled_kl", "distill/unlabelled_layer"}
    assert parts["distill/unlabelled_layer"] > 0
    torch.testing.assert_close(parts["distill/unlabelled_kl"], kl_parts["distill/unlabelled_kl"])
    torch.testing.assert_close(both, kl_only + 0.5 * parts["distill/unlabelled_layer"])
    assert any(not torch.allclose(a, b) for a, b in zip(grads, kl_grads, strict=True))
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_the_layer_term_needs_the_teacher():
    with pytest.raises(ValueError, match="teacher module"):
        UnlabelledDistill(torch.zeros(1, 2), ["a"], None, 1, 1.0, 2.0, seed=0, layer_weight=1.0)


def test_fisher_job_with_the_layer_loss(tmp_path, tiny_bert_dir, data):  # noqa: F811
    """On: logged every step, in the report and the model card, and a different model than
    the logit KL alone; the run stays fisher-ft with distillation otherwise."""
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--target", str(data), "--budget",
                 "60", "--smoke", "--out", str(teacher)]) == 0  # fmt: skip
    common = (f"distill.teacher={teacher}", "fisher.final=true", "fisher.examples=48",
              "data.unlabelled=[target-train]")  # fmt: skip
    kl = run_fisher(_fisher_cfg(tiny_bert_dir, data, tmp_path / "a", *common))
    on = run_fisher(
        _fisher_cfg(
            tiny_bert_dir, data, tmp_path / "b", *common, "distill.unlabelled_layer_weight=1"
        )
    )
    rows = [json.loads(x) for x in (on.out_dir / "log.jsonl").read_text().splitlines()]
    final = [r for r in rows if r.get("phase") == "final" and "loss" in r]
    assert final and all(r["distill/unlabelled_layer"] > 0 for r in final)
    assert on.report["distill_unlabelled_layer"] == 1.0
    assert kl.report["distill_unlabelled_layer"] == 0.0
    (source,) = on.report["unlabelled"]  # described as distilled texts, not as MLM
    assert not any("MLM" in n for n in source["notes"])
    assert any("dropped: the budget's own training texts" in n for n in source["notes"])
    card = (on.out_dir / "README.md").read_text()
    assert "hidden states layer by layer, weight 1.0" in card
    sa, sb = kl.model.state_dict(), on.model.state_dict()
    assert sa.keys() == sb.keys() and any(not torch.equal(sa[k], sb[k]) for k in sa)


def test_layer_loss_alone_still_distils(tmp_path, tiny_bert_dir, data):  # noqa: F811
    """With the logit KL at 0 the layer term alone draws the unlabelled batches."""
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--model", str(tiny_bert_dir), "--target", str(data), "--budget",
                 "60", "--smoke", "--out", str(teacher)]) == 0  # fmt: skip
    run = run_fisher(
        _fisher_cfg(
            tiny_bert_dir, data, tmp_path / "a", f"distill.teacher={teacher}",
            "fisher.final=true", "data.unlabelled=[target-train]",
            "distill.unlabelled_weight=0", "distill.unlabelled_layer_weight=0.5",
        )
    )  # fmt: skip
    assert run.report["distill"] and run.report["distill_unlabelled"] == 0.0
    rows = [json.loads(x) for x in (run.out_dir / "log.jsonl").read_text().splitlines()]
    assert any("distill/unlabelled_layer" in r for r in rows)


@pytest.mark.parametrize("teacher_mode", ["eval", "train"])
def test_a_student_equal_to_its_teacher_has_no_layer_error(tiny_bert_dir, teacher_mode):
    """Through the call path: a Hugging Face BERT teacher and its tlprune conversion as the
    student (same function), the teacher even left in train mode: the layer term is ~0, so
    states and inputs line up layer by layer."""
    from transformers import AutoModelForSequenceClassification

    from tlprune.arch import from_hf

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    student = from_hf(copy.deepcopy(teacher)).eval()
    getattr(teacher, teacher_mode)()
    collate = ClassificationCollator(AutoTokenizer.from_pretrained(tiny_bert_dir), 16)
    texts = ["good film", "bad phone really, never again", "fine", "it was great fun"]
    d = UnlabelledDistill(torch.zeros(4, teacher.config.num_labels), texts, collate, 4, 1.0,
                          2.0, seed=0, teacher=teacher, layer_weight=1.0)  # fmt: skip
    _, parts = d(student)
    assert parts["distill/unlabelled_layer"] < 1e-10


def test_a_negative_layer_weight_is_refused():
    from tlprune.config import DistillConfig
    from tlprune.errors import ConfigError

    with pytest.raises(ConfigError, match="distill weights must be >= 0"):
        DistillConfig(unlabelled_layer_weight=-1.0)
