"""A BERT/RoBERTa-compatible post-LayerNorm encoder with per-layer head counts and FFN sizes.

This file is self-contained (it imports torch, transformers and the standard library only): it is
copied next to saved weights and loaded through `auto_map` with `trust_remote_code=True`.

The same module, with `gates` passed to `forward`, is the masked model used while pruning:

- head gates scale each head's context before the output projection W_O;
- a sublayer's output is LN(x + z * sublayer(x)), and x itself when its gate z is exactly 0
  (a closed sublayer bypasses its LayerNorm, as the physically removed one does);
- ffn_unit gates multiply act(x W1 + b1);
- hidden gates multiply the embedding LayerNorm output and every LayerNorm output, and
  LayerNorm statistics are taken over the dimensions whose hidden gate is non-zero.

Gate keys (each optional, a missing key means all ones): "head" [L, H], "mha" [L],
"ffn_unit" [L, f], "ffn" [L], "hidden" [d]. For a model with uneven layers, "head" and
"ffn_unit" may be sequences of per-layer tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

GATE_KEYS = ("head", "mha", "ffn_unit", "ffn", "hidden")


class TlpruneConfig(PreTrainedConfig):
    """Sizes of a (possibly pruned) encoder.

    `hidden_size` is the current width of the residual stream; `heads_per_layer[l]` and
    `ffn_per_layer[l]` may be 0 (a bias-only sublayer that keeps b_O / b2 and its LayerNorm);
    `mha_present[l]` / `ffn_present[l]` False means the sublayer is gone, LayerNorm included.
    `position_offset` 0 gives BERT positions 0..T-1; k > 0 gives RoBERTa positions computed from
    input_ids (non-padding tokens numbered from k, padding tokens at k - 1 = padding_idx).
    `classifier_style` "bert": CLS -> dense -> tanh -> dropout -> out_proj (BERT's pooler then
    classifier); "roberta": CLS -> dropout -> dense -> tanh -> dropout -> out_proj.
    `classifier_hidden_size` is the dense layer's output width (0: no dense layer).
    `source_layers[l]` is the index of layer l in the model it was pruned from.
    """

    model_type = "tlprune"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        head_size: int = 64,
        heads_per_layer: list[int] | None = None,
        ffn_per_layer: list[int] | None = None,
        mha_present: list[bool] | None = None,
        ffn_present: list[bool] | None = None,
        source_layers: list[int] | None = None,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        classifier_dropout: float | None = None,
        initializer_range: float = 0.02,
        position_offset: int = 0,
        classifier_style: str = "bert",
        classifier_hidden_size: int | None = None,
        pad_token_id: int = 0,
        **kwargs,
    ):
        n = num_hidden_layers
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = n
        self.head_size = head_size
        full_heads, full_ffn = hidden_size // head_size, 4 * hidden_size
        self.heads_per_layer = list(heads_per_layer or [full_heads] * n)
        self.ffn_per_layer = list(ffn_per_layer or [full_ffn] * n)
        self.mha_present = [bool(b) for b in mha_present] if mha_present is not None else [True] * n
        self.ffn_present = [bool(b) for b in ffn_present] if ffn_present is not None else [True] * n
        self.source_layers = list(source_layers) if source_layers is not None else list(range(n))
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.initializer_range = initializer_range
        self.position_offset = position_offset
        self.classifier_style = classifier_style
        self.classifier_hidden_size = (
            hidden_size if classifier_hidden_size is None else classifier_hidden_size
        )
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self._check()

    def _check(self) -> None:
        n = self.num_hidden_layers
        lists = ("heads_per_layer", "ffn_per_layer", "mha_present", "ffn_present", "source_layers")
        for name in lists:
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {n}")
        if self.classifier_style not in ("bert", "roberta"):
            raise ValueError(
                f"classifier_style must be 'bert' or 'roberta': {self.classifier_style}"
            )


# ---------------------------------------------------------------------------------------------
# gate helpers


def _layer_gate(gates: Mapping | None, key: str, layer: int) -> torch.Tensor | None:
    if not gates or gates.get(key) is None:
        return None
    return gates[key][layer]


def gated_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, z_hidden: torch.Tensor | None):
    """LayerNorm over the dims whose hidden gate is non-zero, output multiplied by the gate."""
    if z_hidden is None:
        return norm(x)
    z_hidden = z_hidden.to(x.dtype)
    keep = (z_hidden != 0).to(x.dtype)
    count = keep.sum()
    mean = (x * keep).sum(-1, keepdim=True) / count
    centered = (x - mean) * keep
    var = (centered * centered).sum(-1, keepdim=True) / count
    y = centered * torch.rsqrt(var + norm.eps) * norm.weight + norm.bias
    return y * z_hidden


def residual_norm(
    norm: nn.LayerNorm,
    x: torch.Tensor,
    out: torch.Tensor,
    z_sub: torch.Tensor | None,
    z_hidden: torch.Tensor | None,
) -> torch.Tensor:
    """LN(x + z * out), or x itself where the sublayer gate z is exactly 0."""
    if z_sub is None:
        return gated_layer_norm(norm, x + out, z_hidden)
    z_sub = z_sub.to(x.dtype)
    y = gated_layer_norm(norm, x + z_sub * out, z_hidden)
    return torch.where(z_sub > 0, y, x)


# ---------------------------------------------------------------------------------------------
# modules


class BiasOnly(nn.Module):
    """The output projection of a sublayer with no heads / units left: its bias alone."""

    def __init__(self, width: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*x.shape[:-1], self.bias.shape[0])


class TlpruneEmbeddings(nn.Module):
    def __init__(self, config: TlpruneConfig):
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, d) if config.type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.padding_idx = config.pad_token_id
        self.position_offset = config.position_offset

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.position_offset == 0:
            return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        mask = input_ids.ne(self.padding_idx).long()
        return torch.cumsum(mask, dim=1) * mask + (self.position_offset - 1)

    def forward(self, input_ids, token_type_ids=None, position_ids=None, z_hidden=None):
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(gated_layer_norm(self.norm, x, z_hidden))


class TlpruneAttention(nn.Module):
    """Multi-head self-attention with `num_heads` heads of `head_size` (0 heads: b_O only)."""

    def __init__(self, config: TlpruneConfig, num_heads: int):
        super().__init__()
        d, dh = config.hidden_size, config.head_size
        self.num_heads, self.head_size = num_heads, dh
        if num_heads > 0:
            self.query = nn.Linear(d, num_heads * dh)
            self.key = nn.Linear(d, num_heads * dh)
            self.value = nn.Linear(d, num_heads * dh)
            self.output = nn.Linear(num_heads * dh, d)
        else:
            self.output = BiasOnly(d)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, x, additive_mask, z_head=None):
        if self.num_heads == 0:
            return self.output(x)
        shape = (self.num_heads, self.head_size)
        q = self.query(x).unflatten(-1, shape).transpose(1, 2)  # [B, H, T, dh]
        k = self.key(x).unflatten(-1, shape).transpose(1, 2)
        v = self.value(x).unflatten(-1, shape).transpose(1, 2)
        # One fused kernel (PyTorch's SDPA), as the dense BERT uses: an eager softmax path here
        # made pruned models trail their FLOPs ratio.
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=additive_mask,
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        if z_head is not None:
            context = context * z_head.to(context.dtype).view(1, -1, 1, 1)
        return self.output(context.transpose(1, 2).flatten(-2))


class TlpruneFFN(nn.Module):
    """act(x W1 + b1) W2 + b2 with `units` intermediate units (0 units: b2 only)."""

    def __init__(self, config: TlpruneConfig, units: int):
        super().__init__()
        d = config.hidden_size
        self.units = units
        if units > 0:
            self.intermediate = nn.Linear(d, units)
            self.output = nn.Linear(units, d)
        else:
            self.output = BiasOnly(d)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x, z_unit=None):
        if self.units == 0:
            return self.output(x)
        h = self.act(self.intermediate(x))
        if z_unit is not None:
            h = h * z_unit.to(h.dtype)
        return self.output(h)


class TlpruneLayer(nn.Module):
    def __init__(self, config: TlpruneConfig, index: int):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.attention = self.attention_norm = self.ffn = self.ffn_norm = None
        if config.mha_present[index]:
            self.attention = TlpruneAttention(config, config.heads_per_layer[index])
            self.attention_norm = nn.LayerNorm(d, eps=eps)
        if config.ffn_present[index]:
            self.ffn = TlpruneFFN(config, config.ffn_per_layer[index])
            self.ffn_norm = nn.LayerNorm(d, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, additive_mask, gates=None, index=0):
        z_hidden = gates.get("hidden") if gates else None
        if self.attention is not None:
            out = self.dropout(self.attention(x, additive_mask, _layer_gate(gates, "head", index)))
            z = _layer_gate(gates, "mha", index)
            x = residual_norm(self.attention_norm, x, out, z, z_hidden)
        if self.ffn is not None:
            out = self.dropout(self.ffn(x, _layer_gate(gates, "ffn_unit", index)))
            z = _layer_gate(gates, "ffn", index)
            x = residual_norm(self.ffn_norm, x, out, z, z_hidden)
        return x


class TlpruneEncoder(nn.Module):
    def __init__(self, config: TlpruneConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            TlpruneLayer(config, i) for i in range(config.num_hidden_layers)
        )

    def forward(self, x, additive_mask, gates=None, output_hidden_states=False):
        states = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            x = layer(x, additive_mask, gates, i)
            if states is not None:
                states.append(x)
        return x, (tuple(states) if states is not None else None)


class TlpruneClassificationHead(nn.Module):
    """The CLS token through dense + tanh (if classifier_hidden_size > 0), then out_proj."""

    def __init__(self, config: TlpruneConfig):
        super().__init__()
        width = config.classifier_hidden_size
        self.style = config.classifier_style
        self.dense = nn.Linear(config.hidden_size, width) if width > 0 else None
        p = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if p is None else p)
        self.out_proj = nn.Linear(width or config.hidden_size, config.num_labels)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        x = sequence_output[:, 0]
        if self.style == "roberta":
            x = self.dropout(x)
        if self.dense is not None:
            x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


# ---------------------------------------------------------------------------------------------
# pre-trained models


class TlprunePreTrainedModel(PreTrainedModel):
    config_class = TlpruneConfig
    base_model_prefix = "tlprune"
    _no_split_modules = ("TlpruneEmbeddings", "TlpruneLayer")

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BiasOnly):
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Always float32 unless the caller names another torch dtype explicitly.
        dtype, legacy = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        dtype = legacy if dtype in (None, "auto") else dtype
        kwargs["dtype"] = torch.float32 if dtype in (None, "auto") else dtype
        return super().from_pretrained(*args, **kwargs)


def _additive_mask(attention_mask, input_ids, dtype) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def _check_gates(gates: Mapping | None) -> None:
    if gates:
        unknown = set(gates) - set(GATE_KEYS)
        if unknown:
            raise ValueError(
                f"unknown gate keys {sorted(unknown)}; expected a subset of {GATE_KEYS}"
            )


class TlpruneModel(TlprunePreTrainedModel):
    """Embeddings and encoder; returns the last hidden state (and all hidden states if asked)."""

    def __init__(self, config: TlpruneConfig):
        super().__init__(config)
        self.embeddings = TlpruneEmbeddings(config)
        self.encoder = TlpruneEncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        gates: Mapping[str, torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        _check_gates(gates)
        z_hidden = gates.get("hidden") if gates else None
        x = self.embeddings(input_ids, token_type_ids, position_ids, z_hidden)
        additive_mask = _additive_mask(attention_mask, input_ids, x.dtype)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        x, states = self.encoder(x, additive_mask, gates, bool(output_hidden_states))
        return BaseModelOutput(last_hidden_state=x, hidden_states=states)


class TlpruneForSequenceClassification(TlprunePreTrainedModel):
    """Encoder + classification head; CE loss (MSE when num_labels == 1) when labels are given."""

    def __init__(self, config: TlpruneConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.tlprune = TlpruneModel(config)
        self.classifier = TlpruneClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        gates: Mapping[str, torch.Tensor] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        out = self.tlprune(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            gates=gates,
            output_hidden_states=output_hidden_states,
        )
        logits = self.classifier(out.last_hidden_state)
        loss = None if labels is None else self.loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.num_labels == 1:
            return F.mse_loss(logits.view(-1), labels.to(logits.dtype).view(-1))
        if self.config.problem_type == "regression":
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))


__all__ = [
    "GATE_KEYS",
    "TlpruneConfig",
    "TlpruneForSequenceClassification",
    "TlpruneModel",
    "TlprunePreTrainedModel",
]
