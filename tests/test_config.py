import pytest

from tlprune.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    build_config,
    from_dict,
    parse_overrides,
    save_config,
)
from tlprune.errors import ConfigError


def test_defaults_roundtrip(tmp_path):
    cfg = RunConfig()
    save_config(cfg, tmp_path / "c.yaml")
    assert build_config(RunConfig, tmp_path / "c.yaml") == cfg


def test_precedence_file_flags_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  budget: 64\ntrain:\n  lr: 1.0e-4\nseed: 3\n")
    cfg = build_config(RunConfig, f, {"seed": 5}, ["train.lr=3e-5", "train.freeze=word_embeddings"])
    assert cfg.data.budget == 64
    assert cfg.seed == 5
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.train.freeze == ["word_embeddings"]


def test_int_accepted_for_float_and_null_for_optional():
    cfg = build_config(RunConfig, overrides=["train.lr=1", "data.budget=null"])
    assert isinstance(cfg.train.lr, float)
    assert cfg.data.budget is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1e-5", "train.lrr"),
        ("nope=1", "nope"),
        ("train.lr=abc", "train.lr"),
        ("train.batch_size=1.5", "train.batch_size"),
        ("train.lr=-1", "train.lr must be positive"),
        ("data.budget=0", "data.budget"),
        ("train.freeze=[pooler]", "train.freeze"),
        ("seed", "key=value"),
        ("transfer.stage_seed=-1", "transfer.stage_seed must be >= 0"),
        ("transfer.stage_seed=3", "coupling none has none"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        build_config(RunConfig, overrides=[override])


def test_unknown_file_key_and_missing_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  budgett: 64\n")
    with pytest.raises(ConfigError, match=r"data\.budgett"):
        build_config(RunConfig, f)
    with pytest.raises(ConfigError, match="not found"):
        build_config(RunConfig, tmp_path / "missing.yaml")
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(RunConfig, f)


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}


def test_dataclass_validation():
    with pytest.raises(ConfigError):
        DataConfig(dev_fraction=1.5)
    with pytest.raises(ConfigError):
        TrainConfig(mixed_precision="fp8")
    assert from_dict(TrainConfig, {"epochs": 2}).epochs == 2.0
