"""The auxiliary-stage cache key: it follows the code that trains a stage, not a hand-kept
version number, and the stage's own seed; a stage is filed only under the key it began with."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tlprune.config.train import TrainConfig
from tlprune.config.transfer import TransferConfig
from tlprune.transfer import stage_cache

FAKE = {
    "__init__.py": "import typing\nif typing.TYPE_CHECKING:\n    from tlprune import t\n",
    "e.py": "from typing import TYPE_CHECKING\nif not TYPE_CHECKING:\n    from tlprune import c\n",
    "a.py": "def f():\n    from .sub import b\n    return b.g()\n",
    "sub/__init__.py": "",
    "sub/b.py": "from .. import c\nfrom ..sub.deep import d\n",
    "sub/deep/__init__.py": "",
    "sub/deep/d.py": "import tlprune.sub.deep as here\n",
    "c.py": "x = 1\n",
    "t.py": "x = 1\n",  # imported for type checking only
    "alone.py": "x = 1\n",  # imported by nobody
}


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A tlprune package: `a` imports sub.b lazily, b imports c and sub.deep.d relatively."""
    root = tmp_path / "tlprune"
    for name, text in FAKE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.setattr(stage_cache, "_ROOT", root)
    stage_cache.code_digest.cache_clear()
    yield root
    stage_cache.code_digest.cache_clear()


def test_stage_modules_follow_lazy_relative_and_parent_imports(fake_package):
    found = set(stage_cache.stage_modules(("tlprune.a",)))
    assert found == {
        "tlprune",
        "tlprune.a",
        "tlprune.sub",
        "tlprune.sub.b",
        "tlprune.c",
        "tlprune.sub.deep",
        "tlprune.sub.deep.d",
    }


def test_only_a_plain_type_checking_block_is_skipped(fake_package):
    assert set(stage_cache.stage_modules(("tlprune.e",))) == {"tlprune", "tlprune.e", "tlprune.c"}


def test_code_digest_changes_with_the_stage_code_only(fake_package):
    before = stage_cache.code_digest(("tlprune.a",))
    for name in ("alone.py", "t.py"):
        (fake_package / name).write_text("x = 2\n")
        stage_cache.code_digest.cache_clear()
        assert stage_cache.code_digest(("tlprune.a",)) == before, name
    (fake_package / "sub" / "deep" / "d.py").write_text("y = 2\n")
    stage_cache.code_digest.cache_clear()
    assert stage_cache.code_digest(("tlprune.a",)) != before


def test_a_missing_root_is_an_error(fake_package):
    with pytest.raises(RuntimeError, match=r"tlprune\.gone"):
        stage_cache.stage_modules(("tlprune.a", "tlprune.gone"))


def test_stage_modules_cover_the_stage_code():
    """The real closure holds the modules that run a stage (the loop, the branch, the model)."""
    found = stage_cache.stage_modules(stage_cache.STAGE_CODE)
    stage = ("train.dense_stage", "train.aux_stage", "train.engine", "transfer.branch", "arch.bert")
    for module in stage:
        assert f"tlprune.{module}" in found, module


def _cfg(seed=0, **transfer):
    return SimpleNamespace(
        transfer=TransferConfig(coupling="sequential", **transfer),
        seed=seed,
        smoke=False,
        model=SimpleNamespace(name="some/hub-id"),
        prune=SimpleNamespace(final=TrainConfig()),
    )


def _key(cfg, device="cpu"):
    return stage_cache.stage_key(cfg, ["neg", "pos"], [], device)


def test_key_follows_code_libraries_device_and_the_stage_seed(monkeypatch):
    key = _key(_cfg())
    assert _key(_cfg(seed=3, stage_seed=0)) == key
    assert _key(_cfg(stage_seed=1)) != key
    assert _key(_cfg(), device="cuda") != key
    monkeypatch.setattr(stage_cache, "code_digest", lambda: "edited")
    assert _key(_cfg()) != key
    monkeypatch.undo()
    monkeypatch.setattr(stage_cache, "_libraries", lambda: {"torch": "0.0"})
    assert _key(_cfg()) != key


