"""The sparsity constraint by projection (prune.constraint: shift, price, and hold after the
ramp): exact tracking of the target on tiny runs, the worst gap reported, the shift itself, and
the price's multiplier learned from the pre-projection drift."""

import json

import pytest
import torch
from tests.test_prune_job import sentiment_csv, tiny_cfg

from tlprune.gates import GateConfig, GateSet, Lagrangian, UnitSizes
from tlprune.gates.price import price_term
from tlprune.gates.target_shift import shift_to_target
from tlprune.train.prune_job import run_prune

SIZES = UnitSizes(num_layers=2, num_heads=4, head_size=8, hidden=32, ffn=64)


def prune_steps(run_dir) -> list[dict]:
    """The prune phase's per-step rows of a run's log."""
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == "prune" and "expected_sparsity" in r]


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
    steps = prune_steps(tmp_path / "run")
    assert len(steps) == 6
    for r in steps:  # the ramp included: the gates are where the target is, every step
        assert abs(r["expected_sparsity"] - r["target"]) < 1e-3, r
        assert r["lambda1"] == 0 and r["lagrangian"] == 0
    assert steps[-1]["target"] == 0.5


def test_price_term_gives_the_gates_the_price_and_the_multiplier_the_drift():
    gates = GateSet(GateConfig(init_log_alpha=1.0, init_std=0.5), SIZES, seed=0)
    lag = Lagrangian()
    with torch.no_grad():
        lag.lambda1.fill_(-2.0)
    s_hat = gates.expected_sparsity()
    price_term(lag, s_hat, 0.3, torch.tensor(-0.01)).backward()
    assert float(lag.lambda1.grad) == pytest.approx(-0.01)  # the drift, not the current gap
    assert float(lag.lambda2.grad) == 0.0
    want = torch.autograd.grad(
        -2.0 * gates.expected_sparsity(), list(gates.log_alpha.values()), allow_unused=True
    )
    for (k, v), w in zip(gates.log_alpha.items(), want, strict=True):
        assert torch.allclose(v.grad, w), k  # lambda1 * d s_hat: the price, held fixed


def test_the_drift_is_the_gate_step_alone_and_the_projection_still_lands():
    from tlprune.gates import TargetSchedule
    from tlprune.train.gated import GatedModel, GatedObjective

    gates = GateSet(GateConfig(init_log_alpha=1.0, init_std=0.5), SIZES, seed=0)
    inner = GatedModel(torch.nn.Identity(), gates, Lagrangian(), price=True)
    schedule = TargetSchedule(0.6, warmup_steps=4, initial=0.2)
    objective = GatedObjective(None, inner, None, schedule, None, project_from=0)
    shift_to_target(gates, schedule(1))
    objective.level = float(gates.expected_sparsity().detach())  # what the forward saw
    with torch.no_grad():  # a gate step that closes every gate a little
        for v in gates.log_alpha.values():
            v.sub_(0.3)
    moved = float(gates.expected_sparsity().detach())
    objective.after_update(1, synced=True)
    assert float(inner.drift) == pytest.approx(moved - objective.level)  # not the ramp's rise
    assert float(inner.drift) > 1e-3
    assert float(gates.expected_sparsity().detach()) == pytest.approx(schedule(2), abs=1e-4)
    objective.after_update(2, synced=False)  # mid-accumulation: neither measured nor moved
    assert float(gates.expected_sparsity().detach()) == pytest.approx(schedule(2), abs=1e-4)


@pytest.mark.parametrize("accum", [1, 2])
def test_price_run_tracks_its_target_and_learns_the_price_from_the_drift(
    tmp_path, tiny_bert_dir, accum
):
    data = sentiment_csv(tmp_path / "d.csv")
    extra = ("prune.constraint=price", "prune.prune.max_steps=8", f"prune.prune.grad_accum={accum}")
    run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "run", *extra))
    steps = prune_steps(tmp_path / "run")
    assert len(steps) == 8
    for r in steps:  # the ramp included: the gates are where the target is, every step
        assert abs(r["expected_sparsity"] - r["target"]) < 1e-3, r
    assert steps[0]["lambda1"] == 0  # no gate step measured yet
    assert all(abs(r["drift"]) > 1e-4 for r in steps)  # each row: its own update's drift
    # the first drift moves lambda1 by Adam's second step (the first saw a zero gradient),
    # ascending on the drift: a step that opened the gates (drift < 0) lowers the price's
    # lambda1, which pushes them to close
    adam = (0.1 / (1 - 0.9**2)) / (0.001 / (1 - 0.999**2)) ** 0.5
    sign = 1 if steps[0]["drift"] > 0 else -1
    assert steps[1]["lambda1"] == pytest.approx(0.1 * adam * sign, rel=1e-3)
    assert any(r["lagrangian"] != 0 for r in steps[2:])  # the price reaches the gates
    report = json.loads((tmp_path / "run" / "prune_report.json").read_text())
    assert report["sparsity"]["worst_gap_after_ramp"] < 1e-3


def test_hold_run_uses_the_multipliers_on_the_ramp_and_the_target_after_it(tmp_path, tiny_bert_dir):
    data = sentiment_csv(tmp_path / "d.csv")
    extra = ("prune.constraint=hold", "prune.prune.max_steps=9", "prune.target_warmup=0.34")
    run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "run", *extra))
    steps = prune_steps(tmp_path / "run")
    ramp_end = round(0.34 * 9)  # the target reaches the sparsity at this optimizer step
    on_ramp, after = steps[:ramp_end], steps[ramp_end:]
    assert any(r["lagrangian"] != 0 for r in on_ramp)  # the multipliers drive the ramp
    assert abs(on_ramp[-1]["expected_sparsity"] - on_ramp[-1]["target"]) > 1e-3  # they lag
    for r in after:  # from the ramp's end the gates sit on the target, the multipliers off
        assert r["target"] == 0.5
        assert abs(r["expected_sparsity"] - 0.5) < 1e-3, r
        assert r["lagrangian"] == 0
    report = json.loads((tmp_path / "run" / "prune_report.json").read_text())
    worst = report["sparsity"]["worst_gap_after_ramp"]
    assert worst == pytest.approx(max(abs(r["expected_sparsity"] - 0.5) for r in after))
    assert worst < 1e-3


def test_lagrangian_run_reports_its_worst_gap_after_the_ramp(tmp_path, tiny_bert_dir):
    data = sentiment_csv(tmp_path / "d.csv")
    run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "run"))
    steps = prune_steps(tmp_path / "run")
    report = json.loads((tmp_path / "run" / "prune_report.json").read_text())
    after = [abs(r["expected_sparsity"] - r["target"]) for r in steps[round(0.34 * 6) :]]
    assert report["sparsity"]["worst_gap_after_ramp"] == pytest.approx(max(after))


def test_unknown_constraint_is_refused():
    from tlprune.config import RunConfig, build_config
    from tlprune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"prune\.constraint"):
        build_config(RunConfig, overrides=["prune.constraint=pid"])
