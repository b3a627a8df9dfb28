"""Deployable variants on tiny models: vocabulary trimming, int8 ONNX, and their bad input."""

import json

import numpy as np
import pytest
import torch
from tests.test_prune_job import sentiment_csv, tiny_cfg

from tlprune.cli import main
from tlprune.surgery import load
from tlprune.train.prune_job import run_prune


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("export")
    data = sentiment_csv(root / "d.csv")
    out = root / "run"
    run_prune(tiny_cfg(tiny_bert_dir, data, out))
    return out


def _logits(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_trimmed_model_equals_untrimmed_on_covered_texts(tmp_path, pruned):
    texts = tmp_path / "keep.txt"
    texts.write_text("great movie\nawful phone\nthe film was good\n")
    out = tmp_path / "trim"
    assert main(["export", str(pruned), "--trim-source", str(texts), "--out", str(out)]) == 0
    model, tok = load(pruned)
    small, small_tok = load(out)
    assert small.config.vocab_size < model.config.vocab_size
    covered = ["great movie", "the film was good", "awful phone great"]
    assert torch.allclose(
        _logits(small, small_tok, covered), _logits(model, tok, covered), atol=1e-5
    )
    # a word outside the kept texts is [UNK] for the trimmed tokenizer, and it round-trips
    ids = small_tok("great sport")["input_ids"]
    assert small_tok.convert_ids_to_tokens(ids) == ["[CLS]", "great", "[UNK]", "[SEP]"]
    assert small_tok.decode(small_tok("great movie")["input_ids"], skip_special_tokens=True) == (
        "great movie"
    )
    # loads with plain transformers too
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert torch.allclose(_logits(hf, hf_tok, covered), _logits(model, tok, covered), atol=1e-5)
    report = json.loads((out / "export_report.json").read_text())
    assert report["vocab"]["after"] == small.config.vocab_size
    assert 0 <= report["test_unk_fraction"] <= 1 and "model.safetensors" in report["test_accuracy"]


def test_default_trim_uses_the_runs_training_texts_and_reports_unk(tmp_path, pruned):
    out = tmp_path / "trim"
    assert main(["export", str(pruned), "--trim-vocab", "--out", str(out)]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["trim_sources"][0]["source"] == "target-train"
    assert report["test_unk_fraction"] == 0.0  # the tiny task's test words all occur in train


def test_int8_onnx_is_close_to_fp32(tmp_path, pruned):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    out = tmp_path / "int8"
    assert main(["export", str(pruned), "--int8", "--onnx", "--out", str(out)]) == 0
    _, tok = load(out)
    batch = tok(["great movie", "awful phone"], return_tensors="np", padding=True)
    feeds = {}
    for name in ("model.onnx", "model.int8.onnx"):
        s = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        names = {i.name for i in s.get_inputs()}
        feeds[name] = s.run(None, {k: v.astype(np.int64) for k, v in batch.items() if k in names})[
            0
        ]
    # dynamic int8 on a tiny random model: within 0.05 of the fp32 logits
    assert np.abs(feeds["model.onnx"] - feeds["model.int8.onnx"]).max() < 0.05
    sizes = json.loads((out / "export_report.json").read_text())["files"]
    assert sizes["model.int8.onnx"] < sizes["model.onnx"]


def test_torch_int8_runs_without_tlprune_and_is_close_to_fp32(tmp_path, pruned):
    """model.int8.pt (torch's dynamic int8, TorchScript): torch.jit.load runs it on padded
    batches of any length, within 0.05 of the fp32 model's logits on a tiny random model."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "int8"
    assert main(["export", str(pruned), "--int8", "--out", str(out)]) == 0
    model, tok = load(pruned)
    traced = torch.jit.load(str(out / "model.int8.pt"))
    texts = ["great movie", "awful phone, the film was not good at all", "good"]
    batch = tok(texts, return_tensors="pt", padding=True)
    args = [batch["input_ids"], batch["attention_mask"]]
    if "token_type_ids" in batch and getattr(model.config, "type_vocab_size", 0) > 0:
        args.append(batch["token_type_ids"])
    with torch.no_grad():
        got = traced(*args)
    assert got.shape == (3, model.config.num_labels)
    assert (got - _logits(model, tok, texts)).abs().max() < 0.05
    report = json.loads((out / "export_report.json").read_text())
    assert "model.int8.pt" in report["files"] and "model.int8.pt" in report["test_accuracy"]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--trim-source", "MISSING.txt"], "not found"),
        (["--trim-source", "EMPTY.txt"], "hold no texts"),
        ([], "choose what to export"),
    ],
)
def test_export_bad_input(tmp_path, pruned, capsys, extra, fragment):
    (tmp_path / "EMPTY.txt").write_text("\n")
    extra = [str(tmp_path / a) if a.endswith(".txt") else a for a in extra]
    out = tmp_path / "x"
    code = main(["export", str(pruned), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists()


def test_export_without_tokenizer_or_onnxruntime(tmp_path, pruned, capsys, monkeypatch):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(pruned, bare)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bare / f).unlink()
    assert main(["export", str(bare), "--trim-vocab"]) == 2
    assert "no tokenizer" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    assert main(["export", str(pruned), "--int8", "--out", str(tmp_path / "y")]) == 2
    assert "ONNX Runtime" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_smallest_variant_runs_without_tlprune(tmp_path, pruned):
    """examples/run_exported.py runs the trimmed int8 model with onnxruntime and tokenizers
    alone: none of tlprune, transformers or torch is imported."""
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "small"
    assert main(["export", str(pruned), "--trim-vocab", "--int8", "--out", str(out)]) == 0
    script = Path(__file__).parent.parent / "examples" / "run_exported.py"
    guard = (
        "import sys, runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
        "run_name='__main__'); bad = [m for m in ('tlprune', 'transformers', 'torch') "
        "if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", guard, str(script), str(out), "great movie", "awful phone"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("great movie")
