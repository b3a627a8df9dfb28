"""The sparsity constraint by projection (prune.constraint: shift): exact tracking of the
target on tiny runs, and the shift itself."""

import json

import pytest
import torch
from tests.test_prune_job import sentiment_csv, tiny_cfg

from tlprune.gates import GateConfig, GateSet, UnitSizes
from tlprune.gates.target_shift import shift_to_target
from tlprune.train.prune_job import run_prune

SIZES = UnitSizes(num_layers=2, num_heads=4, head_size=8, hidden=32, ffn=64)


@pytest.mark.parametrize("target", [0.05, 0.4, 0.8, 0.9])
def test_shift_reaches_the_target_and_keeps_the_differences(target):
    gates = GateSet(GateConfig(init_log_alpha=1.0, init_std=0.5), SIZES, seed=0)
    before = {k: v.detach().clone() for k, v in gates.log_alpha.items()}
    c = shift_to_target(gates, target)
    assert float(gates.expected_sparsity().detach()) == pytest.approx(target, abs=1e-4)
    cfg = gates.config
    for k, v in gates.log_alpha.items():
        inside = (before[k] + c > cfg.log_alpha_min) & (before[k] + c < cfg.log_alpha_max)
        assert torch.allclose((v - before[k])[inside], torch.full_like(v, c)[inside], atol=1e-6)


@pytest.mark.parametrize("accum", [1, 2])
def test_shift_run_tracks_its_target_at_every_step(tmp_path, tiny_bert_dir, accum):
    data = sentiment_csv(tmp_path / "d.csv")
    extra = ("prune.constraint=shift", f"prune.prune.grad_accum={accum}")
    run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "run", *extra))
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("phase") == "prune" and "expected_sparsity" in r]
    assert len(steps) == 6
    for r in steps:  # the ramp included: the gates are where the target is, every step
        assert abs(r["expected_sparsity"] - r["target"]) < 1e-3, r
        assert r["lambda1"] == 0 and r["lagrangian"] == 0
    assert steps[-1]["target"] == 0.5


def test_unknown_constraint_is_refused():
    from tlprune.config import RunConfig, build_config
    from tlprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"prune\.constraint"):
        build_config(RunConfig, overrides=["prune.constraint=pid"])
