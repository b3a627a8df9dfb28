"""Gradual retraining-free pruning on tiny models: the dense-shaped model with pruned units
held at zero equals the small one, the later steps keep only what the earlier kept, and the
job runs, reports and refuses bad steps."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tests.test_fisher import _batches, _cli, _dense, _fisher_cfg
from tests.test_prune_job import sentiment_csv

from tlprune.arch import unit_sizes
from tlprune.config import ConfigError, FisherConfig
from tlprune.gates.fisher import collect_mask_grads, rearrange_layer, search_masks
from tlprune.gates.fixed_masks import hold_pruned, zero_pruned
from tlprune.gates.size import exact_size
from tlprune.surgery import prune_model
from tlprune.train.fisher_job import run_fisher


@pytest.fixture
def data(tmp_path):
    return sentiment_csv(tmp_path / "d.csv")


def _masks(model, sparsity, floor=0.5, allowed=None):
    sizes = unit_sizes(model.config)
    grads = collect_mask_grads(model, _batches(2))
    budget = math.floor((1 - sparsity) * sizes.full_size)
    return search_masks(grads.diagonal(), sizes, budget, floor, allowed), sizes, budget


def test_zeroed_dense_model_computes_the_surgered_model(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    masks, _, _ = _masks(model, 0.6)
    batch = {k: v for k, v in _batches(1, seed=3)[0].items() if k != "labels"}
    with torch.no_grad():
        dense_out = model(**batch).logits
        zero_pruned(model, masks)
        zeroed = model(**batch).logits
        small = prune_model(model, masks).eval()
        assert torch.allclose(small(**batch).logits, zeroed, atol=1e-5)
    assert not torch.allclose(zeroed, dense_out, atol=1e-3)  # the units did contribute


def test_an_emptied_sublayer_still_equals_surgery(tiny_bert_dir):
    """Surgery keeps an emptied sublayer's bias and LayerNorm, as the zeroed weights do."""
    model = _dense(tiny_bert_dir)
    masks, _, _ = _masks(model, 0.5, floor=0.0)
    masks["head"][0] = 0
    masks["ffn_unit"][1] = 0
    batch = {k: v for k, v in _batches(1, seed=3)[0].items() if k != "labels"}
    with torch.no_grad():
        zero_pruned(model, masks)
        small = prune_model(model, masks).eval()
        assert torch.allclose(small(**batch).logits, model(**batch).logits, atol=1e-5)


