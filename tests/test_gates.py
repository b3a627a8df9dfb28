"""Gates: hard-concrete sampling, expected/exact size, the Lagrangian, exact-budget masks."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from tlprune.errors import ConfigError
from tlprune.gates import (
    KINDS,
    GateConfig,
    GateSet,
    Lagrangian,
    TargetSchedule,
    UnitSizes,
    check_sparsity,
    exact_size,
    expected_size,
    expected_sparsity,
    final_masks,
    make_gate_optimizers,
    size_breakdown,
)

MINILM = UnitSizes(num_layers=6, num_heads=12, head_size=32, hidden=384, ffn=1536)
TINY = UnitSizes(num_layers=2, num_heads=4, head_size=8, hidden=32, ffn=64)
SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def random_masks(sizes: UnitSizes, kinds=KINDS, seed: int = 0, p: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(sizes.shape(k), generator=g) < p).float() for k in kinds}


# -- sizes ------------------------------------------------------------------------------------


def test_unit_sizes_minilm():
    assert MINILM.head_params() == 49_248
    assert MINILM.ffn_unit_params() == 769
    assert MINILM.full_size == 10_632_960
    assert MINILM.head_params(100) == 4 * 32 * 100 + 3 * 32
    assert MINILM.ffn_unit_params(100) == 201
    assert MINILM.shape("head") == (6, 12) and MINILM.shape("ffn_unit") == (6, 1536)
    assert MINILM.shape("hidden") == (384,) and MINILM.shape("mha") == (6,)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_unit_sizes_validated(bad):
    with pytest.raises(ValueError, match="num_heads"):
        UnitSizes(num_layers=2, num_heads=bad, head_size=8, hidden=32, ffn=64)


def test_expected_size_all_open_and_missing_kinds():
    assert float(expected_size({}, MINILM)) == MINILM.full_size
    ones = {k: torch.ones(MINILM.shape(k)) for k in KINDS}
    assert float(expected_size(ones, MINILM)) == MINILM.full_size
    assert float(expected_sparsity(ones, MINILM)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        expected_size({"head": torch.ones(3, 3)}, MINILM)
    with pytest.raises(ValueError, match="valid kinds"):
        expected_size({"layer": torch.ones(6)}, MINILM)


def test_expected_size_by_hand():
    # Heads at keep 0.5 under mha 0.5, all FFN units closed, half the hidden dims expected.
    probs = {
        "head": torch.full((2, 4), 0.5),
        "mha": torch.full((2,), 0.5),
        "ffn_unit": torch.zeros(2, 64),
        "hidden": torch.full((32,), 0.5),
    }
    per_head = 4 * 8 * 16 + 3 * 8
    assert float(expected_size(probs, TINY)) == pytest.approx(8 * 0.25 * per_head)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "kinds", [KINDS, ("head", "ffn_unit"), ("mha", "ffn", "hidden"), ("hidden",), ("head",)]
)
def test_expected_equals_exact_on_hard_gates(seed, kinds):
    for sizes in (MINILM, TINY):
        masks = random_masks(sizes, kinds, seed)
        exact = exact_size(masks, sizes)
        assert float(expected_size(masks, sizes)) == pytest.approx(exact, abs=1e-6)
        # by hand: effective heads and units at the kept hidden width
        ones = {k: torch.ones(sizes.shape(k)) for k in KINDS}
        m = {**ones, **masks}
        d = int(m["hidden"].sum())
        heads = int((m["head"] * m["mha"][:, None]).sum())
        units = int((m["ffn_unit"] * m["ffn"][:, None]).sum())
        assert exact == heads * sizes.head_params(d) + units * sizes.ffn_unit_params(d)
        report = size_breakdown(masks, sizes)
        assert report["size"] == exact and report["heads"] == heads
        assert sum(layer["ffn_size"] + layer["mha_size"] for layer in report["layers"]) == exact


def test_exact_size_rejects_soft_masks():
    with pytest.raises(ValueError, match="binary"):
        exact_size({"mha": torch.full((2,), 0.5)}, TINY)


# -- hard-concrete gates ----------------------------------------------------------------------


def test_gate_config_defaults_and_validation():
    cfg = GateConfig()
    assert cfg.kinds == list(KINDS)
    assert cfg.shift == pytest.approx(1.5986, abs=1e-4)
    assert float(cfg.keep_prob(torch.tensor(0.0))) == pytest.approx(0.832, abs=1e-3)
    assert GateConfig(kinds=["hidden", "head"]).kinds == ["head", "hidden"]
    with pytest.raises(ValueError, match="valid kinds"):
        GateConfig(kinds=["head", "layer"])
    with pytest.raises(ConfigError, match="twice"):
        GateConfig(kinds=["head", "head"])
    with pytest.raises(ValueError, match="temperature"):
        GateConfig(temperature=0.0)
    with pytest.raises(ValueError, match="limits"):
        GateConfig(limit_l=0.1)
    with pytest.raises(ValueError, match="clamp"):
        GateConfig(init_log_alpha=10.0)


def test_gate_set_shapes_and_init():
    gates = GateSet(GateConfig(kinds=["head", "ffn_unit", "hidden"]), TINY)
    assert set(gates.log_alpha) == {"head", "ffn_unit", "hidden"}
    assert gates.log_alpha["head"].shape == (2, 4)
    assert gates.log_alpha["ffn_unit"].shape == (2, 64)
    probs = gates.keep_probs()
    assert all(torch.allclose(v, torch.full_like(v, 0.832), atol=0.01) for v in probs.values())
    z = gates.sample()
    assert set(z) == {"head", "ffn_unit", "hidden"} and z["hidden"].shape == (32,)


def test_keep_prob_matches_monte_carlo():
    sizes = UnitSizes(num_layers=5, num_heads=1, head_size=1, hidden=1, ffn=20_000)
    gates = GateSet(GateConfig(kinds=["ffn_unit"], init_std=0.0), sizes, seed=3)
    log_alphas = torch.tensor([-4.0, -2.0, 0.0, 1.0, 3.0])
    with torch.no_grad():
        gates.log_alpha["ffn_unit"].copy_(log_alphas[:, None].expand(5, 20_000))
    z = gates.sample()["ffn_unit"].detach()
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0  # the stretch gives exact 0s and 1s
    freq = (z > 0).double().mean(1)
    expected = torch.sigmoid(log_alphas - (2 / 3) * math.log(0.1 / 1.1)).double()
    assert torch.allclose(freq, expected, atol=0.012), (freq, expected)
    assert torch.allclose(gates.keep_probs()["ffn_unit"][:, 0].double(), expected, atol=1e-6)


def test_clamp():
    cfg = GateConfig()
    gates = GateSet(cfg, TINY)
    with torch.no_grad():
        gates.log_alpha["head"].fill_(50.0)
        gates.log_alpha["hidden"].fill_(-50.0)
    gates.clamp_()
    assert torch.allclose(gates.log_alpha["head"], torch.full((2, 4), math.log(100.0)))
    assert torch.allclose(gates.log_alpha["hidden"], torch.full((32,), math.log(0.01)))
    assert torch.equal(gates.log_alpha["mha"], gates.log_alpha["mha"].clamp(-1, 1))  # untouched


def test_sampling_is_reproducible_and_checkpointable():
    a, b = GateSet(GateConfig(), TINY, seed=7), GateSet(GateConfig(), TINY, seed=7)
    c = GateSet(GateConfig(), TINY, seed=8)
    for kind in KINDS:
        assert torch.equal(a.log_alpha[kind], b.log_alpha[kind])
    za, zb, zc = a.sample(), b.sample(), c.sample()
    assert all(torch.equal(za[k], zb[k]) for k in KINDS)
    assert not torch.equal(za["ffn_unit"], zc["ffn_unit"])

    state = copy.deepcopy(a.state_dict())  # includes the generator state
    expected = a.sample()
    restored = GateSet(GateConfig(), TINY, seed=123)
    restored.load_state_dict(state)
    again = restored.sample()
    assert all(torch.equal(expected[k], again[k]) for k in KINDS)

    gen = torch.Generator().manual_seed(5)
    d = GateSet(GateConfig(), TINY, generator=gen)
    assert d.generator is gen
    d.reseed(11)
    first = d.sample()
    d.reseed(11)
    assert torch.equal(first["ffn_unit"], d.sample()["ffn_unit"])


def test_gradients_flow_from_expected_size_and_samples():
    gates = GateSet(GateConfig(), TINY)
    gates.expected_size().backward()
    for kind in KINDS:
        grad = gates.log_alpha[kind].grad
        assert grad is not None and bool((grad > 0).all()), kind  # more open, more size
    gates.zero_grad()
    z = gates.sample()
    sum(v.sum() for v in z.values()).backward()
    for kind in KINDS:
        grad = gates.log_alpha[kind].grad
        assert grad is not None and bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_forward_train_and_eval():
    gates = GateSet(GateConfig(kinds=["head", "mha"]), TINY)
    z = gates()
    assert set(z) == {"head", "mha"}
    gates.eval()
    with pytest.raises(RuntimeError, match="masks"):
        gates()
    masks = final_masks(gates.keep_probs(), TINY, 0.3).masks
    fixed = gates(masks)
    assert torch.equal(fixed["head"], masks["head"])
    with pytest.raises(ValueError, match="enabled kinds"):
        gates.deterministic({"head": masks["head"]})
    with pytest.raises(ValueError, match="binary"):
        gates.deterministic({"head": masks["head"] * 0.5, "mha": masks["mha"]})


# -- Lagrangian and schedule ------------------------------------------------------------------


def test_lagrangian_value_and_optimizers():
    lag = Lagrangian()
    assert float(lag(torch.tensor(0.3), 0.5).detach()) == 0.0
    with torch.no_grad():
        lag.lambda1.fill_(2.0)
        lag.lambda2.fill_(3.0)
    assert float(lag(torch.tensor(0.3), 0.5).detach()) == pytest.approx(2 * -0.2 + 3 * 0.04)

    gates = GateSet(GateConfig(kinds=["hidden"]), TINY)
    gate_opt, lambda_opt = make_gate_optimizers(gates, lag, lr=0.1)
    assert gate_opt.defaults["weight_decay"] == 0.0 and not gate_opt.defaults["maximize"]
    assert lambda_opt.defaults["weight_decay"] == 0.0 and lambda_opt.defaults["maximize"]
    # one step: the lambdas rise when s_hat is below target and the term grows with the gap
    with torch.no_grad():
        lag.lambda1.zero_()
        lag.lambda2.zero_()
    loss = lag(gates.expected_sparsity(), 0.9)
    loss.backward()
    lambda_opt.step()
    assert lag.lambda1.item() < 0 and lag.lambda2.item() > 0  # maximising: (s_hat - t) < 0


def test_target_schedule():
    sched = TargetSchedule(final=0.8, warmup_steps=100, start_step=10)
    assert sched(0) == 0.0 and sched(10) == 0.0
    assert sched(60) == pytest.approx(0.4)
    assert sched(110) == pytest.approx(0.8)
    assert sched(10_000) == pytest.approx(0.8)
    assert TargetSchedule(0.5, 0)(0) == 0.5
    assert TargetSchedule(0.5, 0, start_step=3)(2) == 0.0
    with pytest.raises(ValueError, match="sparsity"):
        TargetSchedule(1.0, 10)
    with pytest.raises(ValueError, match="warmup"):
        TargetSchedule(0.5, -1)


def test_lagrangian_alone_drives_expected_sparsity_to_target():
    torch.manual_seed(0)
    gates = GateSet(GateConfig(), TINY, seed=1)
    lag = Lagrangian()
    gate_opt, lambda_opt = make_gate_optimizers(gates, lag, lr=0.05)
    sched = TargetSchedule(0.5, warmup_steps=50)
    for step in range(300):
        loss = lag(gates.expected_sparsity(), sched(step))
        gate_opt.zero_grad()
        lambda_opt.zero_grad()
        loss.backward()
        gate_opt.step()
        lambda_opt.step()
        gates.clamp_()
    s_hat = gates.expected_sparsity().item()
    assert abs(s_hat - 0.5) < 0.01, s_hat
    assert check_sparsity(s_hat, 0.5)


def test_check_sparsity_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="tlprune.gates.lagrangian"):
        assert not check_sparsity(0.7, 0.8)
    assert "misses the target" in caplog.text


# -- final masks ------------------------------------------------------------------------------


def _check_final(result, sizes, target, probs):
    masks = result.masks
    assert set(masks) == set(probs)
    for kind, mask in masks.items():
        assert mask.shape == sizes.shape(kind) and mask.dtype == torch.float32
        assert bool(((mask == 0) | (mask == 1)).all())
    budget = math.floor((1 - target) * sizes.full_size)
    assert result.budget == budget
    assert result.size == exact_size(masks, sizes)
    d_kept = int(masks["hidden"].sum()) if "hidden" in masks else sizes.hidden
    step = sizes.ffn_unit_params(d_kept) if "ffn_unit" in masks else sizes.head_params(d_kept)
    assert result.size <= budget < result.size + step, (target, result.size, budget, step)
    assert result.sparsity == pytest.approx(1 - result.size / sizes.full_size)
    # a unit inside a closed sublayer is gone
    if "mha" in masks and "head" in masks:
        assert float((masks["head"] * (1 - masks["mha"][:, None])).sum()) == 0
    if "ffn" in masks and "ffn_unit" in masks:
        assert float((masks["ffn_unit"] * (1 - masks["ffn"][:, None])).sum()) == 0


@pytest.mark.parametrize("sizes", [MINILM, TINY], ids=["minilm", "tiny"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_final_masks_hit_budget(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    uniform = {k: torch.rand(sizes.shape(k), generator=g) for k in KINDS}
    # trained gates are polarised: most keep probabilities sit near 0 or 1
    polar = {k: torch.sigmoid(4 * torch.randn(sizes.shape(k), generator=g)) for k in KINDS}
    for probs in (uniform, polar):
        for target in SPARSITIES:
            result = final_masks(probs, sizes, target)
            _check_final(result, sizes, target, probs)
    again = final_masks(polar, sizes, 0.6)  # deterministic
    assert all(torch.equal(final_masks(polar, sizes, 0.6).masks[k], again.masks[k]) for k in KINDS)


@pytest.mark.parametrize(
    "kinds",
    [
        ("head", "ffn_unit"),
        ("head", "mha", "ffn_unit", "ffn"),
        ("ffn_unit", "hidden"),  # heads fixed: over budget, the hidden width shrinks
        ("head", "hidden"),  # no FFN units: heads are the finest unit
    ],
)
def test_final_masks_with_kind_subsets(kinds):
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        probs = {k: torch.rand(TINY.shape(k), generator=g) for k in kinds}
        for target in SPARSITIES:
            _check_final(final_masks(probs, TINY, target), TINY, target, probs)


def test_final_masks_say_when_the_budget_is_out_of_reach(caplog):
    # Heads alone are half of TINY's size: FFN units cannot bring it to 90% sparsity.
    probs = {"ffn_unit": torch.rand(2, 64, generator=torch.Generator().manual_seed(0))}
    with caplog.at_level(logging.WARNING, logger="tlprune.gates.masks"):
        result = final_masks(probs, TINY, 0.9)
    assert result.size == 8 * TINY.head_params() > result.budget
    assert float(result.masks["ffn_unit"].sum()) == 0
    assert any("cannot meet the budget" in note for note in result.notes)
    assert "cannot meet the budget" in caplog.text


def test_final_masks_keep_hard_probs_that_meet_the_budget():
    for sizes in (MINILM, TINY):
        masks = random_masks(sizes, seed=4, p=0.7)
        # feasible as given: close units under closed sublayers
        masks["head"] *= masks["mha"][:, None]
        masks["ffn_unit"] *= masks["ffn"][:, None]
        size = exact_size(masks, sizes)
        target = 1 - (size + 0.5) / sizes.full_size  # budget == size
        result = final_masks(masks, sizes, target)
        assert result.size == size and not result.notes
        assert all(torch.equal(result.masks[k], masks[k]) for k in KINDS)


def test_final_masks_rank_and_ties():
    heads = 8 * TINY.head_params()  # heads are not gated here: always open
    unit = TINY.ffn_unit_params()
    # Equal keep probabilities: rounding keeps 32 units a row, the lowest indices; removal then
    # takes the last-ranked ones (the highest flat indices) first.
    probs = {"ffn_unit": torch.full((2, 64), 0.5)}
    result = final_masks(probs, TINY, 1 - (heads + 40 * unit + 10) / TINY.full_size)
    expected = torch.zeros(2, 64)
    expected[0, :32] = 1
    expected[1, :8] = 1
    assert torch.equal(result.masks["ffn_unit"], expected)
    # FFN units are ranked by their keep prob times their parent's: rounding keeps 58 a row;
    # removing takes from the less sure layer, adding fills the surer one first.
    probs = {"ffn_unit": torch.full((2, 64), 0.9), "ffn": torch.tensor([0.6, 0.95])}
    result = final_masks(probs, TINY, 1 - (heads + 100 * unit) / TINY.full_size)
    assert result.masks["ffn_unit"].sum(1).tolist() == [42, 58]
    result = final_masks(probs, TINY, 1 - (heads + 124 * unit) / TINY.full_size)
    assert result.masks["ffn_unit"].sum(1).tolist() == [60, 64]


def test_final_masks_validates():
    with pytest.raises(ValueError, match="sparsity"):
        final_masks({}, TINY, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        final_masks({"mha": torch.tensor([1.5, 0.2])}, TINY, 0.5)


def test_target_schedule_from_initial_sparsity():
    sched = TargetSchedule(0.8, warmup_steps=100, initial=0.4)
    assert sched(0) == pytest.approx(0.4)
    assert sched(50) == pytest.approx(0.6)
    assert sched(100) == pytest.approx(0.8) and sched(500) == pytest.approx(0.8)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("multiple", [8, 32])
def test_final_masks_round_hidden_to_a_multiple(seed, multiple):
    g = torch.Generator().manual_seed(seed)
    polar = {k: torch.sigmoid(4 * torch.randn(MINILM.shape(k), generator=g)) for k in KINDS}
    polar["hidden"] = torch.linspace(0.99, 0.01, 384)[torch.randperm(384, generator=g)]
    for target in SPARSITIES:
        plain = final_masks(polar, MINILM, target)
        result = final_masks(polar, MINILM, target, hidden_multiple=multiple)
        _check_final(result, MINILM, target, polar)  # still on budget within one FFN unit
        width = int(result.masks["hidden"].sum())
        assert width % multiple == 0 or width == MINILM.hidden, (target, width)
        assert abs(width - int(plain.masks["hidden"].sum())) <= multiple
        # the dims kept are the most probable ones
        kept = result.masks["hidden"].bool()
        assert polar["hidden"][kept].min() >= polar["hidden"][~kept].max()
    with pytest.raises(ValueError, match="hidden_multiple"):
        final_masks(polar, MINILM, 0.5, hidden_multiple=0)
