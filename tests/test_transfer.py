"""Transfer on tiny models: coupling (how), groups (what), schedules (when), MLM, bad input."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import tiny_tokenizer
from tests.test_prune_job import kill_at, sentiment_csv, tiny_cfg
from transformers import AutoModelForSequenceClassification

from tlprune.arch import from_hf, unit_sizes
from tlprune.cli import main
from tlprune.config import RunConfig, build_config
from tlprune.config.transfer import AuxConfig, ScheduleConfig, TransferConfig, parse_aux
from tlprune.errors import ConfigError
from tlprune.gates import GateConfig, GateSet
from tlprune.train.prune_job import run_prune
from tlprune.transfer.aux import AuxData
from tlprune.transfer.branch import build_branch
from tlprune.transfer.couplings import check_transfer
from tlprune.transfer.groups import copy_log_alphas, copy_weights, select_weights
from tlprune.transfer.mlm import MLMCollator
from tlprune.transfer.schedules import Weight


def aux_csv(path, n=120):
    """A labelled auxiliary whose texts never occur in the target's data (3 classes, and a
    numeric rating for regression)."""
    rows = [
        f"{('love', 'hate', 'meh')[i % 3]} the phone number {i},{'abc'[i % 3]},{i % 7 - 3}.5"
        for i in range(n)
    ]
    path.write_text("text,label,rating\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def data(tmp_path):
    return sentiment_csv(tmp_path / "d.csv")


@pytest.fixture
def aux(tmp_path):
    return aux_csv(tmp_path / "aux.csv")


def _model(tiny_bert_dir):
    return from_hf(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir))


def assert_same_run(a, b) -> None:
    """Two finished runs saved exactly the same masks and weights."""
    ma, mb = (load_file(r.out_dir / "masks.safetensors") for r in (a, b))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- how -------------------------------------------------------------------------------------------


def test_shared_with_alpha_zero_is_exactly_cofi(tmp_path, tiny_bert_dir, data, aux):
    cofi = run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "cofi"))
    shared = run_prune(
        tiny_cfg(
            tiny_bert_dir,
            data,
            tmp_path / "shared",
            "transfer.coupling=shared",
            f"transfer.aux=[{{source: {aux}}}, {{source: target, task: mlm}}]",
            "transfer.masks=[all]",
            "transfer.alpha.value=0",
        )
    )
    assert_same_run(cofi, shared)
    assert shared.report["transfer"]["coupling"] == "shared"


def test_soft_with_zero_beta_and_gamma_leaves_the_target_as_cofi(
    tmp_path, tiny_bert_dir, data, aux
):
    """Soft coupling with beta = gamma = 0 trains two independent models: the target's masks and
    weights are exactly cofi's (each branch's gradients are clipped on their own norm)."""
    clip = ("prune.prune.grad_clip=0.05", "prune.warm.grad_clip=0.05")  # binds every step
    cofi = run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "cofi", *clip))
    soft = run_prune(
        tiny_cfg(
            tiny_bert_dir,
            data,
            tmp_path / "soft",
            *clip,
            "transfer.coupling=soft",
            f"transfer.aux=[{{source: {aux}}}, {{source: target, task: mlm}}]",
            "transfer.aux_prune=true",
            "transfer.warm_alpha.value=1",  # the warm phase trains both models too
        )
    )
    assert_same_run(cofi, soft)
    rows = [json.loads(x) for x in (tmp_path / "soft" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("phase") == "prune" and any(k.startswith("aux/") for k in r) for r in rows)


def test_shared_coupling_trains_one_tensor(tmp_path, tiny_bert_dir, data, aux):
    """With alpha > 0 the auxiliary loss moves the shared weights, and the target run differs."""
    model = _model(tiny_bert_dir)
    gcfg = GateConfig(init_log_alpha=3.0)
    sizes = unit_sizes(model.config)
    gates = GateSet(gcfg, sizes, seed=0)
    tc = TransferConfig(coupling="shared", aux=[AuxConfig(source=str(aux))], weights=["attention"])
    branch = _branch(model, gates, tc, gcfg, sizes)
    enc_t, enc_a = dict(model.tlprune.named_parameters()), dict(branch.encoder.named_parameters())
    for n in select_weights(model.tlprune, ["attention"]):
        assert enc_a[n] is enc_t[n]  # one tensor
    ffn = "encoder.layers.0.ffn.intermediate.weight"
    assert enc_a[ffn] is not enc_t[ffn] and torch.equal(enc_a[ffn], enc_t[ffn])
    assert ffn not in {n for n, p in branch.encoder.named_parameters() if p is enc_t.get(n)}
    branch.bind(10, 3, lambda s: 0.0)
    loss, parts = branch(0, gates(), torch.device("cpu"))
    loss.backward()
    assert enc_t["encoder.layers.0.attention.query.weight"].grad is not None
    assert parts["alpha"] == 1.0 and any(k.startswith("aux/") for k in parts)


def _branch(model, gates, tc, gcfg, sizes, tokenizer=None):
    d = AuxData(
        "aux",
        tc.aux[0],
        [{"text": f"love the phone number {i}", "label": i % 2} for i in range(64)],
        ["a", "b"],
        16,
    )
    return build_branch(model, gates, [d], tokenizer or tiny_tokenizer(), tc, gcfg, sizes, 0)


LR = 1e-2


def test_soft_with_huge_beta_and_gamma_keeps_groups_equal(tiny_bert_dir):
    def run(beta, gamma):
        torch.manual_seed(0)
        model = _model(tiny_bert_dir)
        gcfg = GateConfig(init_log_alpha=1.0)
        sizes = unit_sizes(model.config)
        gates = GateSet(gcfg, sizes, seed=0)
        tc = TransferConfig(
            coupling="soft",
            aux=[AuxConfig(source="x", batch_size=8)],
            weights=["attention", "ffn"],
            masks=["head", "ffn_unit"],
            aux_prune=True,
            beta=ScheduleConfig(value=beta),
            gamma=ScheduleConfig(value=gamma),
        )
        branch = _branch(model, gates, tc, gcfg, sizes)
        branch.bind(20, 5, lambda s: 0.3)
        params = [*model.parameters(), *branch.weight_params(), *gates.parameters()]
        params += list(branch.gates.parameters())
        opt = torch.optim.Adam(params, lr=LR)  # as training does: Adam-type steps
        ids = torch.tensor([[2, 5, 6, 7, 3]] * 4)
        for step in range(30):
            z = gates()
            out = model(ids, attention_mask=torch.ones_like(ids), gates=z)
            extra, _ = branch(step, z, torch.device("cpu"))
            loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 0, 1]))
            (loss + extra).backward()
            opt.step()
            opt.zero_grad()
        t, a = dict(model.tlprune.named_parameters()), dict(branch.encoder.named_parameters())
        w = max((t[n] - a[n]).abs().max().item() for n in branch.weight_names)
        pt, pa = gates.keep_probs(), branch.gates.keep_probs()
        m = max((pt[k] - pa[k]).abs().max().item() for k in ("head", "ffn_unit"))
        other = max((t[n] - a[n]).abs().max().item() for n in t if n not in branch.weight_names)
        return w, m, other

    w_free, m_free, _ = run(0.0, 0.0)
    w_tied, m_tied, other = run(1e4, 1e4)
    assert w_free > 5 * LR and m_free > 5e-3  # without the penalties the copies drift apart
    # with them, Adam's steps (about LR each) oscillate around equality
    assert w_tied < 2 * LR and m_tied < 0.2 * m_free
    assert other > 1e-4  # groups outside W are not tied


class _Backward:
    """Accelerator.backward for tests: plain autograd."""

    @staticmethod
    def backward(loss, **kw):
        loss.backward(**kw)


@pytest.mark.parametrize("g_a", [(-1.0, 0.5, 0.0), (1.0, 1.0, 0.0)])
def test_adapt_scales_the_aux_gradient_by_the_positive_cosine(g_a):
    from tlprune.transfer.adapt import backward_adapted

    w, head = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    only_aux = torch.nn.Parameter(torch.zeros(1))  # shared, but this step only A reaches it
    gate = torch.nn.Parameter(torch.zeros(1))  # a shared gate: scaled, not in the cosine
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor(g_a)
    main = w @ a + gate.sum()
    aux = w @ b + head.sum() + 2 * only_aux.sum() + 3 * gate.sum()
    cos = backward_adapted(_Backward, main, aux, [w, only_aux], [gate])
    assert cos == pytest.approx(float(a @ b / (a.norm() * (b.norm() ** 2 + 4) ** 0.5)))
    f = max(0.0, cos)
    assert (f > 0) == (g_a[0] > 0)
    assert torch.allclose(w.grad, a + f * b)  # g_T + max(0, cos) g_A
    assert torch.allclose(only_aux.grad, torch.tensor([2 * f]))
    assert torch.allclose(gate.grad, torch.tensor([1 + 3 * f]))
    assert torch.equal(head.grad, torch.ones(2))  # the auxiliary head keeps its own gradient


def test_adapt_under_gradient_accumulation_compares_this_micro_batch():
    """An earlier micro-batch's gradient stays in .grad but not in the cosine."""
    from tlprune.transfer.adapt import backward_adapted

    w = torch.nn.Parameter(torch.zeros(2))
    backward_adapted(_Backward, w @ torch.tensor([1.0, 0.0]), w @ torch.tensor([0.0, 1.0]), [w])
    assert torch.allclose(w.grad, torch.tensor([1.0, 0.0]))  # orthogonal: g_A dropped
    same = torch.tensor([-1.0, 0.0])
    cos = backward_adapted(_Backward, w @ same, w @ same, [w])
    assert cos == pytest.approx(1.0)
    assert torch.allclose(w.grad, torch.tensor([1.0, 0.0]) + same + same)


