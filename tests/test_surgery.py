"""Physical pruning, saving (loaded where tlprune is not importable) and ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import tiny_config, tiny_tokenizer
from tlprune.arch import from_hf, unit_sizes
from tlprune.gates.size import exact_size
from tlprune.surgery import export_onnx, load, param_report, prune_model, save_pruned

ARCHS = ["bert", "roberta"]
TEXTS = ["good movie", "the film was not very good , i hate it", "great phone", "bad"]
LAYERS = 5


def _model(arch: str):
    """A 5-layer tiny model with every parameter randomised (LayerNorms included)."""
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_config(tiny_config(arch, num_hidden_layers=LAYERS))
    model = from_hf(hf).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_(torch.randn_like(param) * (0.2 if "norm" in name else 0.3))
    return model


def _masks(model) -> dict[str, torch.Tensor]:
    """Random hard masks with every special case, one per layer:
    0 random heads and units; 1 dropped (mha and ffn closed); 2 every head pruned, mha open;
    3 every FFN unit pruned, ffn open; 4 mha closed, ffn open. Hidden dims pruned too."""
    sizes = unit_sizes(model.config)
    g = torch.Generator().manual_seed(3)
    masks = {
        "head": (torch.rand(sizes.shape("head"), generator=g) < 0.6).float(),
        "mha": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]),
        "ffn_unit": (torch.rand(sizes.shape("ffn_unit"), generator=g) < 0.5).float(),
        "ffn": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]),
        "hidden": (torch.rand(sizes.shape("hidden"), generator=g) < 0.7).float(),
    }
    masks["head"][0, :2] = torch.tensor([1.0, 0.0])  # layer 0 keeps some heads, not all
    masks["head"][2] = 0.0
    masks["ffn_unit"][3] = 0.0
    return masks


def _batch(arch: str):
    return dict(tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module", params=ARCHS)
def pruned(request):
    model = _model(request.param)
    masks = _masks(model)
    return request.param, model, masks, prune_model(model, masks)


@torch.no_grad()
def test_pruned_model_reproduces_the_gated_model(pruned):
    arch, model, masks, small = pruned
    batch = _batch(arch)
    gated = model(**batch, gates=masks, output_hidden_states=True)
    out = small(**batch, output_hidden_states=True)
    assert (out.logits - gated.logits).abs().max() < 1e-4
    assert gated.logits.abs().max() > 1e-2  # not a trivially small comparison

    kept = torch.nonzero(masks["hidden"]).view(-1)
    assert small.config.source_layers == [0, 2, 3, 4]  # layer 1 was dropped
    assert len(out.hidden_states) == len(small.config.source_layers) + 1
    sources = [-1, *small.config.source_layers]
    for state, source in zip(out.hidden_states, sources, strict=True):
        reference = gated.hidden_states[source + 1]
        assert (state - reference[..., kept]).abs().max() < 1e-4
        dropped = torch.ones_like(masks["hidden"], dtype=torch.bool)
        dropped[kept] = False
        assert (reference[..., dropped] == 0).all()  # gated model zeroes pruned dims


def test_pruned_config_and_shapes(pruned):
    _, model, masks, small = pruned
    cfg = small.config
    heads = [int(masks["head"][i].sum()) for i in (0, 2, 3, 4)]
    units = [int(masks["ffn_unit"][i].sum()) for i in (0, 2, 3, 4)]
    assert cfg.hidden_size == int(masks["hidden"].sum())
    assert cfg.num_hidden_layers == 4
    assert cfg.mha_present == [True, True, True, False]
    assert cfg.ffn_present == [True, True, True, True]
    assert cfg.heads_per_layer[:3] == heads[:3] and cfg.heads_per_layer[1] == 0
    assert cfg.ffn_per_layer == units and cfg.ffn_per_layer[2] == 0
    layer = small.tlprune.encoder.layers[0]
    assert layer.attention.query.weight.shape == (heads[0] * cfg.head_size, cfg.hidden_size)
    assert layer.ffn.intermediate.weight.shape == (units[0], cfg.hidden_size)
    assert small.tlprune.encoder.layers[3].attention is None
    # The head keeps its own width; only its input is sliced.
    assert small.classifier.dense.weight.shape == (model.config.hidden_size, cfg.hidden_size)


def test_pruned_parameter_counts(pruned):
    _, model, masks, small = pruned
    d, dh = int(masks["hidden"].sum()), model.config.head_size
    full = model.config
    expected_layers = []
    for i in (0, 2, 3, 4):
        h = int(masks["head"][i].sum()) if masks["mha"][i] else None
        u = int(masks["ffn_unit"][i].sum())
        mha = 0 if h is None else h * (3 * (d * dh + dh) + dh * d) + d + 2 * d
        ffn = u * (d + 1) + u * d + d + 2 * d
        expected_layers.append((mha, ffn))
    embeddings = (full.vocab_size + full.max_position_embeddings + full.type_vocab_size) * d + 2 * d
    w, c = full.classifier_hidden_size, full.num_labels
    classifier = d * w + w + w * c + c
    total = embeddings + sum(m + f for m, f in expected_layers) + classifier

    report = param_report(small)
    assert [(r["mha_params"], r["ffn_params"]) for r in report["layers"]] == expected_layers
    assert report["embeddings"] == embeddings and report["classifier"] == classifier
    assert report["total"] == total == sum(p.numel() for p in small.parameters())
    # The prunable size agrees with the gates' exact size on the same masks.
    assert report["prunable"] == exact_size(masks, unit_sizes(model.config))


def test_prune_rejects_soft_masks():
    model = _model("bert")
    with pytest.raises(ValueError, match="not binary"):
        prune_model(model, {"mha": torch.full((LAYERS,), 0.5)})
    with pytest.raises(ValueError, match="unknown mask keys"):
        prune_model(model, {"heads": torch.ones(LAYERS, 4)})


_FRESH = textwrap.dedent(
    """
    import json, os, sys
    sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p, "tlprune"))]
    sys.modules["tlprune"] = None  # an installed (editable) tlprune must not be reachable
    try:
        import tlprune
    except ImportError:
        pass
    else:
        raise SystemExit("tlprune is importable")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    dirs, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    result = {}
    for name, path in dirs.items():
        model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)
        assert model.dtype == torch.float32, model.dtype
        assert "tlprune" not in sys.modules or sys.modules["tlprune"] is None
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits.tolist()
        pipe = pipeline("text-classification", model=path, trust_remote_code=True)
        scores = pipe(texts, top_k=None, function_to_apply="none")
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        piped = [[{s["label"]: s["score"] for s in row}[lab] for lab in labels] for row in scores]
        result[name] = {"logits": logits, "pipeline": piped}
    print(json.dumps(result))
    """
)


@torch.no_grad()
def test_saved_model_loads_without_tlprune(tmp_path):
    dirs, expected = {}, {}
    for arch in ARCHS:
        model = _model(arch)
        small = prune_model(model, _masks(model)).to(torch.bfloat16)  # saved as float32 anyway
        out = save_pruned(small, tiny_tokenizer(), tmp_path / arch, {"README.md": "# card\n"})
        assert small.dtype == torch.bfloat16  # the caller's model is left as it was
        assert (out / "modeling_tlprune.py").is_file() and (out / "README.md").is_file()
        assert (
            "AutoModelForSequenceClassification"
            in json.loads((out / "config.json").read_text())["auto_map"]
        )
        loaded, tokenizer = load(out)
        assert loaded.dtype == torch.float32 and tokenizer is not None
        batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
        expected[arch] = loaded(**batch).logits
        reference = small.float()(**batch).logits
        assert (expected[arch] - reference).abs().max() < 1e-2  # bf16 -> f32 rounding only
        dirs[arch] = str(out)

    work = tmp_path / "cwd"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _FRESH, json.dumps(dirs), json.dumps(TEXTS)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for arch in ARCHS:
        logits = torch.tensor(result[arch]["logits"])
        piped = torch.tensor(result[arch]["pipeline"])
        assert (logits - expected[arch]).abs().max() < 1e-4
        assert (piped - expected[arch]).abs().max() < 1e-4


def test_save_refuses_to_overwrite(tmp_path):
    model = _model("bert")
    save_pruned(model, None, tmp_path / "m")
    with pytest.raises(FileExistsError):
        save_pruned(model, None, tmp_path / "m")
    save_pruned(model, None, tmp_path / "m", overwrite=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_export_matches_pytorch(arch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model(arch)
    small = prune_model(model, _masks(model))
    directory = save_pruned(small, tiny_tokenizer(), tmp_path / "model")
    path = export_onnx(directory, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    assert names == {"input_ids", "attention_mask", "token_type_ids"}
    batch = dict(tiny_tokenizer()(TEXTS, padding=True, return_tensors="pt"))
    for size in (len(TEXTS), 1):  # dynamic batch and sequence axes
        inputs = {k: v[:size] for k, v in batch.items()}
        if size == 1:
            inputs = {k: v[:, : int(inputs["attention_mask"].sum())] for k, v in inputs.items()}
        (onnx_logits,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            torch_logits = small(**inputs).logits
        assert abs(onnx_logits - torch_logits.numpy()).max() < 1e-4
