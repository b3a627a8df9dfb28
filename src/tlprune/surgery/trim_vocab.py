"""Vocabulary trimming: keep the word-embedding rows of the tokens a domain uses.

The word embeddings are half of MiniLM's parameters, and a task's texts use a few thousand of
its 30k tokens. The kept tokens are the special tokens and every token of the given texts; the
others map to [UNK]. The tokenizer is rewritten with the new ids (WordPiece: a greedy longest
match over a subset of the vocabulary picks the same pieces whenever the original pieces are
all kept), so a text whose tokens are all kept gets exactly the untrimmed model's logits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from tlprune.errors import ModelError


def kept_token_ids(tokenizer, texts: Iterable[str], batch: int = 1024) -> list[int]:
    """Sorted ids of the special tokens and of every token of `texts` (untruncated)."""
    keep = set(tokenizer.all_special_ids)
    texts = list(texts)
    for i in range(0, len(texts), batch):
        for ids in tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]:
            keep.update(ids)
    return sorted(keep)


def unk_fraction(tokenizer, texts: Iterable[str], kept: list[int]) -> float:
    """Fraction of the tokens of `texts` that trimming to `kept` sends to [UNK]."""
    keep, total, lost = set(kept), 0, 0
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        total += len(ids)
        lost += sum(1 for t in ids if t not in keep)
    return lost / max(total, 1)


def trim_tokenizer_json(data: dict, kept: list[int]) -> dict:
    """tokenizer.json (a dict) with only the `kept` ids, renumbered in their old order."""
    model = data.get("model", {})
    if model.get("type") != "WordPiece":
        raise ModelError(
            f"vocabulary trimming supports WordPiece tokenizers (BERT family); this one is "
            f"{model.get('type')!r}: export without --trim-vocab"
        )
    new_id = {old: new for new, old in enumerate(kept)}
    by_id = {i: tok for tok, i in model["vocab"].items()}
    out = json.loads(json.dumps(data))  # a deep copy
    out["model"]["vocab"] = {by_id[old]: new for old, new in new_id.items()}
    for tok in out.get("added_tokens", []):
        if tok["id"] not in new_id:
            raise ModelError(f"added token {tok['content']!r} is not kept: a bug, please report")
        tok["id"] = new_id[tok["id"]]
    post = out.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [new_id[i] for i in spec["ids"]]
    if out.get("padding"):
        out["padding"]["pad_id"] = new_id[out["padding"]["pad_id"]]
    return out


@torch.no_grad()
def trim_model(model, kept: list[int]) -> None:
    """Keep only rows `kept` of the word embeddings, in place (config.vocab_size follows)."""
    emb = model.get_input_embeddings()
    index = torch.tensor(kept, dtype=torch.long)
    new = torch.nn.Embedding(len(kept), emb.embedding_dim, padding_idx=None)
    new.weight.copy_(emb.weight[index])
    model.set_input_embeddings(new)
    old_pad = model.config.pad_token_id
    model.config.vocab_size = len(kept)
    if old_pad is not None:
        model.config.pad_token_id = kept.index(old_pad) if old_pad in kept else None


def trim_directory(src: Path, dst: Path, kept: list[int]) -> None:
    """Write the trimmed tokenizer files of model directory `src` into `dst`."""
    path = src / "tokenizer.json"
    if not path.is_file():
        raise ModelError(
            f"{src} has no tokenizer.json (a fast tokenizer): vocabulary trimming rewrites it"
        )
    data = trim_tokenizer_json(json.loads(path.read_text()), kept)
    (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = src / "tokenizer_config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        cfg.pop("added_tokens_decoder", None)  # old ids; rebuilt from tokenizer.json
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