def test_adapt_runs_in_warm_and_prune_phases_and_logs_the_cosine(
    tmp_path, tiny_bert_dir, data, aux
):
    extra = (
        "transfer.coupling=shared",
        f"transfer.aux=[{{source: {aux}}}, {{source: target, task: mlm}}]",
        "transfer.masks=[all]",
        "transfer.adapt=cosine",
        "transfer.warm_alpha.value=1",
    )
    result = run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "a", *extra))
    assert result.report["transfer"]["adapt"] == "cosine"
    assert "adapted by gradient cosine" in (tmp_path / "a" / "README.md").read_text()
    rows = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    for phase, n in (("warm", 2), ("prune", 6)):
        cos = [r["aux/cosine"] for r in rows if r.get("phase") == phase and "aux/cosine" in r]
        assert len(cos) == n and all(-1.0 <= c <= 1.0 for c in cos) and any(c != 0 for c in cos)


# -- what ------------------------------------------------------------------------------------------


def test_copy_weights_copies_exactly_the_named_groups(tiny_bert_dir):
    src, dst = _model(tiny_bert_dir), _model(tiny_bert_dir)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in dst.tlprune.named_parameters()}
    copied = copy_weights(src.tlprune, dst.tlprune, ["attention@1", "embeddings"])
    expect = {
        n
        for n in before
        if n.startswith("encoder.layers.1.attention.") or n.endswith("_embeddings.weight")
    }
    assert set(copied) == expect and expect
    s = dict(src.tlprune.named_parameters())
    for n, p in dst.tlprune.named_parameters():
        assert torch.equal(p, s[n] if n in expect else before[n]), n
    head = dict(dst.named_parameters())["classifier.out_proj.weight"]
    assert not torch.equal(head, dict(src.named_parameters())["classifier.out_proj.weight"])


