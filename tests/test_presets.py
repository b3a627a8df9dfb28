"""Every shipped preset loads, and holds only what differs from the defaults."""

import pytest

from tlprune.config import RunConfig, to_dict
from tlprune.presets import available, preset_config, preset_dict


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


@pytest.mark.parametrize("name", available())
def test_preset_loads_and_states_only_its_differences(name):
    cfg = preset_config(name)
    assert cfg.preset == name
    defaults = to_dict(RunConfig())
    same = [
        key
        for key, value in _leaves({k: v for k, v in preset_dict(name).items() if k != "preset"})
        if not key.startswith("transfer.aux") and _get(defaults, key) == value
    ]
    assert not same, f"{name}: {same} repeat the defaults"


def test_the_shipped_presets():
    expected = {"cofi", "cofi-distill", "finetune", "fisher", "fisher-ft", "fisher-stilts"}
    expected |= {"fisher-gates"}
    expected |= {"joint", "sequential", "soft", "stilts", "transfer"}
    assert set(available()) == expected
