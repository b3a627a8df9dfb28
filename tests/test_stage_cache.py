"""The auxiliary-stage cache key: it follows the code that trains a stage, not a hand-kept
version number, and the stage's own seed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tlprune.config.transfer import TransferConfig
from tlprune.transfer import stage_cache


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A tlprune package of three modules: `a` imports `b` inside a function, `c` stands apart."""
    root = tmp_path / "tlprune"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from .sub import b\n    return b.g()\n")
    (root / "sub" / "b.py").write_text("def g():\n    return 1\n")
    (root / "c.py").write_text("x = 1\n")
    monkeypatch.setattr(stage_cache, "_ROOT", root)
    stage_cache.code_digest.cache_clear()
    yield root
    stage_cache.code_digest.cache_clear()


def test_code_digest_follows_lazy_and_relative_imports(fake_package):
    before = stage_cache.code_digest(("tlprune.a",))
    (fake_package / "c.py").write_text("x = 2\n")  # not imported by the stage's code
    stage_cache.code_digest.cache_clear()
    assert stage_cache.code_digest(("tlprune.a",)) == before
    (fake_package / "sub" / "b.py").write_text("def g():\n    return 2\n")
    stage_cache.code_digest.cache_clear()
    assert stage_cache.code_digest(("tlprune.a",)) != before


def test_stage_modules_cover_the_stage_code():
    """The real closure holds the modules that run a stage (the loop, the branch, the model)."""
    found = stage_cache.stage_modules(stage_cache.STAGE_CODE)
    stage = ("train.aux_stage", "train.engine", "transfer.branch", "transfer.aux", "arch.bert")
    for module in stage:
        assert f"tlprune.{module}" in found, module


def _cfg(seed=0, **transfer):
    from tlprune.config.train import TrainConfig

    tc = TransferConfig(**transfer)
    return SimpleNamespace(
        transfer=tc,
        seed=seed,
        smoke=False,
        model=SimpleNamespace(name="some/hub-id"),
        prune=SimpleNamespace(final=TrainConfig()),
    )


def test_key_follows_code_libraries_and_the_stage_seed(monkeypatch):
    key = stage_cache.stage_key(_cfg(), ["neg", "pos"], [])
    assert stage_cache.stage_key(_cfg(seed=3, stage_seed=0), ["neg", "pos"], []) == key
    assert stage_cache.stage_key(_cfg(stage_seed=1), ["neg", "pos"], []) != key
    monkeypatch.setattr(stage_cache, "code_digest", lambda: "edited")
    assert stage_cache.stage_key(_cfg(), ["neg", "pos"], []) != key
    monkeypatch.undo()
    monkeypatch.setattr(stage_cache, "_libraries", lambda: {"torch": "0.0"})
    assert stage_cache.stage_key(_cfg(), ["neg", "pos"], []) != key