def test_weight_groups_by_part_and_layer(tiny_bert_dir):
    enc = _model(tiny_bert_dir).tlprune
    norms = select_weights(enc, ["norm"])
    assert norms and all("norm" in n for n in norms) and "embeddings.norm.weight" in norms
    assert all(".layers.0." in n for n in select_weights(enc, ["layers@0"]))
    assert set(select_weights(enc, ["all"])) == {n for n, _ in enc.named_parameters()}
    with pytest.raises(ConfigError, match="not within"):
        select_weights(enc, ["ffn@1-5"])


def test_copy_log_alphas_copies_exactly_the_named_kinds(tiny_bert_dir):
    sizes = unit_sizes(_model(tiny_bert_dir).config)
    src, dst = GateSet(GateConfig(), sizes), GateSet(GateConfig(), sizes)
    with torch.no_grad():
        for p in src.parameters():
            p.fill_(2.5)
    assert copy_log_alphas(src, dst, ["head", "hidden"]) == ["head", "hidden"]
    for kind, la in dst.log_alpha.items():
        assert bool((la == 2.5).all()) == (kind in ("head", "hidden")), kind


# -- when ------------------------------------------------------------------------------------------


def test_schedules_at_phase_boundaries():
    steps, ramp = 11, 4  # steps 0..10, ramp = steps 0..3, hold = 4..10

    def w(**kw):
        return Weight(ScheduleConfig(**kw), steps, ramp)

    const = w(kind="constant", value=0.7)
    assert const(0) == const(3) == const(4) == const(10) == 0.7
    lin = w(kind="linear", value=1.0, end=0.0)
    assert lin(0) == 1.0 and lin(10) == 0.0 and lin(5) == pytest.approx(0.5)
    cos = w(kind="cosine", value=1.0, end=0.2)
    assert cos(0) == 1.0 and cos(10) == pytest.approx(0.2) and cos(5) == pytest.approx(0.6)
    off = w(kind="constant", value=2.0, off_after="ramp")
    assert off(3) == 2.0 and off(4) == 0.0 and off(10) == 0.0
    warm = w(kind="constant", value=1.0, warmup=0.2)  # round(0.2 * 11) = 2 warm-up steps
    assert warm(0) == 0.0 and warm(1) == 0.5 and warm(2) == 1.0
    assert w(value=0.0).always_zero and not lin.always_zero


# -- MLM -------------------------------------------------------------------------------------------


def test_mlm_collator_masks_only_non_special_tokens_at_the_rate():
    tok = tiny_tokenizer()
    texts = [
        {"text": "good great bad awful fine movie film phone " * (1 + i % 3)} for i in range(200)
    ]
    torch.manual_seed(0)
    batch = MLMCollator(tok, 32, 0.3)(texts)
    picked = batch["labels"] != -100
    original = torch.where(picked, batch["labels"], batch["input_ids"])
    is_special = torch.isin(original, torch.tensor(tok.all_special_ids))
    assert not bool((picked & is_special).any())
    assert not bool((picked & (batch["attention_mask"] == 0)).any())
    rate = picked.sum().item() / (~is_special & (batch["attention_mask"] == 1)).sum().item()
    assert 0.27 < rate < 0.33
    masked = batch["input_ids"][picked] == tok.mask_token_id
    assert 0.72 < masked.float().mean().item() < 0.88  # 80% become [MASK]
    torch.manual_seed(0)
    again = MLMCollator(tok, 32, 0.3)(texts)
    assert torch.equal(again["labels"], batch["labels"])