def test_the_key_a_stage_began_under_survives_a_resume(tmp_path):
    """dense_stage files a finished stage only under the key it began with: recorded at the
    start, kept across resumes; a stage that began before keys were recorded has none."""
    work = tmp_path / "run.partial"
    assert stage_cache.began_under(work, "old") == "old"
    (work / "aux_checkpoints").mkdir()
    assert stage_cache.began_under(work, "new") == "old"  # resumed after an edit
    (work / "aux_checkpoints").rmdir()
    (work / "aux_stage.key").write_text("old")  # killed before the stage trained anything:
    assert stage_cache.began_under(work, "new") == "new"  # the new code trains all of it
    other = tmp_path / "older.partial"
    (other / "aux_checkpoints").mkdir(parents=True)
    assert stage_cache.began_under(other, "new") is None
    assert not (other / "aux_stage.key").exists()


def test_a_restored_stage_is_reported_as_cached_across_a_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("TLPRUNE_CACHE", str(tmp_path / "cache"))
    trained = tmp_path / "a" / "aux_stage"
    trained.mkdir(parents=True)
    (trained / "done.json").write_text("{}")
    (trained / "encoder.safetensors").write_text("weights")
    assert not stage_cache.restore("k", trained)  # the run's own stage, trained
    stage_cache.store("k", trained)
    copied = tmp_path / "b" / "aux_stage"
    assert stage_cache.restore("k", copied)  # a later run: copied from the cache
    assert (copied / "encoder.safetensors").read_text() == "weights"
    assert stage_cache.restore("k", copied)  # and still so when that run resumes
    assert not stage_cache.restore("k", trained)
    stage_cache.store("other", copied)  # the marker stays with the run, not the cache
    assert not (stage_cache.entry("other") / stage_cache.RESTORED).exists()


def test_an_alias_is_identified_by_its_files(tmp_path, monkeypatch):
    """A bundled alias is its package's model folder: an upgrade of the package's weights (or
    vocabulary) changes the key."""
    import tlprune.models as models

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "vocab.txt").write_text("a\n")
    monkeypatch.setitem(models.ALIASES, "tiny-alias", ("some_package", "model"))
    monkeypatch.setattr(models, "resolve_model", lambda name: str(folder))
    before = stage_cache._model_identity("tiny-alias")
    assert [f[0] for f in before["files"]] == ["vocab.txt"]
    (folder / "vocab.txt").write_text("a\nb\n")
    assert stage_cache._model_identity("tiny-alias") != before


def test_stage_base_draws_fresh_head_layers_from_the_stage_seed(tmp_path):
    """RoBERTa's classifier dense layer is fresh in a checkpoint without a head; the auxiliary
    head copies it, so it must not follow whatever the process drew before."""
    import torch
    from tests.conftest import tiny_config, tiny_tokenizer
    from transformers import AutoModel

    from tlprune.train.dense_stage import stage_base

    path = tmp_path / "roberta-no-head"
    AutoModel.from_config(tiny_config("roberta")).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    cfg = SimpleNamespace(
        model=SimpleNamespace(name=str(path)),
        seed=0,
        transfer=TransferConfig(coupling="sequential"),
    )

    def dense(draw_first: int):
        torch.manual_seed(draw_first)
        before = torch.random.get_rng_state()
        model = stage_base(cfg, ["neg", "pos"])
        assert torch.equal(torch.random.get_rng_state(), before)  # the stream is left alone
        return model.classifier.dense.weight.detach().clone()

    own = dense(1)
    assert torch.equal(own, dense(2))
    cfg.transfer = TransferConfig(coupling="sequential", stage_seed=5)
    assert torch.equal(dense(1), dense(3)) and not torch.equal(dense(1), own)
