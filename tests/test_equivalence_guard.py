"""Equivalence guard: tiny runs of every coupling, recorded once, must stay the same.

Each case trains a tiny model end to end (warm, prune, surgery, final; plus the teacher or the
auxiliary stage where the case has one) with fixed seeds, and compares the final masks, the
small model's weights and every row of the per-step log (losses, expected sparsity, lambdas,
dev metrics) with the recording in tests/golden/. A restructuring of the training code must
leave all of them unchanged.

A case's recording names the CPU's vector ISA it ran on (`CASE.platform.txt`, else
platform.txt): on that ISA the comparison is bit for bit, elsewhere within 1e-5.

Re-record (only when a change of results is intended, and say why in the commit):
    TLPRUNE_RECORD_GOLDEN=1 python -m pytest tests/test_equivalence_guard.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.conftest import make_tiny_model_dir
from tests.test_prune_job import sentiment_csv, tiny_cfg
from tests.test_transfer import aux_csv

from tlprune.train.fisher_job import run_fisher
from tlprune.train.prune_job import run_prune

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("TLPRUNE_RECORD_GOLDEN") == "1"

# the auxiliary given as a file placeholder, filled in by the test
CASES: dict[str, tuple[str, ...]] = {
    "cofi": (),
    "cofi-distill": ("distill.enabled=true", "train.max_steps=2"),
    "shared": (
        "transfer.coupling=shared",
        "transfer.aux=[{source: AUX}, {source: target, task: mlm}]",
        "transfer.aux_prune=false",
    ),
    "soft": (
        "transfer.coupling=soft",
        "transfer.aux=[{source: AUX}]",
        "transfer.aux_prune=true",
        "transfer.beta.value=0.01",
        "transfer.gamma.value=0.1",
    ),
    "sequential": (
        "transfer.coupling=sequential",
        "transfer.variant=fixed_masks",
        "transfer.aux=[{source: AUX}]",
        "transfer.aux_prune=true",
        "transfer.masks=[all]",
        "transfer.aux_stage.max_steps=4",
    ),
    "stilts": (
        "transfer.coupling=sequential",
        "transfer.aux=[{source: AUX}]",
        "transfer.aux_prune=false",
        "transfer.aux_stage.max_steps=3",
    ),
    # the retraining-free job: fisher-ft, and the transfer preset's recipe
    "fisher-ft": ("prune.method=fisher", "fisher.final=true", "train.max_steps=3"),
    "fisher-transfer": (
        "prune.method=fisher",
        "fisher.final=true",
        "fisher.layer_floor=0.5",
        "fisher.score_unlabelled=false",
        "data.unlabelled=[target-train]",
        "transfer.coupling=sequential",
        "transfer.aux=[{source: AUX}]",
        "transfer.aux_stage.max_steps=3",
        "transfer.cache_stage=false",
        "train.max_steps=3",
    ),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Float sums depend on how the work is split between threads: record and compare on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _platform_file(case: str) -> Path:
    """Where the CPU's vector ISA of a case's recording is kept (platform.txt: the default)."""
    own = GOLDEN / f"{case}.platform.txt"
    return own if own.is_file() or RECORD else GOLDEN / "platform.txt"


def _same_platform(case: str) -> bool:
    recorded = _platform_file(case).read_text().strip()
    return recorded == torch.backends.cpu.get_cpu_capability()


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-5 * max(1.0, abs(a))
    return a == b


def _compared(key: str) -> bool:
    """Whether a tensor is compared across platforms (key biases are not; see below)."""
    return not key.endswith("attention.key.bias")


def _log_rows(out: Path, aux: Path) -> list[dict]:
    """The per-step log, with the auxiliary's temporary path (part of its loss's name) as AUX."""
    text = (out / "log.jsonl").read_text().replace(str(aux), "AUX")
    return [json.loads(x) for x in text.splitlines()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiny_run_matches_its_recording(tmp_path, case):
    model_dir = make_tiny_model_dir(tmp_path / "model", seed=0)
    data = sentiment_csv(tmp_path / "d.csv")
    aux = aux_csv(tmp_path / "aux.csv")
    extra = [x.replace("AUX", str(aux)) for x in CASES[case]]
    run = run_fisher if "prune.method=fisher" in extra else run_prune
    result = run(tiny_cfg(model_dir, data, tmp_path / "run", *extra))
    masks = load_file(result.out_dir / "masks.safetensors")
    weights = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    rows = _log_rows(result.out_dir, aux)
    tensors = {f"masks.{k}": v for k, v in masks.items()}
    tensors |= {f"weights.{k}": v for k, v in weights.items()}
    golden_t, golden_log = GOLDEN / f"{case}.safetensors", GOLDEN / f"{case}.log.json"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        save_file(tensors, golden_t)
        golden_log.write_text(json.dumps(rows, indent=0) + "\n")
        _platform_file(case).write_text(torch.backends.cpu.get_cpu_capability() + "\n")
        pytest.skip(f"recorded {golden_t.name}")
    want, want_rows = load_file(golden_t), json.loads(golden_log.read_text())
    assert sorted(want) == sorted(tensors), "the run saved other masks or weights"
    # bit for bit where the recording's CPU kernels ran (same vector ISA); elsewhere the
    # vectorised float sums may round differently: masks exact, numbers within 1e-5
    exact = _same_platform(case)
    same = torch.equal if exact else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # a key bias adds the same q.b to every score of a query, which softmax ignores: its
    # gradient is rounding noise, which Adam scales up to lr-sized steps of either sign, so
    # only where the kernels round alike (exact) can it be compared
    changed = [k for k in want if not same(want[k], tensors[k]) and (exact or _compared(k))]
    changed += [k for k in want if k.startswith("masks.") and not torch.equal(want[k], tensors[k])]
    assert not changed, f"{case}: {len(changed)} tensors changed, e.g. {changed[:4]}"
    if exact:
        assert want_rows == rows, f"{case}: the per-step log changed"
    else:
        assert len(want_rows) == len(rows) and all(map(_close, want_rows, rows)), case
