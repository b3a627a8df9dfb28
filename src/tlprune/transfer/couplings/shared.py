"""Shared (hard) coupling, preset joint: one encoder and one set of masks for all tasks; the
auxiliary heads sit beside the target's, L = L_T + alpha * L_A (transfer/branch.py)."""

from __future__ import annotations

from typing import Any

from tlprune.config.transfer import TransferConfig
from tlprune.transfer.couplings.base import refuse_adapt, refuse_penalties, refuse_reprune


class Shared:
    name = "shared"
    aux_stage = False
    branch_in_prune = True
    ties_weights = True
    penalty = False

    def check(self, tc: TransferConfig, prune: Any) -> None:
        refuse_penalties(tc)
        refuse_reprune(tc)
        if not tc.weights:  # adapt scales the auxiliary gradient on the shared weights
            refuse_adapt(tc)
