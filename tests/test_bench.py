"""Analytic MACs agree with PyTorch's FLOP counter; latency comparison runs interleaved."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForSequenceClassification

from tlprune.arch import from_hf
from tlprune.bench import compare_latency, forward_macs
from tlprune.surgery import prune_model


def counted_macs(model, batch=2, seq=16):
    ids = torch.randint(5, 30, (batch, seq))
    # The math SDPA backend runs attention as matmuls the counter sees (fused kernels it skips).
    with (
        FlopCounterMode(display=False) as counter,
        torch.no_grad(),
        sdpa_kernel(SDPBackend.MATH),
    ):
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


def _pruned_dir(tiny_bert_dir, tmp_path):
    from tests.conftest import tiny_tokenizer

    from tlprune.surgery import save_pruned

    dense = from_hf(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)).eval()
    masks = {"head": torch.tensor([[1.0, 0, 1, 0], [1, 1, 0, 0]])}
    return save_pruned(prune_model(dense, masks), tiny_tokenizer(), tmp_path / "pruned")


def test_bench_pruned_against_dense_eager_and_onnxruntime(tiny_bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from tlprune.bench import BenchConfig, bench, format_table

    pruned = _pruned_dir(tiny_bert_dir, tmp_path)
    backends = ["eager", "onnxruntime", "onnxruntime-int8", "torch-int8"]
    cfg = BenchConfig(backends=backends, shapes=[[1, 8], [4, 16]], threads=1)
    info = bench(pruned, str(tiny_bert_dir), cfg, tmp_path / "b.json", progress=False)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["results"] == info["results"] and not info["skipped"]
    assert [(r["backend"], r["batch"]) for r in info["results"]] == [
        (b, n) for b in backends for n in (1, 4)
    ]
    for r in info["results"]:
        assert r["flops_ratio"] > 1 and r["speedup"] > 0
        assert r["pruned_seq_per_s"] == pytest.approx(r["batch"] / r["pruned_median_s"])
    assert info["params"]["pruned"] < info["params"]["dense"]
    table = format_table(info)
    assert "| onnxruntime | 4 x 16 |" in table and "FLOPs ratio" in table
    # every pruned variant against both dense references, same shape, and its size on disk
    ref = {(r["backend"], r["batch"]): r for r in info["results"]}
    for r in info["results"]:
        eager, int8 = ref[("eager", r["batch"])], ref[("onnxruntime-int8", r["batch"])]
        assert r["vs_dense_fp32"] == pytest.approx(eager["dense_median_s"] / r["pruned_median_s"])
        assert r["vs_dense_int8_ort"] == pytest.approx(
            int8["dense_median_s"] / r["pruned_median_s"]
        )
    sizes = info["size_bytes"]
    assert set(sizes) == set(backends)
    for backend in backends:
        assert 0 < sizes[backend]["pruned"] < sizes[backend]["dense"]
    assert sizes["onnxruntime-int8"]["pruned"] < sizes["onnxruntime"]["pruned"]
    assert "vs dense int8 ORT" in table and "| torch-int8 | 4 x 16 |" in table


def test_bench_reports_an_unavailable_backend_and_goes_on(tiny_bert_dir, tmp_path, monkeypatch):
    from tlprune.bench import BenchConfig, bench
    from tlprune.bench import backends as b

    def broken(model, threads):
        raise b.BackendUnavailable("no compiler here")

    monkeypatch.setitem(b.BACKENDS._items, "compile", broken)  # registering twice is refused
    pruned = _pruned_dir(tiny_bert_dir, tmp_path)
    cfg = BenchConfig(backends=["compile", "eager"], shapes=[[2, 8]], threads=1)
    info = bench(pruned, str(tiny_bert_dir), cfg, progress=False)
    assert info["skipped"] == {"compile": "no compiler here"}
    assert [r["backend"] for r in info["results"]] == ["eager"]


def test_bench_config_rejects_bad_values():
    from tlprune.bench import BenchConfig
    from tlprune.errors import ConfigError

    for kw in ({"backends": ["tensorrt"]}, {"repeats": 3}, {"shapes": [[0, 128]]}):
        with pytest.raises(ConfigError):
            BenchConfig(**kw)


def test_bench_cli_writes_json_and_prints_table(tiny_bert_dir, tmp_path, capsys):
    from tlprune.cli import main

    pruned = _pruned_dir(tiny_bert_dir, tmp_path)
    code = main(
        [
            "bench",
            str(pruned),
            "--against",
            str(tiny_bert_dir),
            "--backends",
            "eager",
            "--threads",
            "1",
            "--tokens",
            "16",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "| eager | 32 x 16 |" in out
    assert json.loads((pruned / "bench.json").read_text())["results"]
    code = main(["bench", str(pruned), "--against", str(tiny_bert_dir), "--tokens", "100"])
    assert code == 2 and "exceed" in capsys.readouterr().err
    code = main(["bench", str(tmp_path / "missing")])
    assert code == 2 and "no config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_backend_matches_eager(tiny_bert_dir, tmp_path):
    """torch.compile (inductor, needs a C compiler): same logits as eager (about 30 s)."""
    from tlprune.bench.backends import compiled, eager
    from tlprune.bench.latency import random_inputs
    from tlprune.surgery.save import load_any

    model = load_any(_pruned_dir(tiny_bert_dir, tmp_path))[0]
    x = random_inputs(model.config.vocab_size, 2, 16)
    assert torch.allclose(compiled(model, 1)(x), eager(model, 1)(x), atol=1e-5)
