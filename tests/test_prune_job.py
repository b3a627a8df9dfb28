"""The prune job end to end on tiny models: outputs, budget, resume, distillation, bad input."""

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from tlprune.cli import main
from tlprune.config import RunConfig, build_config
from tlprune.errors import TlpruneError
from tlprune.gates import UnitSizes, exact_size
from tlprune.train.prune_job import run_prune

WORDS = "good great bad awful fine movie film phone product love hate".split()


def kill_at(n):
    """An on_step hook that interrupts the run at step `n`, as a crash or Ctrl-C would."""

    def kill(step):
        if step == n:
            raise KeyboardInterrupt

    return kill


def sentiment_csv(path, n=120):
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(n):
        lab = ("neg", "pos")[i % 2]
        lines.append(
            " ".join(["great" if lab == "pos" else "awful", *rng.sample(WORDS, 3)]) + f",{lab}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_cfg(model_dir, data, out, *extra):
    return build_config(
        RunConfig,
        overrides=[
            f"model.name={model_dir}",
            f"data.target={data}",
            "data.budget=60",
            f"out={out}",
            "prune.sparsity=0.5",
            "prune.warm.max_steps=2",
            "prune.prune.max_steps=6",
            "prune.prune.eval_every=2",
            "prune.prune.batch_size=8",
            "prune.target_warmup=0.34",
            "prune.checkpoint_every=2",
            "prune.final.max_steps=2",
            "prune.gate_lr=0.1",
            *extra,
        ],
    )


@pytest.fixture
def data(tmp_path):
    return sentiment_csv(tmp_path / "d.csv")


def test_prune_writes_complete_small_model(tmp_path, tiny_bert_dir, data):
    out = tmp_path / "run"
    result = run_prune(tiny_cfg(tiny_bert_dir, data, out))
    report = json.loads((out / "prune_report.json").read_text())
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_tlprune.py",
        "masks.safetensors",
        "config.yaml",
        "README.md",
        "log.jsonl",
        "tokenizer_config.json",
    ):
        assert (out / name).is_file(), name
    assert not out.with_name("run.partial").exists()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))  # tensorboard: test extra
    # the masks meet the budget within one FFN unit and the small model has exactly that size
    sizes = UnitSizes(num_layers=2, num_heads=4, head_size=8, hidden=32, ffn=64)
    masks = load_file(out / "masks.safetensors")
    kept = exact_size(masks, sizes)
    budget = report["sparsity"]["budget_params"]
    kept_hidden = int(masks["hidden"].sum())
    assert kept <= budget < kept + 2 * kept_hidden + 1
    assert report["params"]["pruned"]["prunable"] == kept
    assert report["sparsity"]["achieved"] >= 0.5
    assert report["params"]["pruned"]["total"] < report["params"]["dense"]["total"]
    assert set(report["seconds"]) >= {"warm", "prune", "final", "total"}
    assert result.model.config.model_type == "tlprune"
    # the saved model loads through the public API and gives the in-memory model's outputs
    import tlprune

    loaded, tokenizer = tlprune.load(out)
    batch = tokenizer(["great movie", "awful phone"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = result.model.eval()(**batch).logits
        assert torch.allclose(loaded(**batch).logits, ref, atol=1e-5)
    # and evaluates through `tlprune eval`
    assert main(["eval", str(out), "--target", str(data)]) == 0


def test_killed_run_resumes_to_the_same_masks(tmp_path, tiny_bert_dir, data):
    # 48 train examples in batches of 16: 3 batches an epoch, so the kill at step 5 resumes
    # from the step-4 checkpoint in the middle of the second epoch.
    extra = ("prune.prune.batch_size=16",)
    full = run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "full", *extra))

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), on_step=kill_at(5))
    assert not out.exists() and out.with_name("killed.partial").is_dir()
    with pytest.raises(TlpruneError, match="--resume"):
        run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra))
    resumed = run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), resume=True)
    a = load_file(tmp_path / "full" / "masks.safetensors")
    b = load_file(out / "masks.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)

    # the prune phase's per-step log after the resume matches the uninterrupted run
    def prune_rows(path):
        rows = [json.loads(x) for x in (path / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["task"] for r in rows if r.get("phase") == "prune" and "task" in r}

    assert prune_rows(tmp_path / "full") == prune_rows(out)


def test_resume_rejects_a_changed_config_and_corrupt_checkpoint(tmp_path, tiny_bert_dir, data):
    out = tmp_path / "run"

    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_cfg(tiny_bert_dir, data, out), on_step=kill_at(2))
    with pytest.raises(TlpruneError, match="different config"):
        run_prune(tiny_cfg(tiny_bert_dir, data, out, "prune.sparsity=0.7"), resume=True)
    ckpt = next((out.with_name("run.partial") / "checkpoints").glob("step-*"))
    for f in ckpt.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    with pytest.raises(TlpruneError, match="corrupt"):
        run_prune(tiny_cfg(tiny_bert_dir, data, out), resume=True)


def test_nan_loss_stops_clearly_and_keeps_checkpoint(tmp_path, tiny_bert_dir, data, monkeypatch):
    from tlprune.train import prune_phase

    original = prune_phase.GatedModel.forward
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        loss, parts = original(self, *a, **k)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 2 else loss), parts

    monkeypatch.setattr(prune_phase.GatedModel, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TlpruneError, match="loss became nan"):
        run_prune(tiny_cfg(tiny_bert_dir, data, out))
    assert list((out.with_name("run.partial") / "checkpoints").glob("step-000002"))


def test_distill_smoke(tmp_path, tiny_bert_dir, data):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert_dir, data, out, "distill.enabled=true", "train.max_steps=2")
    report = run_prune(cfg).report
    assert report["distill"] is True and "teacher" in report["seconds"]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any("kl" in row and "layer" in row for row in log if row.get("phase") == "prune")