def test_aux_stream_is_a_function_of_its_position(tiny_bert_dir, monkeypatch):
    """Drawing auxiliary batches never moves the global RNG (CPU or CUDA), and a task whose
    position is restored (as a checkpoint does) continues with exactly the original batches."""
    tc = TransferConfig(coupling="shared", aux=[AuxConfig(source="x", task="mlm", batch_size=24)])
    model, tok = _model(tiny_bert_dir), tiny_tokenizer()
    task = _branch(model, None, tc, None, unit_sizes(model.config), tok).tasks[0]
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: pytest.fail("CUDA reseeded"))
    state = torch.get_rng_state()
    [task.next_batch(torch.device("cpu")) for _ in range(4)]  # 64 rows: 3 batches a pass
    assert torch.equal(torch.get_rng_state(), state)
    assert task.position == (1, 1)
    saved = {k: v.clone() for k, v in task.state_dict().items()}
    later = [task.next_batch(torch.device("cpu")) for _ in range(3)]
    fresh = _branch(_model(tiny_bert_dir), None, tc, None, unit_sizes(model.config), tok).tasks[0]
    fresh.load_state_dict(saved)
    for a, b in zip(later, [fresh.next_batch(torch.device("cpu")) for _ in range(3)], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same examples at another position get other masks; at the same position the same
    examples = [{"text": "love the phone love the phone love the phone " * 3}] * 24
    picked = [task.collate_at(examples, *pos)["labels"] != -100 for pos in ((0, 0), (0, 1), (0, 0))]
    assert not torch.equal(picked[0], picked[1]) and torch.equal(picked[0], picked[2])


# -- configuration and bad input -------------------------------------------------------------------


def test_parse_aux_specs():
    assert parse_aux("vader-movies") == AuxConfig(source="vader-movies")
    assert parse_aux("mlm:target") == AuxConfig(source="target", task="mlm")
    m = parse_aux("mlm:target-train@0.5")
    assert (m.source, m.mlm_text, m.weight) == ("target", "train", 0.5)
    with pytest.raises(ConfigError, match="weight"):
        parse_aux("vader-movies@x")
    r = parse_aux("reg:vader-movies@0.3")
    assert (r.source, r.task, r.value_column, r.weight) == (
        "vader-movies",
        "regression",
        "rating",
        0.3,
    )
    with pytest.raises(ConfigError, match="numeric"):
        parse_aux("reg:notes.txt")


def test_regression_auxiliary_values_are_checked_and_standardised(
    tmp_path, tiny_bert_dir, data, aux
):
    from tlprune.config import DataConfig
    from tlprune.data.sources import load_task
    from tlprune.data.split import draw_budget
    from tlprune.errors import DataError
    from tlprune.transfer.aux import load_aux

    task = load_task(DataConfig(target=str(data)))
    budget = draw_budget(task.train["label"], 40, 0, 0.2, task.num_labels)
    d = load_aux(parse_aux(f"reg:{aux}"), task, budget, 0)
    values = torch.tensor(d.rows["value"])
    assert d.rows.column_names == ["text", "value"] and len(values) > 50
    assert abs(values.mean().item()) < 1e-5 and abs(values.std(unbiased=False).item() - 1) < 1e-4
    assert "regression on 'rating'" in d.notes[0]
    # a table with no class labels at all, and its loss: one number, no broadcasting
    plain = tmp_path / "ratings.csv"
    plain.write_text("text,stars\n" + "\n".join(f"the cable {i},{i % 5}" for i in range(40)))
    r = load_aux(parse_aux(f"reg[stars]:{plain}"), task, budget, 0)
    assert r.rows.column_names == ["text", "value"] and r.name == f"reg:{plain}"
    tc = TransferConfig(coupling="shared", aux=[r.cfg])
    model = _model(tiny_bert_dir)
    branch = build_branch(model, None, [r], tiny_tokenizer(), tc, None, unit_sizes(model.config), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = branch.tasks[0].loss(branch.encoder, None, torch.device("cpu"))
    assert loss.shape == () and torch.isfinite(loss)
    empty = tmp_path / "gaps.csv"
    empty.write_text("text,rating\n" + "\n".join(f"the cable {i},{i or ''}" for i in range(40)))
    with pytest.raises(DataError, match="empty values"):
        load_aux(parse_aux(f"reg:{empty}"), task, budget, 0)
    with pytest.raises(DataError, match="value column 'stars' not found"):
        load_aux(
            AuxConfig(source=str(aux), task="regression", value_column="stars"), task, budget, 0
        )
    with pytest.raises(DataError, match="not numeric"):
        load_aux(
            AuxConfig(source=str(aux), task="regression", value_column="label"), task, budget, 0
        )


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["transfer.weights=[attn]"], "unknown weight group"),
        (["transfer.adapt=sometimes"], "unknown transfer.adapt"),
        (["transfer.masks=[heads]"], "unknown mask group"),
        (
            ["transfer.coupling=soft", "transfer.aux=[{source: x, weight: -1}]"],
            "weight must be >= 0",
        ),
        (["transfer.alpha.value=-0.5"], "must be >= 0"),
        (["transfer.coupling=joint"], "unknown coupling"),
        (["transfer.aux=[{source: ''}]"], "an auxiliary needs data"),
        (["transfer.alpha.kind=step"], "unknown schedule kind"),
        (["transfer.aux=[{source: target}]"], "use it with task mlm"),
    ],
)
def test_bad_transfer_config(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(RunConfig, overrides=overrides)


def _cli(tiny_bert_dir, data, out, *extra):
    return main(
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


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--preset", "transfr", "--aux", "vader-movies"], "unknown preset"),
        (["--preset", "joint"], "needs at least one auxiliary"),
        (["--preset", "joint", "--aux", "EMPTY"], "no examples"),
        (["--preset", "joint", "--aux", "TEST"], "test examples"),
        (["--preset", "joint", "--aux", "TARGET"], "is the target itself"),
        (["--preset", "joint", "--aux", "mlm:missing.txt"], "not found"),
        (["--preset", "joint", "--aux", "AUX@-1"], "weight must be >= 0"),
    ],
)
def test_bad_transfer_input_via_cli(tmp_path, tiny_bert_dir, data, aux, capsys, extra, fragment):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    # the target's own test split, as a labelled file
    from tlprune.config import DataConfig
    from tlprune.data.sources import load_task

    test = load_task(DataConfig(target=str(data))).test
    leak = tmp_path / "leak.csv"
    leak.write_text(
        "text,label\n" + "\n".join(f"{t},{'xy'[i % 2]}" for i, t in enumerate(test["text"])) + "\n"
    )
    names = {"EMPTY": f"mlm:{empty}", "TEST": str(leak), "TARGET": str(data), "AUX": str(aux)}
    for key, value in names.items():  # placeholders -> the files made above
        extra = [value + a[len(key) :] if a.startswith(key) else a for a in extra]
    out = tmp_path / "run"
    code = _cli(tiny_bert_dir, data, out, *extra)
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert not out.exists() and not out.with_name("run.partial").exists()


