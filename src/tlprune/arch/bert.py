"""BERT (and BERT-architecture checkpoints such as MiniLM) -> Tlprune."""

from __future__ import annotations

from tlprune.arch.base import ArchAdapter
from tlprune.errors import ModelError
from tlprune.modeling import TlpruneConfig

# Embeddings and encoder layers; shared by the architectures that copy BERT's module names.
ENCODER_RULES: tuple[tuple[str, str], ...] = (
    (
        r"embeddings\.(word|position|token_type)_embeddings\.weight",
        r"tlprune.embeddings.\1_embeddings.weight",
    ),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"tlprune.embeddings.norm.\1"),
    (
        r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)",
        r"tlprune.encoder.layers.\1.attention.\2.\3",
    ),
    (
        r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)",
        r"tlprune.encoder.layers.\1.attention.output.\2",
    ),
    (
        r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)",
        r"tlprune.encoder.layers.\1.attention_norm.\2",
    ),
    (
        r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)",
        r"tlprune.encoder.layers.\1.ffn.intermediate.\2",
    ),
    (
        r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)",
        r"tlprune.encoder.layers.\1.ffn.output.\2",
    ),
    (
        r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)",
        r"tlprune.encoder.layers.\1.ffn_norm.\2",
    ),
)


def bert_like_config(hf_config, *, position_offset: int, classifier_style: str) -> TlpruneConfig:
    """A full-size TlpruneConfig from a BERT-like HF config; every size comes from `hf_config`."""
    kind = getattr(hf_config, "position_embedding_type", "absolute") or "absolute"
    if kind != "absolute":
        raise ModelError(f"position_embedding_type {kind!r} is not supported (only 'absolute')")
    if getattr(hf_config, "is_decoder", False):
        raise ModelError("decoder (causal) BERT models are not supported: give an encoder")
    d, layers = hf_config.hidden_size, hf_config.num_hidden_layers
    heads = hf_config.num_attention_heads
    head_size = getattr(hf_config, "head_dim", None) or d // heads
    return TlpruneConfig(
        vocab_size=hf_config.vocab_size,
        hidden_size=d,
        num_hidden_layers=layers,
        head_size=head_size,
        heads_per_layer=[heads] * layers,
        ffn_per_layer=[hf_config.intermediate_size] * layers,
        max_position_embeddings=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        layer_norm_eps=hf_config.layer_norm_eps,
        hidden_act=hf_config.hidden_act,
        hidden_dropout_prob=hf_config.hidden_dropout_prob,
        attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
        classifier_dropout=getattr(hf_config, "classifier_dropout", None),
        initializer_range=getattr(hf_config, "initializer_range", 0.02),
        position_offset=position_offset,
        classifier_style=classifier_style,
        classifier_hidden_size=d,
        pad_token_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
        id2label=dict(hf_config.id2label),
        label2id=dict(hf_config.label2id),
        problem_type=getattr(hf_config, "problem_type", None),
    )


def _config(hf_config) -> TlpruneConfig:
    return bert_like_config(hf_config, position_offset=0, classifier_style="bert")


ADAPTER = ArchAdapter(
    model_type="bert",
    base_prefix="bert",
    config_from_hf=_config,
    key_rules=(
        *ENCODER_RULES,
        # BERT's pooler (dense + tanh on CLS) is the head's dense layer, its classifier out_proj.
        (r"pooler\.dense\.(weight|bias)", r"classifier.dense.\1"),
        (r"classifier\.(weight|bias)", r"classifier.out_proj.\1"),
    ),
    # Pre-training heads of a BertForPreTraining / BertForMaskedLM checkpoint.
    ignore=(r"^cls\.",),
)
