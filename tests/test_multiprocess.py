"""Transfer on several processes: each process draws its slice of every auxiliary batch, the
gradients of what DDP does not wrap are averaged, and a 2-process CPU run of `joint` and of
`stilts` behaves like the one-process run with the same total batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from tests.test_prune_job import sentiment_csv
from tests.test_transfer import aux_csv

from tlprune.config.transfer import AuxConfig
from tlprune.transfer.aux import AuxData, AuxTask


def _task(shard: tuple[int, int], size: int) -> AuxTask:
    rows = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [0] * 20})
    data = AuxData("a", AuxConfig(source="a", batch_size=size), rows, ["x"], 8)
    task = AuxTask(
        data,
        torch.nn.Identity(),
        lambda ex: {"i": torch.tensor([int(e["text"][1:]) for e in ex])},
        seed=3,
    )
    task.shard = shard
    return task


def test_the_processes_slices_make_the_one_process_batch():
    one = _task((0, 1), 4)
    halves = [_task((r, 2), 2) for r in range(2)]
    for _ in range(12):  # across epoch ends too (20 rows, 4 a step)
        whole = one.next_batch(torch.device("cpu"))["i"].tolist()
        parts = [h.next_batch(torch.device("cpu"))["i"].tolist() for h in halves]
        assert parts[0] + parts[1] == whole
    assert one.position == halves[0].position == halves[1].position


def _average_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from tlprune.train.engine import average_grads

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.full((3,), float(rank + 1))  # 1 and 2: mean 1.5
    average_grads([p, q], 2)  # q has no gradient on either process: left alone
    torch.save({"p": p.grad, "q": q.grad}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_average_grads_over_two_processes(tmp_path):
    torch.multiprocessing.spawn(_average_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert torch.equal(got["p"], torch.full((3,), 1.5)) and got["q"] is None


def _run(tmp_path, model, data, aux, preset: str, processes: int, batch: int, seed: int):
    out = tmp_path / f"{preset}-{processes}-{seed}"
    args = ["prune", "--model", str(model), "--target", str(data), "--budget", "60",
            "--sparsity", "0.5", "--preset", preset, "--seed", str(seed), "--out", str(out),
            "prune.warm.max_steps=2", "prune.prune.max_steps=20", "prune.prune.eval_every=5",
            f"prune.prune.batch_size={batch}", "prune.checkpoint_every=10",
            "prune.final.max_steps=2", "prune.gate_lr=0.1", "prune.prune.lr=1e-3",
            "prune.warm.lr=1e-3", "transfer.aux_stage.lr=1e-3", "transfer.aux_stage.max_steps=6",
            f"transfer.aux=[{{source: {aux}, batch_size: {batch}}}]"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    if processes == 1:
        cmd = [sys.executable, "-m", "tlprune", *args]
    else:
        port = str(_free_port())
        cmd = ["torchrun", "--nproc_per_node", str(processes), "--master_port", port,
               "-m", "tlprune", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    curves = {
        "prune": [r["task"] for r in rows if r.get("phase") == "prune" and "task" in r],
        "aux": [
            v
            for r in rows
            if r.get("phase") == "aux"
            for k, v in r.items()
            if k.startswith("aux/") and "expected" not in k
        ],
    }
    return json.loads((out / "prune_report.json").read_text()), curves


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["joint", "stilts"])
def test_two_process_transfer_matches_one_process_with_the_same_total_batch(
    tmp_path, tiny_bert_dir, preset
):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    data, aux = sentiment_csv(tmp_path / "d.csv"), aux_csv(tmp_path / "aux.csv")
    one, c1 = _run(tmp_path, tiny_bert_dir, data, aux, preset, 1, 8, 0)
    two, c2 = _run(tmp_path, tiny_bert_dir, data, aux, preset, 2, 4, 0)
    _, c3 = _run(tmp_path, tiny_bert_dir, data, aux, preset, 1, 8, 1)  # the noise scale
    assert two["processes"] == 2
    for r in (one, two):
        assert r["sparsity"]["kept_params"] <= r["sparsity"]["budget_params"]
    for phase in ("prune", "aux") if preset == "stilts" else ("prune",):
        a, b, s = (np.array(c[phase]) for c in (c1, c2, c3))
        assert len(a) == len(b) > 0
        # the logged loss of 2 processes is the main process's half batch: compare curves
        # against how far another seed moves them
        assert np.abs(a - b).mean() <= 1.5 * np.abs(a - s).mean() + 1e-3, (phase, a, b, s)
        assert abs(a.mean() - b.mean()) <= 0.02


@pytest.mark.slow
def test_adapt_on_two_processes_is_one_clear_line(tmp_path, tiny_bert_dir):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    data, aux = sentiment_csv(tmp_path / "d.csv"), aux_csv(tmp_path / "aux.csv")
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m",
           "tlprune", "prune", "--model", str(tiny_bert_dir), "--target", str(data),
           "--budget", "60", "--preset", "joint", "--aux", str(aux), "--smoke",
           "--out", str(tmp_path / "run"), "transfer.adapt=cosine"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode != 0
    assert "transfer.adapt and a warm phase with the auxiliary" in proc.stderr
    assert "Traceback" not in proc.stderr.split("error:")[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.parametrize("rows", [20, 21, 23, 25])
def test_every_process_gets_rows_when_the_epoch_does_not_divide(rows):
    def task(shard, size):
        t = _task(shard, size)
        t.data.rows = t.data.rows.select(range(rows)) if rows <= 20 else _more(rows)
        t.order = type(t.order)(rows, 3)
        return t

    halves = [task((r, 2), 3) for r in range(2)]
    for _ in range(20):
        parts = [h.next_batch(torch.device("cpu"))["i"].tolist() for h in halves]
        assert all(parts), parts  # never an empty slice (it would fail or hang the others)
        assert not set(parts[0]) & set(parts[1])
    assert halves[0].position == halves[1].position


def _more(n: int):
    return datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": [0] * n})
