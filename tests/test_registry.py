"""The registry type every pluggable part uses, and the registries built on it."""

import pytest

from tlprune.errors import ConfigError
from tlprune.registry import Registry


def test_a_name_registered_twice_fails_and_an_unknown_one_is_one_line():
    r: Registry[int] = Registry("widget")
    r.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        r.register("a", 2)
    assert r.get("a") == 1 and r["a"] == 1 and "a" in r and list(r) == ["a"] and len(r) == 1
    with pytest.raises(ConfigError, match=r"unknown widget 'b': choose from \['a'\]"):
        r.get("b")


def test_every_registry_uses_the_type():
    from tlprune.arch.base import ADAPTERS
    from tlprune.bench.backends import BACKENDS
    from tlprune.data.bundled import REGISTRY
    from tlprune.transfer.couplings import COUPLINGS
    from tlprune.transfer.schedules import SCHEDULES

    for reg in (ADAPTERS, BACKENDS, REGISTRY, COUPLINGS, SCHEDULES):
        assert isinstance(reg, Registry) and len(reg) > 0
    assert list(COUPLINGS) == ["none", "shared", "soft", "sequential"]
    assert COUPLINGS["sequential"].aux_stage and COUPLINGS["shared"].ties_weights
    assert COUPLINGS["soft"].penalty and not COUPLINGS["none"].branch_in_prune
