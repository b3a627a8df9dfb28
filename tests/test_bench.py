"""Analytic MACs agree with PyTorch's FLOP counter; latency comparison runs interleaved."""

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

from tlprune.arch import from_hf
from tlprune.bench import compare_latency, forward_macs
from tlprune.surgery import prune_model


def counted_macs(model, batch=2, seq=16):
    ids = torch.randint(5, 30, (batch, seq))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops() // 2


def test_macs_match_flop_counter_dense_and_pruned(tiny_bert_dir):
    dense = from_hf(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)).eval()
    assert forward_macs(dense.config, 2, 16) == counted_macs(dense)
    masks = {
        "head": torch.tensor([[1.0, 0, 1, 0], [1, 1, 1, 0]]),
        "ffn_unit": (torch.arange(128).reshape(2, 64) % 3 == 0).float(),
        "hidden": (torch.arange(32) < 24).float(),
    }
    small = prune_model(dense, masks).eval()
    assert forward_macs(small.config, 2, 16) == counted_macs(small)
    assert forward_macs(small.config, 2, 16) < forward_macs(dense.config, 2, 16)


def test_compare_latency_reports_every_model(tiny_bert_dir):
    dense = from_hf(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir))
    out = compare_latency({"a": dense, "b": dense}, batch=2, seq=8, repeats=3, warmup=1)
    assert set(out) == {"a", "b"}
    assert all(
        r["repeats"] == 3 and r["min_s"] <= r["median_s"] <= r["max_s"] for r in out.values()
    )