@pytest.mark.parametrize(
    "preset", ["stilts", "sequential", "joint", "soft", "transfer", "fisher-stilts"]
)
def test_transfer_presets_run_end_to_end(tmp_path, tiny_bert_dir, data, aux, preset):
    out = tmp_path / preset
    specs = ["--aux", str(aux), "--aux", "mlm:target@0.5", "--aux", f"reg:{aux}@0.3"]
    code = _cli(tiny_bert_dir, data, out, "--preset", preset, *specs)
    assert code == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["preset"] == preset and report["sparsity"]["achieved"] >= 0.5
    tasks = [a["task"] for a in report["transfer"]["aux"]]
    assert tasks == ["classification", "mlm", "regression"]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    phase = "aux" if report["transfer"]["coupling"] == "sequential" else "prune"
    losses = {k for r in rows if r.get("phase") == phase for k in r if k.startswith("aux/")}
    losses -= {"aux/expected_sparsity", "aux/weight_distance", "aux/mask_distance"}
    assert losses == {f"aux/{aux}", "aux/mlm:target-texts", f"aux/reg:{aux}"}, losses
    assert report["transfer"]["aux"][1]["weight"] == 0.5
    if (
        report["transfer"]["coupling"] == "sequential"
    ):  # stilts, sequential, transfer, fisher-stilts
        assert report["transfer"]["aux_stage_steps"] == 4  # smoke
    if preset == "sequential":
        assert report["steps"]["prune"] == 0  # A's masks, fixed; T fine-tunes the small model
        # a few smoke steps leave A's constraint far from the target: the report says so
        assert any("transfer.aux_stage steps" in w for w in report["warnings"]), report["warnings"]


def test_reprune_starts_from_the_auxiliary_log_alphas(tmp_path, tiny_bert_dir, data, aux):
    cfg = tiny_cfg(
        tiny_bert_dir,
        data,
        tmp_path / "r",
        "transfer.coupling=sequential",
        "transfer.variant=reprune",
        "transfer.aux_prune=true",
        "transfer.masks=[head]",
        f"transfer.aux=[{{source: {aux}}}]",
        "transfer.aux_stage.max_steps=3",
    )
    result = run_prune(cfg)
    assert (
        result.report["steps"]["prune"] == 6 and result.report["transfer"]["aux_stage_steps"] == 3
    )
    rows = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert any(r.get("phase") == "aux" for r in rows)


