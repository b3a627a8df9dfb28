"""Masked-language modelling as an auxiliary task: a collator and a head whose
vocabulary logits are computed at the masked positions only (a full-vocabulary
head at every position costs more than the encoder)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class MLMCollator:
    """Texts -> padded ids with 15% (configurable) of the non-special, non-padding tokens
    selected; of those 80% become [MASK], 10% a random token, 10% stay (BERT's recipe).
    It draws from torch's CPU generator: AuxTask calls it under a fork of that generator,
    seeded from the batch's position, so a stream is reproducible and never moves the
    training RNG."""

    def __init__(self, tokenizer: Any, max_length: int, probability: float):
        from transformers import DataCollatorForLanguageModeling

        if tokenizer.mask_token_id is None:
            from tlprune.errors import ConfigError

            raise ConfigError("the model's tokenizer has no mask token: MLM auxiliaries need one")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.inner = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=probability
        )

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [e["text"] for e in examples],
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
        )
        features = [{k: enc[k][i] for k in enc} for i in range(len(examples))]
        return dict(self.inner(features))


class MLMHead(nn.Module):
    """BERT's transform (dense, activation, LayerNorm), then a decoder tied to the encoder's
    word embeddings, with its own bias."""

    def __init__(self, hidden_size: int, vocab_size: int, act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[act]
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(
        self, hidden: torch.Tensor, labels: torch.Tensor, word_embeddings: torch.Tensor
    ) -> torch.Tensor:
        picked = labels != -100
        if not bool(picked.any()):
            return hidden.sum() * 0.0
        h = self.norm(self.act(self.dense(hidden[picked])))
        logits = F.linear(h, word_embeddings, self.bias)
        return F.cross_entropy(logits, labels[picked])
