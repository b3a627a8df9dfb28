"""`tlprune study` and `tlprune report` on tiny models: stages, resume, failures, two workers,
a killed worker, search, bad specs, and the report's statistics on a synthetic study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats
from tests.test_prune_job import sentiment_csv

from tlprune.cli import main


def _spec(tmp_path: Path, tiny: Path, data: Path, **extra) -> Path:
    raw = {
        "name": "tiny",
        "fixed": {"model": str(tiny), "target": str(data), "budget": 60, "sparsity": 0.5},
        "axes": {
            "recipe": {
                "finetune": {"preset": "finetune"},
                "cofi": {"preset": "cofi"},
                "fisher": {"preset": "fisher"},
            },
            "seed": [0, 1],
        },
        "baselines": ["finetune"],
        "questions": {"how": {"compare": ["fisher"], "against": "cofi"}},
        "stages": [
            {"name": "first", "only": {"seed": [0]}},
            {"name": "confirm", "winners": {"from": "first", "top": 1}},
        ],
    }
    raw.update(extra)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def data(tmp_path):
    return sentiment_csv(tmp_path / "d.csv")


def _store(out: Path):
    from tlprune.study.store import default_url, open_store

    return open_store("tiny", default_url(out), create=False)


def test_study_runs_stages_resumes_and_reports(tmp_path, tiny_bert_dir, data, capsys):
    spec, out = _spec(tmp_path, tiny_bert_dir, data), tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out), "--smoke", "--jobs", "2"]) == 0
    study = _store(out)
    done = {t.user_attrs["cell"]: t for t in study.trials if t.state.name == "COMPLETE"}
    first = {n for n, t in done.items() if t.user_attrs["stage"] == "first"}
    assert first == {"finetune_s0", "cofi_s0", "fisher_s0"}
    confirm = {n for n, t in done.items() if t.user_attrs["stage"] == "confirm"}
    winner = max(["cofi", "fisher"], key=lambda m: done[f"{m}_s0"].user_attrs["dev"])
    assert confirm == {"finetune_s1", f"{winner}_s1"}  # baselines + the winner of `first`
    for t in done.values():
        assert (out / "runs" / t.user_attrs["cell"]).is_dir()
        assert t.value == t.user_attrs["dev"] and len(t.user_attrs["correct"]) > 0
    # a second invocation runs nothing again
    stamps = {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    trials = len(study.trials)
    assert main(["study", str(spec), "--out", str(out), "--smoke"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "logs").iterdir()} == stamps
    assert len(_store(out).trials) == trials
    # a changed spec on the same store is refused, not mixed with the old cells
    edited = spec.read_text().replace("budget: 60", "budget: 50")
    spec.write_text(edited)
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(out), "--smoke"]) == 2
    assert "ran with other flags" in capsys.readouterr().err

    # the finished run folders, copied elsewhere, are recorded without running anything
    spec.write_text(edited.replace("budget: 50", "budget: 60"))
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")
    shutil.rmtree(copy / "runs" / "finetune_s1")  # an unfinished cell stays out
    assert main(["study", str(spec), "--out", str(copy), "--record-only"]) == 0
    recorded = {t.user_attrs["cell"] for t in _store(copy).trials if t.state.name == "COMPLETE"}
    assert recorded == set(done) - {"finetune_s1"} and not (copy / "logs").exists()

    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    rep = out / "report"
    md = (rep / "report.md").read_text()
    assert "Best recipe beyond the baselines (chosen on dev accuracy over the" in md
    assert "vs finetune: t 95%" in md
    assert "**how**:" in md
    page = (rep / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(list((rep / "figures").iterdir()))
    rows = (rep / "results.csv").read_text().splitlines()
    assert rows[0].startswith("cell,method,target") and len(rows) == 1 + len(done)


def test_failed_cell_is_recorded_and_the_others_finish(tmp_path, tiny_bert_dir, data, capsys):
    axes = {
        "recipe": {
            "finetune": {"preset": "finetune"},
            "broken": {"preset": "cofi", "overrides": ["prune.prune.lr=-1"]},
        },
        "seed": [0],
    }
    spec = _spec(tmp_path, tiny_bert_dir, data, axes=axes, stages=[{"name": "all"}],
                 questions={})  # fmt: skip
    out = tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out), "--smoke"]) == 1
    printed = capsys.readouterr().out
    assert "1 cells finished, 1 failed" in printed and "failed broken_s0: exit 2" in printed
    from tlprune.study.store import failures

    assert "broken_s0" in failures(_store(out))


def test_two_workers_on_one_store_never_run_a_cell_twice(tmp_path, tiny_bert_dir, data):
    spec, out = _spec(tmp_path, tiny_bert_dir, data), tmp_path / "study"
    cmd = [sys.executable, "-m", "tlprune", "study", str(spec), "--out", str(out), "--smoke"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]  # fmt: skip
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    trials = [t for t in _store(out).trials if "cell" in t.user_attrs]
    complete = [t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(set(complete)) and len(complete) == 5
    for log in (out / "logs").iterdir():  # each cell's run started once
        assert log.read_text().count("$ tlprune ") == 1, log.name


@pytest.mark.slow
def test_a_killed_worker_s_cell_is_rerun_with_resume(tmp_path, tiny_bert_dir, data):
    # a cell long enough to be caught mid-run, checkpointed every 10 steps
    slow = {
        "preset": "cofi",
        "overrides": ["prune.prune.max_steps=400", "prune.checkpoint_every=10"],
    }
    axes = {"recipe": {"cofi": slow}, "seed": [0]}
    spec = _spec(tmp_path, tiny_bert_dir, data, axes=axes, baselines=[], questions={},
                 stages=[{"name": "all"}])  # fmt: skip
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tlprune", "study", str(spec), "--out", str(out),
           "--heartbeat", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    ckpts = out / "runs" / "cofi_s0.partial" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts.is_dir() and any(ckpts.iterdir())) and time.time() < deadline:
        time.sleep(0.2)
    assert ckpts.is_dir() and any(ckpts.iterdir()), "the cell never checkpointed"
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "runs" / "cofi_s0").exists()  # nothing that looks finished
    assert subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL) == 0
    states = sorted(t.state.name for t in _store(out).trials if "cell" in t.user_attrs)
    assert states == ["COMPLETE", "FAIL"]  # the lost one, then its retry
    assert "--resume" in (out / "logs" / "cofi_s0.log").read_text()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"axes": {"colour": [1, 2]}}, "unknown axis 'colour'"),
        ({"axes": {"recipe": {"x": {"preset": "nope"}}}}, "unknown preset 'nope'"),
        ({"fixed": {"target": "no-such-data", "model": "m"}}, "unknown target 'no-such-data'"),
        ({"axes": {}}, "the grid is empty"),
        ({"stages": [{"name": "a", "only": {"size": [1]}}]}, "names axis 'size'"),
        ({"stages": [{"name": "a", "winners": {"from": "z"}}]}, "no such stage"),
        ({"baselines": ["dense"]}, "not among the method axis values"),
        ({"stages": [{"name": "a"}, {"name": "b", "winners": {"top": 2}}]}, "needs `from"),
    ],
)
def test_bad_specs_give_one_line_and_write_nothing(tmp_path, data, capsys, change, fragment):
    raw = {
        "fixed": {"model": "m", "target": str(data)},
        "axes": {"recipe": {"cofi": {"preset": "cofi"}}},
    }
    raw.update(change)
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(raw))
    out = tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not out.exists()


def test_report_intervals_match_hand_computed_ones(tmp_path):
    from tlprune.study.report import Row, StudyData, compare, tables, write_report
    from tlprune.study.stats import bootstrap_interval

    rng = np.random.default_rng(0)
    rows, correct = [], {}
    for target in ("a", "b"):
        for seed in range(3):
            for method, p in (("dense", 0.8), ("small", 0.75)):
                c = (rng.random(200) < p).astype(int)
                correct[(method, target, seed)] = c
                rows.append(Row(f"{method}_{target}_s{seed}", method, target, 64,
                                None if method == "dense" else 0.8, seed,
                                dev=float(rng.random()), test=float(c.mean()),
                                correct=c.tolist()))  # fmt: skip
    data = StudyData("synthetic", "recipe", ["dense"], {}, rows, {})
    settings = [("a", 64, 0.8, ""), ("b", 64, 0.8, "")]
    d = [
        correct[("small", t, s)].mean() - correct[("dense", t, s)].mean()
        for t in ("a", "b")
        for s in range(3)
    ]
    x = 100 * np.array(d)
    lo, hi = stats.t.interval(0.95, 5, loc=x.mean(), scale=stats.sem(x))
    iv = compare(rows, "small", "dense", settings)
    assert iv.n == 6 and iv.mean == pytest.approx(x.mean())
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    boot = bootstrap_interval([correct[("small", "a", s)] for s in range(3)],
                              [correct[("dense", "a", s)] for s in range(3)])  # fmt: skip
    per_target = {title: body for title, _, body in tables(data)}
    small_a = next(r for r in per_target["a, budget 64, sparsity 0.8"] if r[0] == "small")
    assert small_a[5] == f"[{boot.lo:+.1f}, {boot.hi:+.1f}]"
    pooled = per_target["pooled over targets (paired by target and seed)"]
    assert pooled == [["64", "0.8", "-", "small", str(iv)]]
    path = write_report(data, tmp_path)
    assert "small" in (path / "report.md").read_text()


def test_a_winners_stage_needs_no_baselines(tmp_path, data):
    from tlprune.study import parse_spec

    raw = {
        "fixed": {"model": "m", "target": str(data)},
        "axes": {"recipe": {"a": {"preset": "cofi"}, "b": {"preset": "fisher"}}, "seed": [0, 1]},
        "stages": [
            {"name": "s1", "only": {"seed": [0]}},
            {"name": "s2", "winners": {"from": "s1"}},
        ],
    }
    spec = parse_spec(raw)
    assert [c.name for c in spec.cells(spec.stages[1], winners=["b"])] == ["b_s0", "b_s1"]


def test_a_cell_teacher_is_the_dense_cell_of_the_same_target_and_seed(tmp_path, data):
    """`teacher: cell:finetune` gives each cell the folder of its finetune twin (same other
    axes; a dense run has no sparsity), which must run in an earlier stage."""
    from tlprune.errors import ConfigError
    from tlprune.study import parse_spec

    raw = {
        "fixed": {"model": "m", "target": str(data)},
        "axes": {
            "recipe": {
                "finetune": {"preset": "finetune"},
                "fisher-ft": {"preset": "fisher-ft", "teacher": "cell:finetune"},
            },
            "sparsity": [0.8, 0.6],
            "seed": [0, 1],
        },
        "stages": [
            {"name": "dense", "only": {"recipe": ["finetune"]}},
            {"name": "pruned", "only": {"recipe": ["fisher-ft"]}},
        ],
    }
    spec = parse_spec(raw)
    cells = {c.name: c for c in spec.cells(spec.stages[1])}
    assert cells["fisher-ft_sp0.6_s1"].flags["teacher"] == "cell:finetune_s1"
    args = cells["fisher-ft_sp0.6_s1"].args(tmp_path / "runs" / "fisher-ft_sp0.6_s1")
    assert args[args.index("--teacher") + 1] == str(tmp_path / "runs" / "finetune_s1")
    with pytest.raises(ConfigError, match="no cell of an earlier stage"):
        parse_spec({**raw, "stages": [{"name": "all"}]})
    bad = {**raw["axes"], "recipe": {"fisher-ft": {"preset": "fisher-ft", "teacher": "cell:x"}}}
    with pytest.raises(ConfigError, match="not among the method axis values"):
        parse_spec({**raw, "axes": bad, "stages": [{"name": "all"}]})


def test_bootstrap_draws_one_example_set_for_all_seeds():
    """Seeds share the test set: three identical seeds give the one-seed interval (independent
    draws per seed would narrow it by about sqrt(3))."""
    from tlprune.study.stats import bootstrap_interval

    rng = np.random.default_rng(1)
    x, y = (rng.random(300) < 0.8).astype(int), (rng.random(300) < 0.7).astype(int)
    one = bootstrap_interval([x], [y], seed=5)
    three = bootstrap_interval([x, x, x], [y, y, y], seed=5)
    assert (three.lo, three.hi) == (pytest.approx(one.lo), pytest.approx(one.hi))
    assert one.hi - one.lo > 5  # 300 examples: several points wide


def test_pooled_table_leaves_out_methods_not_run_at_a_setting():
    """A method run at one sparsity only has no pooled row at the other, and a baseline with
    no pairs at a setting is "-", never a nan."""
    from tlprune.study.report import Row, StudyData, tables

    rows = []
    for target in ("a", "b"):
        for seed in (0, 1):
            rows.append(Row(f"d{target}{seed}", "dense", target, 64, None, seed, 0.7, 0.8))
            for sp in (0.5, 0.8):
                rows.append(Row(f"f{target}{sp}{seed}", "fisher", target, 64, sp, seed, 0.6,
                                0.70 + 0.01 * seed))  # fmt: skip
            rows.append(Row(f"c{target}{seed}", "cofi", target, 64, 0.8, seed, 0.6, 0.72))
    data = StudyData("s", "recipe", ["dense", "cofi"], {}, rows, {})
    pooled = {t: b for t, _, b in tables(data)}["pooled over targets (paired by target and seed)"]
    at_half = [r for r in pooled if r[1] == "0.5"]
    assert [r[3] for r in at_half] == ["fisher"] and at_half[0][5] == "-"
    assert not any("nan" in c for r in pooled for c in r)


def test_dense_runs_count_once_and_no_spread_is_no_verdict():
    """A dense baseline serves two sparsities but is one run: one pair, no interval, and a
    verdict that says so; other axes (a model axis) keep their rows apart."""
    from tlprune.study.report import Row, StudyData, compare, tables, verdict

    rows = [Row("d", "dense", "t", 64, None, 0, 0.7, 0.80),
            Row("d2", "dense2", "t", 64, None, 0, 0.7, 0.77)]  # fmt: skip
    for sp in (0.5, 0.8):
        for model in ("a", "b"):
            rows.append(Row(f"s{sp}{model}", "small", "t", 64, sp, 0, 0.6,
                            0.70 if model == "a" else 0.60, group=f"model={model}"))  # fmt: skip
    settings = [("t", 64, 0.5, ""), ("t", 64, 0.8, "")]
    iv = compare(rows, "dense2", "dense", settings)
    assert iv.n == 1 and not iv.significant
    assert "no interval" in verdict("dense2", "dense", iv)
    titles = [t for t, _, _ in tables(StudyData("x", "recipe", ["dense"], {}, rows, {}))]
    assert "t, budget 64, sparsity 0.5, model=a" in titles
    assert "t, budget 64, sparsity 0.5, model=b" in titles


def test_search_writes_a_config_that_prune_takes(tmp_path, tiny_bert_dir, data):
    search = {
        "base": {"preset": "cofi"},
        "seeds": [0],
        "space": {"prune.gate_lr": {"low": 0.01, "high": 0.1, "log": True}},
    }
    spec, out = _spec(tmp_path, tiny_bert_dir, data, search=search), tmp_path / "study"
    assert main(["study", str(spec), "--out", str(out), "--smoke", "--search", "2"]) == 0
    best = out / "best-config.yaml"
    cfg = yaml.safe_load(best.read_text())
    assert cfg["preset"] == "cofi" and 0.01 <= cfg["prune"]["gate_lr"] <= 0.1
    run = tmp_path / "run"
    assert main(["prune", "--config", str(best), "--smoke", "--out", str(run)]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # the searched cell's whole setup, not only the searched value
    searched = [yaml.safe_load(p.read_text()) for p in (out / "runs").glob("search-*/config.yaml")]
    twin = next(c for c in searched if c["prune"]["gate_lr"] == cfg["prune"]["gate_lr"])
    for section in ("model", "data", "prune", "transfer", "distill"):
        assert saved[section] == twin[section], section
    assert saved["prune"]["sparsity"] == 0.5 and saved["data"]["budget"] == 60
    # a second --search continues instead of repeating the first trials
    first = sorted(c["prune"]["gate_lr"] for c in searched)
    assert main(["study", str(spec), "--out", str(out), "--smoke", "--search", "1"]) == 0
    again = sorted(yaml.safe_load(p.read_text())["prune"]["gate_lr"]
                   for p in (out / "runs").glob("search-*/config.yaml"))  # fmt: skip
    assert len(again) == 3 and len(set(again)) == 3 and set(first) < set(again)


@pytest.mark.slow
def test_report_html_renders_every_figure_in_headless_chromium(tmp_path):
    """Opens report.html in Debian's chromium (headless) and checks that every <img> decoded
    (naturalWidth > 0) in the rendered DOM."""
    import shutil

    from tlprune.study.report import Row, StudyData, write_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt install chromium)")
    rows = [Row(f"{m}_s{s}", m, "t", 64, None if m == "dense" else sp, s, 0.7, 0.6 + 0.01 * s,
                [1, 0, 1], speedup=None if m == "dense" else 1 / (1 - sp))
            for m in ("dense", "small") for s in range(3) for sp in (0.5, 0.8)]  # fmt: skip
    path = write_report(StudyData("html", "recipe", ["dense"], {}, rows, {}), tmp_path)
    page = path / "report.html"
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace(
        "</body>",
        "<script>window.onload=()=>{const i=[...document.images];document.title="
        "'IMAGES '+i.length+' OK '+i.filter(x=>x.complete&&x.naturalWidth>0).length}</script>"
        "</body>",
    ))  # fmt: skip
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    n = len(list((path / "figures").iterdir()))
    assert n >= 3 and f"<title>IMAGES {n} OK {n}</title>" in dom


SPECS = sorted((Path(__file__).parent.parent / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_loads_and_names_known_presets(path):
    from tlprune.study import load_spec

    spec = load_spec(path)
    for stage in spec.stages:
        cells = spec.cells(stage, winners=[] if stage.winners_from else None)
        assert cells and len({c.name for c in cells}) == len(cells)


def test_selection_table_pairs_each_rule_with_dev_loss_within_runs():
    """Rules kept on one trajectory are compared run by run (hand-computed t interval), per
    target and pooled; runs without a selection record add no rows."""
    from scipy import stats

    from tlprune.study.report import Row, StudyData, tables

    rows, diffs = [], []
    for target in ("a", "b"):
        for seed in range(3):
            gain = 0.01 * (seed + 1) * (1 if target == "a" else 2)
            diffs.append(100 * gain)
            base = 0.7 + 0.03 * seed - 0.05 * (target == "b")  # runs differ: pairing matters
            sel = {"dev_loss": {"step": 40, "dev": 0.7, "test": base},
                   "agreement": {"step": 60, "dev": 0.68, "test": base + gain}}  # fmt: skip
            rows.append(Row(f"t_{target}{seed}", "transfer", target, 64, 0.8, seed, 0.7, 0.75,
                            selection=sel))  # fmt: skip
            rows.append(Row(f"f_{target}{seed}", "finetune", target, 64, None, seed, 0.7, 0.8))
    rows = rows[::-1]  # the order of the store's rows does not pair them
    tabs = {t: (h, b) for t, h, b in tables(StudyData("s", "recipe", ["finetune"], {}, rows, {}))}
    header, body = tabs["checkpoint selection within runs (one trajectory, each rule's kept state)"]
    by = {(r[0].split(",")[0], r[2]): dict(zip(header, r, strict=True)) for r in body}
    assert {r[1] for r in body} == {"transfer"}
    pooled = by[("pooled", "agreement")]
    lo, hi = stats.t.interval(0.95, 5, loc=np.mean(diffs), scale=stats.sem(diffs))
    want = f"{np.mean(diffs):+.1f} [{lo:+.1f}, {hi:+.1f}] (n=6)"
    assert pooled["test vs dev_loss: t 95%"] == want
    assert pooled["dev vs dev_loss: t 95%"] == "-2.0 (n=6)"  # no spread: no interval
    assert by[("a", "agreement")]["steps kept"] == "60,60,60"
    assert {r[0] for r in body} == {"a, budget 64, sparsity 0.8", "b, budget 64, sparsity 0.8",
                                    "pooled"}  # fmt: skip
    assert by[("a", "dev_loss")]["test vs dev_loss: t 95%"] == "-"


def test_cell_result_keeps_each_selection_rule(tmp_path):
    from tlprune.study.runner import cell_result

    picks = (("dev_loss", 8, 0.7, 0.75), ("agreement", 12, 0.68, 0.78))
    rules = {r: {"step": s, "dev": {"accuracy": d, "loss": 0.5}, "heldout": {"kl": 0.1},
                 "test": {"accuracy": t, "loss": 0.4}} for r, s, d, t in picks}  # fmt: skip
    report = {"dev": {"final": {"accuracy": 0.7, "loss": 0.5}}, "test": {"accuracy": 0.75},
              "selection": {"kept": "dev_loss", "rules": rules}}  # fmt: skip
    (tmp_path / "prune_report.json").write_text(json.dumps(report))
    got = cell_result(tmp_path)["selection"]
    assert got == {"dev_loss": {"step": 8, "dev": 0.7, "test": 0.75},
                   "agreement": {"step": 12, "dev": 0.68, "test": 0.78}}  # fmt: skip


def test_a_trial_finished_by_another_worker_is_not_reported_as_an_error():
    from optuna.exceptions import UpdateFinishedTrialError

    from tlprune.study.runner import handed_out_twice

    assert handed_out_twice(UpdateFinishedTrialError("Trial#46 has already finished"))
    assert handed_out_twice(RuntimeError("Cannot tell a COMPLETE trial."))
    assert not handed_out_twice(RuntimeError("disk full"))


def test_one_thread_of_a_worker_process_takes_a_waiting_trial_at_a_time(
    tmp_path, data, monkeypatch
):
    """SQLite lets two threads both read one waiting trial before either marks it running;
    the second then sat on the cell lock for the whole run. Pops are serialised, so two
    threads run two different cells at once and every cell runs once."""
    import threading

    import optuna

    from tlprune.study import runner as study_runner
    from tlprune.study import store
    from tlprune.study.spec import load_spec

    spec = load_spec(_spec(tmp_path, tmp_path / "model", data))
    out = tmp_path / "study"
    out.mkdir()
    study = store.open_store(spec.name, store.default_url(out), heartbeat=1)
    cells = spec.cells(spec.stages[0], None)
    store.enqueue_missing(study, cells)
    inside, most, lock = [0], [0], threading.Lock()
    pop = optuna.study.Study._pop_waiting_trial_id

    def slow_pop(self):  # make two pops overlap unless the runner serialises them
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.2)
        try:
            return pop(self)
        finally:
            with lock:
                inside[0] -= 1

    ran: list[tuple[str, str]] = []

    def fake_run(self, cell, slot, resume=True, lock=None):
        ran.append((cell.name, threading.current_thread().name))
        time.sleep(0.5)
        return {"dev": 0.5}

    monkeypatch.setattr(optuna.study.Study, "_pop_waiting_trial_id", slow_pop)
    monkeypatch.setattr(study_runner._Runner, "run", fake_run)
    runner = study_runner._Runner(study, spec, out, 2, smoke=True)
    names = {c.name for c in cells}
    threads = [threading.Thread(target=study_runner._worker, args=(study, runner, names, 1),
                                name=f"w{i}", daemon=True) for i in range(2)]  # fmt: skip
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
        assert not th.is_alive()  # a deadlock fails here instead of hanging the suite
    assert most[0] == 1  # never two pops at once
    assert sorted(n for n, _ in ran) == sorted(names)  # each cell once
    assert {t for _, t in ran} == {"w0", "w1"}  # both threads worked
    assert sorted(store.completed(study)) == sorted(names)
