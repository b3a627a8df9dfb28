"""The console script: bad input gets one clear line, exit 2, and no output directory."""

import json
import random
import subprocess
import sys

import pytest

from tlprune.cli import main

WORDS = "good great bad awful fine movie film phone product love hate".split()


def sentiment_csv(path, n=80, labels=("neg", "pos")):
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(n):
        lab = labels[i % len(labels)]
        word = "great" if lab == "pos" else "awful"
        lines.append(" ".join([word, *rng.sample(WORDS, 3)]) + f",{lab}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def data_csv(tmp_path):
    return sentiment_csv(tmp_path / "data.csv")


def test_finetune_smoke_writes_a_complete_run(tmp_path, tiny_bert_dir, data_csv, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        [
            "finetune",
            "--model",
            str(tiny_bert_dir),
            "--target",
            str(data_csv),
            "--budget",
            "40",
            "--out",
            str(out),
            "--smoke",
            "train.batch_size=8",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["budget"] == {"size": 40, "train": 32, "dev": 8}
    assert metrics["steps"] == 2 and metrics["smoke"] is True
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert (out / "config.yaml").is_file() and (out / "model.safetensors").is_file()
    assert "test" in stdout
    # an existing run is not clobbered without --overwrite
    code, _, err = run_cli(
        [
            "finetune",
            "--model",
            str(tiny_bert_dir),
            "--target",
            str(data_csv),
            "--out",
            str(out),
            "--smoke",
        ],
        capsys,
    )
    assert code == 2 and "--overwrite" in err


def test_finetune_learns_on_tiny_data(tiny_bert_dir, tmp_path):
    from tlprune.api import finetune
    from tlprune.config import RunConfig, build_config

    cfg = build_config(
        RunConfig,
        overrides=[
            f"model.name={tiny_bert_dir}",
            f"data.target={sentiment_csv(tmp_path / 'd.csv', 200)}",
            "data.budget=120",
            "train.lr=3e-3",
            "train.epochs=8",
            "train.batch_size=16",
        ],
    )
    result = finetune(config=cfg)
    # the label is given away by one word: a working loop must learn it
    assert result.metrics["test"]["accuracy"] >= 0.9
    assert result.out_dir is None


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--target", "missing.csv"], "not found"),
        (["--target", "vader-amazn"], "unknown dataset 'vader-amazn'"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--budget", "3"], "too small for 2 classes"),
        (["--budget", "5000"], "larger than the"),
        (["data.text_column=sentence"], "text column 'sentence' not found"),
        (["train.lr=fast"], "train.lr"),
        (["nonsense.key=1"], "nonsense"),
        (["--config", "nope.yaml"], "nope.yaml not found"),
        (["--aux", "vader-movies"], "finetune takes no --aux"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path, tiny_bert_dir, data_csv, capsys, extra, fragment
):
    out = tmp_path / "run"
    args = [
        "finetune",
        "--model",
        str(tiny_bert_dir),
        "--target",
        str(data_csv),
        "--out",
        str(out),
        "--smoke",
        *extra,
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert fragment in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert not out.exists()


def test_test_label_unseen_in_train_via_cli(tmp_path, tiny_bert_dir, data_csv, capsys):
    test = sentiment_csv(tmp_path / "test.csv", 10, labels=("neg", "pos", "mixed"))
    code, _, err = run_cli(
        [
            "finetune",
            "--model",
            str(tiny_bert_dir),
            "--target",
            str(data_csv),
            f"data.test_file={test}",
            "--smoke",
        ],
        capsys,
    )
    assert code == 2 and "['mixed'] never occur" in err


def test_empty_dataset_via_cli(tmp_path, tiny_bert_dir, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    code, _, err = run_cli(
        ["finetune", "--model", str(tiny_bert_dir), "--target", str(empty)], capsys
    )
    assert code == 2 and "has no rows" in err


def test_failed_run_leaves_no_output(tmp_path, tiny_bert_dir, data_csv, capsys, monkeypatch):
    import tlprune.train.finetune as ft

    def boom(*a, **k):
        raise RuntimeError("crash mid-training")

    monkeypatch.setattr(ft, "train_classifier", boom)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        main(
            [
                "finetune",
                "--model",
                str(tiny_bert_dir),
                "--target",
                str(data_csv),
                "--out",
                str(out),
                "--budget",
                "40",
                "--smoke",
            ]
        )
    assert not out.exists() and list(tmp_path.glob(".run.*")) == []


def test_report_of_a_folder_without_a_study_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "holds no study.db" in err and len(err.strip().splitlines()) == 1


def test_data_list_and_bad_prepare_name(capsys):
    code, out, _ = run_cli(["data", "list"], capsys)
    assert code == 0 and "vader-amazon" in out and "not prepared" in out
    code, _, err = run_cli(["data", "prepare", "vader-amazn"], capsys)
    assert code == 2 and "unknown dataset" in err


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tlprune.cli", "finetune", "--target", "vader-amazn"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown dataset" in proc.stderr


def test_usage_error_exits_2(capsys):
    code, _, err = run_cli(["finetune", "--budget", "many"], capsys)
    assert code == 2 and "--budget" in err
