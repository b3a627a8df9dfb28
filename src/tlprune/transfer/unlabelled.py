"""Unlabelled texts beside the labelled budget (`--unlabelled SOURCE`): the target's own
training texts without labels, a .txt file, or another dataset's texts. They pass the same
checks as MLM auxiliaries: never a target dev or test text, never empty."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tlprune.config.transfer import parse_aux
from tlprune.errors import DataError
from tlprune.transfer.aux import load_aux


@dataclass
class Unlabelled:
    """One source's texts, as the report names it."""

    name: str
    texts: list[str]
    notes: list[str] = field(default_factory=list)


def load_unlabelled(specs: list[str], task: Any, budget: Any, seed: int) -> list[Unlabelled]:
    """The texts of each unlabelled source, checked against the target's dev and test texts;
    the budget's own training texts are dropped (they are scored with their labels)."""
    train_texts = set(task.train.select(budget.train)["text"])
    out = []
    for spec in specs:
        aux = load_aux(parse_aux(f"mlm:{spec}"), task, budget, seed)
        texts = [t for t in aux.rows["text"] if t not in train_texts]
        name = aux.name.removeprefix("mlm:")
        if not texts:
            raise DataError(
                f"unlabelled source {spec!r} has no texts beyond the budget's own: give a "
                "source with other texts, or leave --unlabelled out"
            )
        # load_aux describes the texts as an MLM auxiliary's; here they are distilled on
        notes = [n.removeprefix("MLM on ") for n in aux.notes]
        if dropped := len(aux.rows) - len(texts):
            notes.append(f"{dropped} texts dropped: the budget's own training texts")
        out.append(Unlabelled(name=name, texts=texts, notes=notes))
    return out
