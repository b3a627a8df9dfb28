"""A prune run killed with SIGKILL and resumed in a new process ends as the uninterrupted run.

Unlike the in-process resume tests (KeyboardInterrupt from an `on_step` hook), each run here is
its own `python -m tlprune prune` process, killed by the TLPRUNE_KILL_AT=PHASE:STEP hook, and
the tiny model has dropout, so every draw from torch's global RNG shows in the
losses. 48 train examples in batches of 16 are 3 batches an epoch: the kill at step 5 resumes
from the step-4 checkpoint in the middle of an epoch, the kill at step 7 (of the resumed
process) from the step-6 checkpoint at an epoch's end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import make_tiny_model_dir
from tests.test_prune_job import sentiment_csv


def _prune(model_dir, data, out, *flags, kill_at=None):
    cmd = [
        sys.executable,
        "-m",
        "tlprune",
        "prune",
        "--model",
        str(model_dir),
        "--target",
        str(data),
        "--budget",
        "60",
        "--sparsity",
        "0.5",
        "--seed",
        "3",
        "--out",
        str(out),
        *flags,
        "prune.warm.max_steps=2",
        "prune.prune.max_steps=8",
        "prune.prune.eval_every=2",
        "prune.prune.batch_size=16",
        "prune.target_warmup=0.34",
        "prune.checkpoint_every=2",
        "prune.final.max_steps=2",
        "prune.gate_lr=0.1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TLPRUNE_KILL_AT", None)
    if kill_at is not None:
        env["TLPRUNE_KILL_AT"] = kill_at if ":" in str(kill_at) else f"prune:{kill_at}"
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def _rows(out):
    """The last row written for each (phase, step, kind): a resume rewrites the steps it redoes."""
    rows = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[(r["phase"], r["step"], "dev" in r)] = r
    return rows


@pytest.mark.slow  # four processes, about 25 s
def test_sigkilled_run_resumes_in_a_new_process_to_the_same_run(tmp_path):
    model_dir = make_tiny_model_dir(
        tmp_path / "model", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    data = sentiment_csv(tmp_path / "d.csv")
    full, out = tmp_path / "full", tmp_path / "killed"

    proc = _prune(model_dir, data, full)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _prune(model_dir, data, out, kill_at=5)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    proc = _prune(model_dir, data, out, "--resume", kill_at=7)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    proc = _prune(model_dir, data, out, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]

    for name in ("masks.safetensors", "model.safetensors"):
        a, b = load_file(full / name), load_file(out / name)
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = _rows(full), _rows(out)
    prune = sorted(k[1] for k in a if k[0] == "prune" and not k[2])
    assert prune == list(range(1, 9))
    assert {k: a[k]["task"] for k in a if k[0] == "prune" and not k[2]} == {
        k: b[k]["task"] for k in b if k[0] == "prune" and not k[2]
    }
    assert a == b  # every logged value, the final fine-tune's included


def _same_run(full, out):
    for name in ("masks.safetensors", "model.safetensors"):
        a, b = load_file(full / name), load_file(out / name)
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _rows(full) == _rows(out)


@pytest.mark.slow  # three processes a case, about 15 s each
@pytest.mark.parametrize(
    ("kill", "flags"),
    [
        # the dense auxiliary stage of sequential (4 steps, checkpoints every 2)
        ("aux:3", ["--preset", "sequential", "transfer.aux_stage.max_steps=4"]),
        # the warm phase of a two-branch run (the auxiliary trains beside the target there)
        ("warm:1", ["--preset", "joint", "transfer.warm_alpha.value=1"]),
        # the final fine-tune of the small model
        ("final:1", []),
        # a warm phase with gradient accumulation after an auxiliary stage of odd length
        (
            "warm:2",
            [
                "--preset",
                "stilts",
                "transfer.aux_stage.max_steps=3",
                "prune.warm.grad_accum=2",
                "prune.warm.max_steps=3",
            ],
        ),
        # gates started from Fisher ranks, the multipliers on the ramp, the projection after
        (
            "prune:4",
            ["prune.gate_init=fisher", "prune.constraint=hold", "prune.kinds=[head,ffn_unit]"],
        ),
        # the projection with the multiplier learned from its drift (a buffer of the model)
        ("prune:3", ["prune.constraint=price"]),
    ],
    ids=["aux-stage", "two-branch-warm", "final", "accumulated-warm", "fisher-hold", "price"],
)
def test_sigkill_in_other_phases_resumes_to_the_same_run(tmp_path, kill, flags):
    from tests.test_transfer import aux_csv

    model_dir = make_tiny_model_dir(
        tmp_path / "model", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    data = sentiment_csv(tmp_path / "d.csv")
    if "--preset" in flags:
        flags = [*flags, "--aux", str(aux_csv(tmp_path / "aux.csv"))]
    full, out = tmp_path / "full", tmp_path / "killed"
    proc = _prune(model_dir, data, full, *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _prune(model_dir, data, out, *flags, kill_at=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    proc = _prune(model_dir, data, out, *flags, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same_run(full, out)
