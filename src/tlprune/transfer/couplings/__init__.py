"""The couplings, one file each, in a registry: `coupling_of(tc)` is the object a run asks
what to build (an auxiliary stage, a branch in the prune phase, tied weights, penalties) and
that checks the settings only it reads."""

from __future__ import annotations

from typing import Any

from tlprune.config.transfer import COUPLINGS as NAMES
from tlprune.config.transfer import TransferConfig
from tlprune.registry import Registry
from tlprune.transfer.couplings.base import Coupling
from tlprune.transfer.couplings.none import NoCoupling
from tlprune.transfer.couplings.sequential import Sequential
from tlprune.transfer.couplings.shared import Shared
from tlprune.transfer.couplings.soft import Soft

COUPLINGS: Registry[Coupling] = Registry("coupling")
for _c in (NoCoupling(), Shared(), Soft(), Sequential()):
    COUPLINGS.register(_c.name, _c)
assert tuple(COUPLINGS) == NAMES, "the config's coupling names and these must agree"


def coupling_of(tc: TransferConfig) -> Coupling:
    return COUPLINGS.get(tc.coupling)


def check_transfer(tc: TransferConfig, prune: Any) -> None:
    """Before a run: the coupling's own settings, then those every coupling shares."""
    coupling_of(tc).check(tc, prune)
    tc.check_common(prune)


__all__ = ["COUPLINGS", "Coupling", "check_transfer", "coupling_of"]
