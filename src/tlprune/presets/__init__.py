"""Named presets: readable YAML files of config overrides, one per method (a small registry).

`tlprune prune --preset NAME` applies `NAME.yaml` on top of the defaults; `--config FILE`,
flags and dotted overrides then apply on top of the preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tlprune.config import RunConfig, build_config, load_yaml
from tlprune.errors import ConfigError

PRESET_DIR = Path(__file__).parent


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_dict(name: str) -> dict[str, Any]:
    """The overrides of preset `name`, with `preset: name` set."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}: choose from {available()}")
    data = yaml.safe_load(path.read_text()) or {}
    data["preset"] = name
    return data


def resolve(
    name: str | None = None,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The one place a run's config is resolved: defaults < preset < config file < flags <
    dotted overrides. The preset is `name`, else the config file's `preset`, else cofi."""
    if name is None and config_file is not None:
        name = load_yaml(config_file).get("preset")
    return build_config(RunConfig, config_file, flags, overrides, base=preset_dict(name or "cofi"))


def preset_config(name: str) -> RunConfig:
    """The defaults with preset `name` applied: a RunConfig to edit and pass to tlprune.prune."""
    return resolve(name)
