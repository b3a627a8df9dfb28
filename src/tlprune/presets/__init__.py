"""Named presets: readable YAML files of config overrides, one per method (a small registry).

`tlprune prune --preset NAME` applies `NAME.yaml` on top of the defaults; `--config FILE`,
flags and dotted overrides then apply on top of the preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tlprune.config import RunConfig, from_dict, merge, to_dict
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


def preset_config(name: str) -> RunConfig:
    """The defaults with preset `name` applied: a RunConfig to edit and pass to tlprune.prune."""
    return from_dict(RunConfig, merge(to_dict(RunConfig()), preset_dict(name)))