def test_soft_branch_doubles_weights_and_says_so(tiny_bert_dir):
    model = _model(tiny_bert_dir)
    gcfg = GateConfig()
    sizes = unit_sizes(model.config)
    tc = TransferConfig(coupling="soft", aux=[AuxConfig(source="x")], masks=[])
    branch = _branch(model, GateSet(gcfg, sizes), tc, gcfg, sizes)
    n_enc = sum(p.numel() for p in model.tlprune.parameters())
    assert f"{n_enc:,} own encoder weights" in branch.memory_note()
    tc_shared = TransferConfig(coupling="shared", aux=[AuxConfig(source="x")])
    shared = _branch(model, GateSet(gcfg, sizes), tc_shared, gcfg, sizes)
    assert "0 own encoder weights" in shared.memory_note()


def test_mlm_on_target_texts_never_sees_dev_or_test(data):
    from tlprune.config import DataConfig
    from tlprune.data.sources import load_task
    from tlprune.data.split import draw_budget
    from tlprune.transfer.aux import load_aux

    task = load_task(DataConfig(target=str(data)))
    budget = draw_budget(task.train["label"], 40, 0, 0.2, task.num_labels)
    dev_texts = set(task.train.select(budget.dev)["text"])
    test_texts = set(task.test["text"])
    small = load_aux(AuxConfig(source="target", task="mlm"), task, budget, 0)
    every = load_aux(AuxConfig(source="target", task="mlm", mlm_text="train"), task, budget, 0)
    assert small.rows.column_names == ["text"] and every.rows.column_names == ["text"]
    assert (
        len(small.rows) <= len(budget.train) < len(every.rows) <= len(task.train) - len(budget.dev)
    )
    for rows in (small.rows, every.rows):
        assert not (set(rows["text"]) & (dev_texts | test_texts))
    assert "no extra data" in small.notes[0] and "without labels" in every.notes[0]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["transfer.coupling=shared", "transfer.beta.value=1"], "only with coupling soft"),
        (["transfer.coupling=sequential", "transfer.variant=reprune"], "variant reprune needs"),
        (
            ["transfer.coupling=sequential", "transfer.aux_prune=true", "transfer.masks=[head]"],
            "must cover every pruned kind",
        ),
        (
            [
                "transfer.coupling=sequential",
                "transfer.aux_prune=true",
                "transfer.masks=[all]",
                "transfer.aux_sparsity=0.5",
            ],
            "meet the target's budget",
        ),
        (
            ["transfer.coupling=shared", "transfer.alpha.off_after=ramp", "prune.target_warmup=0"],
            "always off",
        ),
        (["transfer.coupling=soft", "transfer.adapt=cosine"], "needs coupling shared"),
        (["transfer.coupling=sequential", "transfer.warm_alpha.value=1"], "shared or soft"),
        (["transfer.coupling=shared", "transfer.warm_beta.value=1"], "warm_beta acts only with"),
        (["transfer.coupling=soft", "transfer.warm_beta.value=1"], "set transfer.warm_alpha"),
        (
            [
                "transfer.coupling=shared",
                "transfer.warm_alpha.value=1",
                "transfer.warm_alpha.off_after=ramp",
            ],
            "not for warm schedules",
        ),
    ],
)
def test_settings_that_would_be_ignored_are_refused(overrides, fragment):
    cfg = build_config(RunConfig, overrides=[*overrides, "transfer.aux=[{source: x}]"])
    with pytest.raises(ConfigError, match=fragment):
        check_transfer(cfg.transfer, cfg.prune)


def test_target_file_spelt_differently_is_refused(tmp_path, data, monkeypatch):
    from tlprune.config import DataConfig
    from tlprune.data.sources import load_task
    from tlprune.data.split import draw_budget
    from tlprune.transfer.aux import load_aux

    monkeypatch.chdir(tmp_path)
    task = load_task(DataConfig(target=str(data)))
    budget = draw_budget(task.train["label"], 40, 0, 0.2, task.num_labels)
    with pytest.raises(ConfigError, match="target itself"):
        load_aux(AuxConfig(source=data.name), task, budget, 0)  # relative spelling
    copy = tmp_path / "copy.csv"
    copy.write_text(data.read_text())
    with pytest.raises(ConfigError, match="labelled training"):
        load_aux(AuxConfig(source=str(copy)), task, budget, 0)


