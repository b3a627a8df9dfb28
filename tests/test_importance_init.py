"""Gates started from Fisher importance (prune.gate_init: fisher)."""

import pytest
import torch
from tests.test_constraint import prune_steps
from tests.test_prune_job import sentiment_csv, tiny_cfg

from tlprune.gates import GateConfig, GateSet, UnitSizes
from tlprune.gates.importance_init import log_alphas_from_fisher, set_log_alphas
from tlprune.train.prune_job import run_prune

SIZES = UnitSizes(num_layers=2, num_heads=4, head_size=8, hidden=32, ffn=64)


def test_log_alphas_follow_fisher_per_parameter_over_heads_and_units_together():
    gen = torch.Generator().manual_seed(0)
    diag = {"head": torch.rand(2, 4, generator=gen), "ffn_unit": torch.rand(2, 64, generator=gen)}
    la = log_alphas_from_fisher(diag, SIZES, high=3.0, span=4.0)
    assert la["head"].shape == (2, 4) and la["ffn_unit"].shape == (2, 64)
    density = torch.cat(
        [
            diag["head"].flatten() / SIZES.head_params(),
            diag["ffn_unit"].flatten() / SIZES.ffn_unit_params(),
        ]
    )
    values = torch.cat([la["head"].flatten(), la["ffn_unit"].flatten()])
    order = density.argsort()
    assert torch.all(values[order][1:] > values[order][:-1])  # strictly by importance
    assert values.max() == pytest.approx(3.0) and values.min() == pytest.approx(-1.0)


def test_set_log_alphas_clamps_and_leaves_other_kinds():
    gates = GateSet(GateConfig(init_log_alpha=3.0), SIZES, seed=0)
    hidden = gates.log_alpha["hidden"].detach().clone()
    set_log_alphas(gates, {"head": torch.full((2, 4), -99.0)})
    assert torch.all(gates.log_alpha["head"] == gates.config.log_alpha_min)
    assert torch.equal(gates.log_alpha["hidden"], hidden)


def test_fisher_started_shift_run_tracks_its_target(tmp_path, tiny_bert_dir):
    data = sentiment_csv(tmp_path / "d.csv")
    extra = ("prune.gate_init=fisher", "prune.constraint=shift")
    run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "run", *extra))
    steps = prune_steps(tmp_path / "run")
    assert steps[0]["target"] > 0.05  # the ranked start already closes the weakest units a bit
    for r in steps:
        assert abs(r["expected_sparsity"] - r["target"]) < 1e-3, r


def test_fisher_start_needs_heads_and_units():
    from tlprune.config import RunConfig, build_config
    from tlprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gate_init=fisher"):
        build_config(RunConfig, overrides=["prune.gate_init=fisher", "prune.kinds=[head,hidden]"])
