"""Student-teacher agreement on held-out unlabelled texts: a second checkpoint-selection signal
beside a dev set of a few dozen labelled examples (docs/method.md, "Selecting a checkpoint")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tlprune.train.unlabelled_distill import text_batch


def take_holdout(sources: list[Any], n: int, seed: int) -> list[str]:
    """Hold n distinct texts out of the unlabelled sources (a seeded draw over their distinct
    texts) and return them; every copy of a held text leaves every source, so that neither the
    distillation nor the Fisher scores and mask tuning ever read it."""
    distinct = list(dict.fromkeys(t for u in sources for t in u.texts))
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    held = [distinct[i] for i in sorted(order[:n])]
    held_set = set(held)
    for u in sources:
        before = len(u.texts)
        u.texts = [t for t in u.texts if t not in held_set]
        if len(u.texts) < before:
            u.notes.append(
                f"{before - len(u.texts)} texts held out for checkpoint selection "
                "(distill.agreement_texts)"
            )
    return held


class AgreementProbe:
    """KL(teacher || student) at temperature 1 and the argmax agreement rate on fixed held-out
    texts whose teacher logits are given (the teacher is frozen)."""

    def __init__(self, texts: list[str], teacher_logits: torch.Tensor, collate, batch_size: int):
        if len(texts) != len(teacher_logits) or not texts:
            raise ValueError("one row of teacher logits per held-out text, at least one text")
        self.texts, self.logits = texts, teacher_logits.float()
        self.collate, self.batch_size = collate, batch_size

    @torch.no_grad()
    def __call__(self, model: Any) -> dict[str, float]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        kl_sum, agree = 0.0, 0
        for i in range(0, len(self.texts), self.batch_size):
            batch = text_batch(self.collate, self.texts[i : i + self.batch_size])
            student = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            teacher = self.logits[i : i + len(student)]
            log_p, log_q = F.log_softmax(teacher, -1), F.log_softmax(student, -1)
            kl_sum += float((log_p.exp() * (log_p - log_q)).sum())
            agree += int((teacher.argmax(-1) == student.argmax(-1)).sum())
        model.train(was_training)
        n = len(self.texts)
        return {"kl": kl_sum / n, "agreement": agree / n, "n": n}


@dataclass
class Heldout:
    """Selection on held-out texts: the probe, and the rule whose best state a run keeps."""

    probe: AgreementProbe
    rule: str = "dev_loss"


def selection_score(rule: str, dev: dict, probe: dict | None) -> float:
    """Lower is better. dev_loss: the dev loss. agreement: the dev loss plus the held-out KL
    to the teacher, two means in nats per example with equal weight (the KL is the
    cross-entropy to the teacher's soft labels less a constant)."""
    if rule == "dev_loss":
        return float(dev["loss"])
    if probe is None:
        raise ValueError("the agreement rule needs held-out texts")
    return float(dev["loss"]) + probe["kl"]


def selection_report(model: Any, loop: Any, kept: str, test_loader: Any) -> dict:
    """What each rule would have kept: its step, dev metrics, held-out agreement and test
    accuracy (measured for the report; test never chooses), and which rule the run kept."""
    import copy

    from tlprune.data.metrics import classification_metrics
    from tlprune.train.evaluate import predict

    out: dict[str, Any] = {"kept": kept, "rules": {}}
    probe_model = copy.deepcopy(model)
    for rule, c in loop.candidates.items():
        probe_model.load_state_dict(c.state)
        logits, labels = predict(probe_model, test_loader)
        test = classification_metrics(logits, labels, model.config.num_labels)
        out["rules"][rule] = {
            "step": c.step,
            "dev": c.dev,
            "heldout": c.probe,
            "test": {"accuracy": test["accuracy"], "loss": test["loss"]},
        }
    return out