def test_aux_lagrangian_holds_shared_gates_fixed(tiny_bert_dir):
    model = _model(tiny_bert_dir)
    gcfg = GateConfig(init_log_alpha=1.0)
    sizes = unit_sizes(model.config)
    gates = GateSet(gcfg, sizes, seed=0)
    tc = TransferConfig(
        coupling="shared", aux=[AuxConfig(source="x")], masks=["head"], aux_prune=True
    )
    branch = _branch(model, gates, tc, gcfg, sizes)
    assert "head" not in branch.gates.log_alpha  # shared: one tensor, the target's
    branch.bind(10, 3, lambda s: 0.9)
    branch.alpha.cfg.value = 0.0  # no auxiliary batch: only L_c(z_A) acts
    loss, parts = branch(0, None, torch.device("cpu"))
    loss.backward()
    assert "aux/expected_sparsity" in parts
    assert gates.log_alpha["head"].grad is None  # the target's gates are not moved by L_c(z_A)
    assert branch.gates.log_alpha["ffn_unit"].grad is not None


def test_killed_aux_stage_resumes_from_its_checkpoint(tmp_path, tiny_bert_dir, data, aux):
    extra = (
        "transfer.coupling=sequential",
        "transfer.aux_prune=true",
        "transfer.masks=[all]",
        f"transfer.aux=[{{source: {aux}}}]",
        "transfer.aux_stage.max_steps=6",
    )
    out = tmp_path / "seq"

    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), on_aux_step=kill_at(5))
    work = out.with_name("seq.partial")
    assert (work / "aux_checkpoints" / "step-000004").is_dir()  # checkpoint_every=2
    result = run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), resume=True)
    assert result.report["transfer"]["aux_stage_steps"] == 6
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r.get("phase") == "aux"]
    assert steps == [1, 2, 3, 4, 5, 5, 6]  # steps 1-5, then 5-6 again from the step-4 checkpoint
    again = [r for r in rows if r.get("phase") == "aux" and r["step"] == 5]
    assert again[0] == again[1]  # the same batch and loss: the auxiliary stream resumed too


def test_killed_shared_run_resumes_to_the_same_masks(tmp_path, tiny_bert_dir, data, aux):
    """A two-branch run killed in the prune phase resumes exactly: target and auxiliary streams."""
    extra = (
        "prune.prune.batch_size=16",
        "transfer.coupling=shared",
        f"transfer.aux=[{{source: {aux}, batch_size: 16}}, {{source: target, task: mlm}}]",
        "transfer.masks=[all]",
    )
    full = run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "full", *extra))

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), on_step=kill_at(5))
    resumed = run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), resume=True)
    a, b = load_file(tmp_path / "full" / "masks.safetensors"), load_file(out / "masks.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)

    def aux_rows(path):
        rows = [json.loads(x) for x in (path / "log.jsonl").read_text().splitlines()]
        return {
            r["step"]: {k: v for k, v in r.items() if k.startswith("aux/")}
            for r in rows
            if r.get("phase") == "prune" and any(k.startswith("aux/") for k in r)
        }

    assert aux_rows(tmp_path / "full") == aux_rows(out) != {}


def test_warm_phase_transfer_trains_the_branch_and_hands_it_on(
    tmp_path, tiny_bert_dir, data, aux, monkeypatch
):
    """warm_alpha > 0: the auxiliary loss joins the dense warm fine-tune, and the prune phase's
    branch starts from the heads (and stream) the warm phase left, also after a resume."""
    extra = (
        "transfer.coupling=shared",
        f"transfer.aux=[{{source: {aux}}}]",
        "transfer.weights=[attention]",  # A owns its FFN weights: they are carried too
        "transfer.warm_alpha.value=1",
        "prune.warm.max_steps=3",
        "prune.warm.eval_every=1",
    )
    from tlprune.train import loop
    from tlprune.transfer.branch import AuxBranch

    # dev losses 0.5, 0.1, 0.9 in the warm phase: its best step is 2, not the last
    branches, snaps, real_bind, real_eval = [], [], AuxBranch.bind_warm, loop.evaluate
    monkeypatch.setattr(
        AuxBranch, "bind_warm", lambda self, n: (branches.append(self), real_bind(self, n))[1]
    )

    def evaluate(*args):
        dev = real_eval(*args)
        if len(snaps) < 3:
            dev["loss"] = (0.5, 0.1, 0.9)[len(snaps)]
            snaps.append(branches[0].carried_state(streams=False))
        return dev

    monkeypatch.setattr(loop, "evaluate", evaluate)
    out = tmp_path / "warm"
    with pytest.raises(KeyboardInterrupt):
        run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), on_step=kill_at(1))
    warm = out.with_name("warm.partial") / "warm"
    carried = load_file(warm / "aux_branch.safetensors")
    head = "tasks.0.head.out_proj.weight"
    assert torch.equal(carried[head], snaps[1][head])  # the heads return to the best step too
    assert not torch.equal(carried[head], snaps[2][head])
    rows = [
        json.loads(x)
        for x in (out.with_name("warm.partial") / "log.jsonl").read_text().splitlines()
    ]
    warm_rows = [r for r in rows if r.get("phase") == "warm" and "loss" in r]
    assert len(warm_rows) == 3 and all(
        r["alpha"] == 1.0 and any(k.startswith("aux/") for k in r) for r in warm_rows
    )
    # what was carried: the head, its stream position, and A's own (FFN) weights only
    assert carried["tasks.0._extra_state"].tolist() == [0, 3]
    assert any(k.startswith("encoder.") and ".ffn." in k for k in carried)
    assert not any(k.startswith("encoder.") and ".attention." in k for k in carried)
    # a new branch (as the prune phase builds) takes it over exactly
    model = _model(tiny_bert_dir)
    tc = build_config(RunConfig, overrides=list(extra[:4])).transfer
    rows3 = [{"text": f"love the phone {i}", "label": i % 3} for i in range(30)]
    d = AuxData("aux", tc.aux[0], rows3, ["a", "b", "c"], 16)
    branch = build_branch(model, None, [d], tiny_tokenizer(), tc, None, unit_sizes(model.config), 0)
    assert not torch.equal(branch.carried_state()[head], carried[head])  # warm trained it
    branch.load_carried(carried)
    mine = branch.carried_state()
    assert mine.keys() == carried.keys() and all(torch.equal(mine[k], carried[k]) for k in mine)
    loaded = []

    def load_and_record(self, state):
        real(self, state)
        loaded.append((self.carried_state(), self.tasks[0].position))

    real = AuxBranch.load_carried
    monkeypatch.setattr(AuxBranch, "load_carried", load_and_record)
    result = run_prune(tiny_cfg(tiny_bert_dir, data, out, *extra), resume=True)
    assert len(loaded) == 1 and torch.equal(loaded[0][0][head], carried[head])
    assert loaded[0][1] == (0, 3)  # the prune phase's stream goes on after the warm phase's
    assert result.report["transfer"]["in_warm"] is True
    assert "warm and prune phases" in (out / "README.md").read_text()


