"""No coupling: the target alone (cofi, cofi-distill and the fisher presets)."""

from __future__ import annotations

from typing import Any

from tlprune.config.transfer import TransferConfig
from tlprune.transfer.couplings.base import (
    refuse_adapt,
    refuse_penalties,
    refuse_reprune,
    refuse_warm,
)


class NoCoupling:
    name = "none"
    aux_stage = branch_in_prune = ties_weights = penalty = False

    def check(self, tc: TransferConfig, prune: Any) -> None:
        refuse_penalties(tc)
        refuse_warm(tc)
        refuse_adapt(tc)
        refuse_reprune(tc)
