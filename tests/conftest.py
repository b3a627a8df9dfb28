"""Shared fixtures: tiny randomly initialised BERT/RoBERTa models and a tiny tokenizer, built
locally (never the network), and an isolated tlprune cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "good great bad awful fine movie film phone product love hate the a is was it this not "
    "very really quite book story news sport tech money vote game play win lose"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    return SPECIAL + WORDS


def tiny_tokenizer():
    """A WordPiece tokenizer over `tiny_vocab()` (whole words only)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab={w: i for i, w in enumerate(tiny_vocab())}, do_lower_case=True)


def tiny_config(arch: str = "bert", **kw):
    """A 2-layer, hidden-32 config (4 heads of 8, FFN 64) for `arch` in {bert, roberta}."""
    from transformers import BertConfig, RobertaConfig

    base = dict(
        vocab_size=len(tiny_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    base.update(kw)
    if arch == "bert":
        return BertConfig(**base)
    if arch == "roberta":
        base["max_position_embeddings"] += 2  # RoBERTa offsets positions by padding_idx + 1
        return RobertaConfig(pad_token_id=0, **base)
    raise ValueError(arch)


def make_tiny_model_dir(path: Path, arch: str = "bert", seed: int = 0, **kw) -> Path:
    """Save a tiny random sequence classifier and a tokenizer to `path`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(arch, **kw))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty tlprune cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TLPRUNE_CACHE", str(cache))
    return cache