def test_soft_warm_phase_pulls_the_copies_together(tmp_path, tiny_bert_dir, data, aux):
    extra = (
        "transfer.coupling=soft",
        f"transfer.aux=[{{source: {aux}}}]",
        "transfer.warm_alpha.value=1",
        "transfer.warm_beta.value=5",
        "transfer.warm_beta.kind=linear",
        "prune.warm.max_steps=3",
    )
    result = run_prune(tiny_cfg(tiny_bert_dir, data, tmp_path / "soft", *extra))
    rows = [json.loads(x) for x in (tmp_path / "soft" / "log.jsonl").read_text().splitlines()]
    warm = [r for r in rows if r.get("phase") == "warm" and "loss" in r]
    assert [r["beta"] for r in warm] == [5.0, 2.5, 0.0]  # linear 5 -> 0 over the 3 warm steps
    assert warm[0]["aux/weight_distance"] == 0.0 < warm[1]["aux/weight_distance"]
    assert result.report["transfer"]["in_warm"] is True


def test_pruned_aux_stage_warms_up_densely_first(tmp_path, tiny_bert_dir, data, aux):
    cfg = tiny_cfg(
        tiny_bert_dir,
        data,
        tmp_path / "s",
        "transfer.coupling=sequential",
        "transfer.aux_prune=true",
        "transfer.masks=[all]",
        f"transfer.aux=[{{source: {aux}}}]",
        "transfer.aux_stage.max_steps=6",
        "transfer.aux_warm=0.5",
    )
    run_prune(cfg)
    rows = [json.loads(x) for x in (tmp_path / "s" / "log.jsonl").read_text().splitlines()]
    gated = [("aux/expected_sparsity" in r) for r in rows if r.get("phase") == "aux"]
    assert gated == [False] * 3 + [True] * 3


def test_target_texts_repeated_in_its_test_split_are_dropped_not_refused(tmp_path):
    """Some datasets repeat texts across their own splits (vader-nyt: 2% of its test texts
    also occur in train). The target's training texts as unlabelled/MLM data drop those
    duplicates and say so; another source holding them is still refused."""
    from tlprune.config import DataConfig
    from tlprune.data.sources import load_task
    from tlprune.data.split import draw_budget
    from tlprune.transfer.aux import load_aux

    rows = [f"text number {i % 70} here,{'ab'[i % 2]}" for i in range(140)]  # every text twice
    path = tmp_path / "dup.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    task = load_task(DataConfig(target=str(path)))
    test_texts = set(task.test["text"])
    assert test_texts & set(task.train["text"])  # the split itself repeats texts
    budget = draw_budget(task.train["label"], 40, 0, 0.2, task.num_labels)
    every = load_aux(AuxConfig(source="target", task="mlm", mlm_text="train"), task, budget, 0)
    assert not set(every.rows["text"]) & test_texts
    assert any("were dropped" in n for n in every.notes)
    other = tmp_path / "other.txt"  # a separate text file made of the target's test texts
    other.write_text("\n".join(sorted(test_texts)) + "\n")
    with pytest.raises(ConfigError, match="test examples"):
        load_aux(AuxConfig(source=str(other), task="mlm"), task, budget, 0)
