"""RoBERTa -> Tlprune: BERT layers, positions from input_ids, RoBERTa's classification head."""

from __future__ import annotations

from tlprune.arch.base import ArchAdapter
from tlprune.arch.bert import ENCODER_RULES, bert_like_config
from tlprune.modeling import TlpruneConfig


def _config(hf_config) -> TlpruneConfig:
    # Non-padding tokens are numbered from padding_idx + 1 (RobertaEmbeddings).
    pad = hf_config.pad_token_id if hf_config.pad_token_id is not None else 1
    return bert_like_config(hf_config, position_offset=pad + 1, classifier_style="roberta")


ADAPTER = ArchAdapter(
    model_type="roberta",
    base_prefix="roberta",
    config_from_hf=_config,
    key_rules=(
        *ENCODER_RULES,
        (r"classifier\.(dense|out_proj)\.(weight|bias)", r"classifier.\1.\2"),
    ),
    # RobertaModel's pooler is unused by RobertaForSequenceClassification; LM heads likewise.
    ignore=(r"^pooler\.", r"^lm_head\."),
)
