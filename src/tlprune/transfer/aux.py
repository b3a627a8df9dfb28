"""Auxiliary tasks: their data (checked against the target's budget and test split), their
heads, and a batch stream on its own random generator."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlprune.config import DataConfig
from tlprune.config.transfer import AuxConfig
from tlprune.data.sampler import EpochShuffle
from tlprune.errors import ConfigError, DataError
from tlprune.transfer.mlm import MLMCollator, MLMHead

# Above this share of the target's test texts, an auxiliary is refused rather than cleaned.
MAX_TEST_OVERLAP = 0.01


@dataclass
class AuxData:
    """One auxiliary's training rows (`text`; `label` for classification, `value` (z-scores)
    for regression)."""

    name: str
    cfg: AuxConfig
    rows: Any  # datasets.Dataset
    label_names: list[str]
    max_length: int
    notes: list[str] = field(default_factory=list)


def _text_file(path: Path) -> Any:
    import datasets

    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    return datasets.Dataset.from_dict({"text": [s for s in lines if s]})


def load_aux(cfg: AuxConfig, target: Any, budget: Any, seed: int) -> AuxData:
    """Rows of auxiliary `cfg` for `target` (a TaskData) under `budget`: never the target's
    dev or test texts; its labels only when the auxiliary is another dataset."""
    from tlprune.data.sources import load_task

    notes: list[str] = []
    if cfg.source == "target":
        if cfg.mlm_text == "budget":
            rows = target.train.select(budget.train)
            notes.append(f"MLM on the {len(rows)} training texts of the budget (no extra data)")
        else:
            dev = set(int(i) for i in budget.dev)
            keep = [i for i in range(len(target.train)) if i not in dev]
            rows = target.train.select(keep)
            notes.append(
                f"MLM on all {len(rows)} texts of the target's training split without labels "
                "(budget dev texts excluded)"
            )
        rows = rows.select_columns(["text"])
        name, labels, max_length = "target-texts", [], target.max_length
    elif cfg.task == "mlm" and Path(cfg.source).suffix.lower() == ".txt":
        path = Path(cfg.source).expanduser()
        if not path.is_file():
            raise DataError(f"auxiliary text file {path} not found: check --aux")
        rows, name, labels, max_length = _text_file(path), path.stem, [], target.max_length
    else:
        data = DataConfig(
            target=cfg.source,
            text_column=cfg.text_column,
            label_column=cfg.label_column,
            budget=None,
            max_length=cfg.max_length,
        )
        aux = load_task(data, values=cfg.value_column if cfg.task == "regression" else None)
        if _same_source(aux, target):
            raise ConfigError(
                f"auxiliary {cfg.source!r} is the target itself: its labels would exceed the "
                "budget; use MLM on the target's texts instead (--aux mlm:target)"
            )
        rows, name, labels, max_length = aux.train, aux.name, aux.label_names, aux.max_length
        if cfg.task == "mlm":
            rows, labels = rows.select_columns(["text"]), []
        if cfg.task == "regression":
            rows = rows.select_columns(["text", cfg.value_column])
    if cfg.max_length is not None:
        max_length = cfg.max_length
    if len(rows) == 0:
        raise DataError(f"auxiliary {cfg.source!r} has no examples: give a source with data")
    supervised = cfg.task != "mlm"
    own = cfg.source == "target"
    rows, dropped = _without_target_texts(
        rows, target, budget, cfg.source, labelled=supervised, own=own
    )
    if dropped:
        notes.append(f"{dropped} auxiliary rows whose text is a target dev/test text were dropped")
    if cfg.max_examples is not None and cfg.max_examples < len(rows):
        rows = rows.shuffle(seed=seed).select(range(cfg.max_examples))
        notes.append(f"capped at {cfg.max_examples} examples (seeded draw)")
    if cfg.task == "regression":  # on the rows that are used, after the drops and the cap
        rows, mean, std = _standardised(rows, cfg.value_column, cfg.source)
        notes.append(
            f"regression on {cfg.value_column!r} (mean {mean:.3g}, std {std:.3g}), "
            "standardised for an MSE loss"
        )
    if cfg.task != "classification":  # logs and reports tell "vader-movies" tasks apart
        name = f"{'mlm' if cfg.task == 'mlm' else 'reg'}:{name}"
    return AuxData(name, cfg, rows, labels, max_length, notes)


# keys the branch logs beside the tasks' losses (aux/NAME): no task may be called so
RESERVED = ("cosine", "expected_sparsity", "weight_distance", "mask_distance")


def unique_names(names: list[str]) -> list[str]:
    """The same names, with `#k` added where a name repeats or is reserved (logs, reports)."""
    out: list[str] = []
    for k, name in enumerate(names):
        out.append(f"{name}#{k}" if name in out or name in RESERVED else name)
    return out


def _standardised(rows: Any, column: str, source: str) -> tuple[Any, float, float]:
    """Rows {text, value} with the numeric `column` as z-scores, and its mean and std."""
    import datasets

    raw = list(rows[column])
    if any(v is None or (isinstance(v, str) and not v.strip()) for v in raw):
        raise DataError(
            f"value column {column!r} of {source!r} has empty values: fill or drop those rows"
        )
    try:
        values = np.array([float(v) for v in raw], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"value column {column!r} of {source!r} is not numeric: regression auxiliaries need "
            "numbers (set value_column)"
        ) from None
    if not np.isfinite(values).all():
        raise DataError(f"value column {column!r} of {source!r} has missing or infinite values")
    mean, std = float(values.mean()), float(values.std())
    if std == 0.0:
        raise DataError(f"value column {column!r} of {source!r} is constant: nothing to regress")
    z = ((values - mean) / std).astype(np.float32).tolist()
    return datasets.Dataset.from_dict({"text": list(rows["text"]), "value": z}), mean, std


def _same_source(aux: Any, target: Any) -> bool:
    """The same dataset, however its path is spelt."""

    def key(t: Any) -> str:
        p = Path(t.name).expanduser()  # files and folders are named by their path
        return str(p.resolve()) if p.exists() else f"{t.name}|{t.source}"

    return key(aux) == key(target)


def _without_target_texts(
    rows: Any, target: Any, budget: Any, source: str, labelled: bool, own: bool = False
) -> tuple[Any, int]:
    """Refuse an auxiliary made of the target's test examples, or (labelled) of its training
    examples beyond the budget; drop stray exact duplicates of dev and test texts. `own`: the
    rows are the target's own training texts, whose duplicates of test texts (some datasets
    repeat texts across their splits) are dropped whatever their number."""
    test = set(target.test["text"])
    texts = rows["text"]
    if labelled:
        train = set(target.train["text"])
        in_train = sum(t in train for t in texts)
        if in_train > MAX_TEST_OVERLAP * max(1, min(len(train), len(texts))):
            raise ConfigError(
                f"auxiliary {source!r} holds {in_train} of the target's labelled training "
                "examples: their labels would exceed the budget; use --aux mlm:target-train "
                "for the target's texts without labels"
            )
    in_test = sum(t in test for t in texts)
    if not own and in_test > MAX_TEST_OVERLAP * max(1, min(len(test), len(texts))):
        raise ConfigError(
            f"auxiliary {source!r} holds {in_test} of the target's test examples: the test split "
            "is never trained on; give other data"
        )
    dev = set(target.train.select(budget.dev)["text"]) if len(budget.dev) else set()
    keep = [i for i, t in enumerate(texts) if t not in test and t not in dev]
    if len(keep) == len(texts):
        return rows, 0
    if not keep:
        raise DataError(f"auxiliary {source!r} has no examples left once target texts are removed")
    return rows.select(keep), len(texts) - len(keep)


class AuxTask(nn.Module):
    """One auxiliary: its head, its loss on the encoder, and an endless seeded batch stream.

    Batch k of epoch e depends only on (seed, e, k): the order is a per-epoch permutation and
    MLM masking draws from the CPU generator reseeded per batch under a fork. The position
    travels with state_dict() (extra state), so the checkpoint that saves the branch saves it
    and a resumed run continues the same stream."""

    def __init__(self, data: AuxData, head: nn.Module, collate: Any, seed: int):
        super().__init__()
        self.data, self.head, self.collate = data, head, collate
        self.name, self.weight, self.kind = data.name, data.cfg.weight, data.cfg.task
        self.order = EpochShuffle(len(data.rows), seed)
        self.position = (0, 0)  # (epoch, batches drawn in it)
        self._perm: tuple[int, list[int]] | None = None
        # (rank, processes): each step's global batch of processes x batch_size examples is
        # split between the processes, rank r taking slice r (one process: the whole stream)
        self.shard = (0, 1)

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.position, dtype=torch.long)

    def set_extra_state(self, state: torch.Tensor) -> None:
        epoch, batch = (int(x) for x in state.tolist())
        self.position = (epoch, batch)

    def collate_at(self, examples: list[dict], epoch: int, batch: int) -> dict[str, torch.Tensor]:
        """Collate `examples` as batch `batch` of epoch `epoch`: its randomness (MLM masking)
        from a seed of that position, on the CPU generator only, forked and restored."""
        seed = int(np.random.SeedSequence([self.order.seed, epoch, batch]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.collate(examples)

    def next_batch(self, device: torch.device) -> dict[str, torch.Tensor]:
        epoch, batch = self.position
        size = self.data.cfg.batch_size
        rank, world = self.shard
        span = size * world  # the global batch
        # a new epoch once the last process's slice would be empty (one process: once the
        # epoch is used up); the last global batch of an epoch may be short on some processes
        if batch * span + (world - 1) * size >= len(self.data.rows):
            epoch, batch = epoch + 1, 0
        if self._perm is None or self._perm[0] != epoch:
            self.order.set_epoch(epoch)
            self._perm = (epoch, list(self.order))
        start = batch * span + rank * size
        examples = [self.data.rows[i] for i in self._perm[1][start : start + size]]
        self.position = (epoch, batch + 1)
        out = self.collate_at(examples, epoch, batch * world + rank)
        return {k: v.to(device) for k, v in out.items()}

    def loss(self, encoder: nn.Module, gates: dict | None, device: torch.device) -> torch.Tensor:
        batch = self.next_batch(device)
        labels = batch.pop("labels")
        batch.pop("special_tokens_mask", None)
        hidden = encoder(**batch, gates=gates).last_hidden_state
        if self.kind == "mlm":
            return self.head(hidden, labels, encoder.embeddings.word_embeddings.weight)
        if self.kind == "regression":
            return F.mse_loss(self.head(hidden).squeeze(-1), labels)
        return F.cross_entropy(self.head(hidden), labels)


def build_aux_task(data: AuxData, model: nn.Module, tokenizer: Any, seed: int) -> AuxTask:
    """A head for `data` beside the target classifier `model` (a Tlprune classifier)."""
    from tlprune.data.collate import ClassificationCollator
    from tlprune.modeling.modeling_tlprune import TlpruneClassificationHead

    cfg = model.config
    if data.cfg.task == "mlm":
        head = MLMHead(cfg.hidden_size, cfg.vocab_size, cfg.hidden_act, cfg.layer_norm_eps)
        collate = MLMCollator(tokenizer, data.max_length, data.cfg.mlm_probability)
    else:  # classification, or regression: the same head with one output
        head_cfg = copy.deepcopy(cfg)
        head_cfg.num_labels = 1 if data.cfg.task == "regression" else len(data.label_names)
        head = TlpruneClassificationHead(head_cfg)
        with torch.no_grad():  # start from the target head's pre-trained pooler, fresh logits
            if head.dense is not None and model.classifier.dense is not None:
                head.dense.load_state_dict(model.classifier.dense.state_dict())
            nn.init.normal_(head.out_proj.weight, std=0.02)
            nn.init.zeros_(head.out_proj.bias)
        collate = ClassificationCollator(tokenizer, data.max_length)
        if data.cfg.task == "regression":
            collate = ClassificationCollator(tokenizer, data.max_length, label_key="value")
    return AuxTask(data, head, collate, seed)