def test_roberta_prune_smoke(tmp_path, tiny_roberta_dir, data):
    out = tmp_path / "run"
    assert run_prune(tiny_cfg(tiny_roberta_dir, data, out)).report["sparsity"]["achieved"] >= 0.5


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--sparsity", "1.5"], "prune.sparsity must be in (0, 1)"),
        (["--sparsity", "0"], "prune.sparsity must be in (0, 1)"),
        (["--preset", "cofy"], "unknown preset 'cofy'"),
        (["prune.kinds=[heads]"], "prune.kinds"),
        (["--aux", "vader-movies"], "coupling is none"),
        (["--resume"], "nothing to resume"),
        (["prune.final.mixed_precision=bf16"], "mixed_precision differs"),
        (["--preset", "finetune", "--resume"], "--resume applies to pruning runs"),
        (["prune.log_alpha_clamp=[1, 2]"], "prune.log_alpha_clamp"),
    ],
)
def test_prune_bad_input(tmp_path, tiny_bert_dir, data, capsys, extra, fragment):
    out = tmp_path / "run"
    code = main(
        [
            "prune",
            "--model",
            str(tiny_bert_dir),
            "--target",
            str(data),
            "--out",
            str(out),
            "--budget",
            "60",
            "--smoke",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not out.exists()


def test_unsupported_architecture(tmp_path, data, capsys):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    d = tmp_path / "gpt2"
    GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2)).save_pretrained(d)
    code = main(
        [
            "prune",
            "--model",
            str(d),
            "--target",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--smoke",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unsupported architecture 'gpt2'" in err
    assert not (tmp_path / "run.partial").exists()


def test_export_onnx_cli(tmp_path, tiny_bert_dir, data, capsys):
    out = tmp_path / "run"
    run_prune(tiny_cfg(tiny_bert_dir, data, out))
    assert main(["export", str(out), "--onnx"]) == 0
    assert (out / "model.onnx").is_file()
    assert main(["export", str(tmp_path / "nowhere"), "--onnx"]) == 2


@pytest.mark.parametrize("constraint", ["lagrangian", "shift", "price"])
def test_two_process_cpu_prune(tmp_path, tiny_bert_dir, data, constraint):
    """Data-parallel on 2 CPU processes (gloo). `accelerate launch --cpu` starts one process
    unless mpirun is set up, so this uses torchrun, which `accelerate launch` wraps on GPUs."""
    import os
    import shutil
    import subprocess

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "tlprune",
        "prune",
        "--model",
        str(tiny_bert_dir),
        "--target",
        str(data),
        "--budget",
        "60",
        "--out",
        str(out),
        "--smoke",
        f"prune.constraint={constraint}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "prune_report.json").read_text())
    assert report["processes"] == 2
    assert report["sparsity"]["achieved"] >= report["sparsity"]["target"]


def test_out_is_a_file_and_teacher_with_other_labels(tmp_path, tiny_bert_dir, data, capsys):
    file_out = tmp_path / "taken"
    file_out.write_text("x")
    base = [
        "prune",
        "--model",
        str(tiny_bert_dir),
        "--target",
        str(data),
        "--budget",
        "60",
        "--smoke",
    ]
    assert main([*base, "--out", str(file_out), "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err and file_out.read_text() == "x"
    # the fixture model's labels are LABEL_0/LABEL_1, the task's neg/pos
    code = main(
        [
            *base,
            "--out",
            str(tmp_path / "run"),
            "distill.enabled=true",
            f"distill.teacher={tiny_bert_dir}",
        ]
    )
    assert code == 2 and "give a teacher fine-tuned on this task" in capsys.readouterr().err


def test_api_rejects_config_and_preset_together(tiny_bert_dir):
    from tlprune.api import prune
    from tlprune.errors import ConfigError
    from tlprune.presets import preset_config

    cfg = preset_config("cofi-distill")
    assert cfg.preset == "cofi-distill" and cfg.distill.enabled
    with pytest.raises(ConfigError, match="either `config` or `preset`"):
        prune(config=cfg, preset="cofi")


def test_resume_accepts_a_key_added_later_at_its_default(tmp_path, tiny_bert_dir, data):
    """A run started by an older tlprune (no `prune.round_hidden` in its saved config) resumes;
    a changed value does not."""
    import yaml

    from tlprune.train.prune_job import check_workdir, start_workdir

    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert_dir, data, out)
    work = out.with_name("run.partial")
    start_workdir(cfg, work)
    saved = yaml.safe_load((work / "config.yaml").read_text())
    del saved["prune"]["round_hidden"]
    (work / "config.yaml").write_text(yaml.safe_dump(saved))
    assert check_workdir(cfg, out, resume=True) == work
    changed = tiny_cfg(tiny_bert_dir, data, out, "prune.round_hidden=8")
    with pytest.raises(TlpruneError, match="different config"):
        check_workdir(changed, out, resume=True)


@pytest.mark.parametrize("offline", [True, False])
def test_unreachable_hub_is_one_line(tmp_path, data, capsys, monkeypatch, offline):
    """A hub id that is neither cached nor reachable fails at once, in one line that names the
    fix, before any hub client retries; nothing is written."""
    from huggingface_hub import constants

    from tlprune.models import check_hub

    check_hub.cache_clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    out = tmp_path / "run"
    code = main(["prune", "--model", "someone/missing-model", "--target", str(data), "--budget",
                 "60", "--smoke", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "minilm" in err
    assert ("HF_HUB_OFFLINE" in err) == offline and ("cannot reach" in err) == (not offline)
    assert not out.exists() and not out.with_name("run.partial").exists()
    check_hub.cache_clear()