def test_held_units_stay_exactly_zero_under_adamw(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    masks, _, _ = _masks(model, 0.6)
    zero_pruned(model, masks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handles = hold_pruned(model, masks)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for batch in _batches(3, seed=4):
        labels = batch.pop("labels")
        loss = F.cross_entropy(model(**batch).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for h in handles:
        h.remove()
    dh = model.config.head_size
    for i, layer in enumerate(model.tlprune.encoder.layers):
        heads = masks["head"][i].repeat_interleave(dh).bool()
        units = masks["ffn_unit"][i].bool()
        assert torch.all(layer.attention.output.weight[:, ~heads] == 0)
        assert torch.all(layer.ffn.output.weight[:, ~units] == 0)
        name = f"tlprune.encoder.layers.{i}.ffn.output.weight"
        assert not torch.equal(before[name][:, units], layer.ffn.output.weight[:, units])


def test_restricted_search_keeps_only_allowed_units_within_the_budget(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    allowed, sizes, _ = _masks(model, 0.4)
    masks, _, budget = _masks(model, 0.7, allowed=allowed)
    for kind in ("head", "ffn_unit"):
        assert torch.all(masks[kind] <= allowed[kind])
    kept = exact_size(masks, sizes)
    assert kept <= budget < kept + sizes.ffn_unit_params()
    # everything allowed: the plain search
    everything = {k: torch.ones_like(v) for k, v in allowed.items()}
    open_, plain = _masks(model, 0.7, allowed=everything)[0], _masks(model, 0.7)[0]
    assert all(torch.equal(open_[k], plain[k]) for k in plain)


def test_restricted_search_refuses_a_floor_the_allowed_units_cannot_meet(tiny_bert_dir):
    model = _dense(tiny_bert_dir)
    allowed, _, _ = _masks(model, 0.4)
    allowed["ffn_unit"][1] = 0
    allowed["ffn_unit"][1, 0] = 1  # one unit left in layer 1, under the floor
    with pytest.raises(ValueError, match="fewer allowed ffn_units"):
        _masks(model, 0.7, allowed=allowed)


def test_rearrangement_brings_back_only_allowed_units():
    # removed: 0, 2, 4; 4 may not come back but still counts in 1_Z^T I 1_Z: removing 1
    # while 4 is removed costs 2 * 3 more, so the best allowed swap is 0 in, 3 out
    fisher = torch.tensor(
        [
            [1.0, 0.0, 3.0, 0.0, 0.0],
            [0.0, 0.1, 0.0, 0.0, 3.0],
            [3.0, 0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 5.0, 0.0],
            [0.0, 3.0, 0.0, 0.0, 0.5],
        ]
    )
    mask = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])

    def cost(m):
        return float((1 - m) @ fisher @ (1 - m))

    def best_swap(allowed):  # brute force over one swap
        options = []
        for i in (m for m in range(5) if mask[m] == 0 and allowed[m]):
            for j in (m for m in range(5) if mask[m] == 1):
                new = mask.clone()
                new[i], new[j] = 1.0, 0.0
                options.append((cost(new), new))
        return min(options, key=lambda o: o[0])[1]

    everything = torch.ones(5)
    free = rearrange_layer(fisher, mask, max_swaps=1)
    assert torch.equal(free, best_swap(everything)) and free[2] == 1  # 2 in, 3 out
    allowed = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    held = rearrange_layer(fisher, mask, max_swaps=1, allowed=allowed)
    assert torch.equal(held, best_swap(allowed))
    assert held.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0] and cost(held) < cost(mask)


def test_steps_must_increase_within_zero_and_one():
    FisherConfig(steps=[0.3, 0.6])
    for bad in ([0.6, 0.3], [0.0], [1.0], [0.4, 0.4]):
        with pytest.raises(ConfigError, match=r"fisher\.steps"):
            FisherConfig(steps=bad)
    with pytest.raises(ConfigError, match="step_epochs"):
        FisherConfig(step_epochs=0)


def test_gradual_job_prunes_within_the_kept_units_and_reports_each_step(
    tmp_path, tiny_bert_dir, data, monkeypatch
):
    import tlprune.gates.fisher as fisher

    searched = []
    real = fisher.search_masks

    def spy(diag, sizes, budget, floor=0.0, allowed=None):
        out = real(diag, sizes, budget, floor, allowed)
        searched.append((allowed, out))
        return out

    monkeypatch.setattr(fisher, "search_masks", spy)
    out = tmp_path / "run"
    cfg = _fisher_cfg(
        tiny_bert_dir, data, out, "fisher.final=true", "fisher.layer_floor=0.5",
        "fisher.steps=[0.3]", "fisher.step_epochs=1", "data.unlabelled=[target-train]",
    )  # fmt: skip
    result = run_fisher(cfg)
    (first_allowed, _), (kept_by_step, second) = searched  # the step's masks, rearranged
    assert first_allowed is None and kept_by_step is not None
    final = load_file(out / "masks.safetensors")
    for kind in ("head", "ffn_unit"):
        assert torch.all(second[kind] <= kept_by_step[kind])
        assert torch.all(final[kind] <= kept_by_step[kind])  # after the rearrangement too
    assert final["ffn_unit"].sum() < kept_by_step["ffn_unit"].sum()
    report = json.loads((out / "prune_report.json").read_text())
    (step,) = report["fisher"]["steps"]
    assert step["target"] == 0.3 and step["kept_params"] > report["sparsity"]["kept_params"]
    assert step["fine_tune_steps"] > 0 and "accuracy" in step["dev_after"]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("phase") == "step 1" and "distill/unlabelled_kl" in r for r in rows)
    assert report["sparsity"]["target"] == 0.5
    card = (out / "README.md").read_text()
    assert "| gradual pruning | 0.30 (dev accuracy " in card and "-> 0.50 |" in card
    assert result.model.config.model_type == "tlprune"


def test_two_steps_each_within_the_last_and_step_epochs_sets_their_length(
    tmp_path, tiny_bert_dir, data
):
    out = tmp_path / "run"
    cfg = _fisher_cfg(
        tiny_bert_dir, data, out, "fisher.final=true", "fisher.steps=[0.2, 0.35]",
        "fisher.step_epochs=2", "prune.final.max_steps=null", "prune.final.epochs=1",
    )  # fmt: skip
    run_fisher(cfg)
    report = json.loads((out / "prune_report.json").read_text())
    first, second = report["fisher"]["steps"]
    assert [first["target"], second["target"]] == [0.2, 0.35]
    assert first["kept_params"] > second["kept_params"] > report["sparsity"]["kept_params"]
    # 48 training texts, batch 64: one batch an epoch
    assert first["fine_tune_steps"] == second["fine_tune_steps"] == 2
    assert report["steps"]["final"] == 1
    assert "tune" in first and "scored" in first and "expected_at_end" not in first


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["fisher.steps=[0.6]", "fisher.final=true"], "below prune.sparsity"),
        (["fisher.steps=[0.3]"], "fisher.final=true"),
    ],
)
def test_bad_steps_give_one_line_and_write_nothing(
    tmp_path, tiny_bert_dir, data, capsys, extra, fragment
):
    out = tmp_path / "run"
    code = _cli(tiny_bert_dir, data, out, "--sparsity", "0.5", *extra)
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists() and not out.with_name("run.partial").exists()
