"""Sequential coupling, presets stilts and sequential: the auxiliary branch trains alone first
(dense, or pruned to its own target), then the target starts from its weights (and masks:
fixed_masks ships them, reprune starts the target's gates from them)."""

from __future__ import annotations

from typing import Any

from tlprune.config.transfer import TransferConfig
from tlprune.errors import ConfigError
from tlprune.transfer.couplings.base import refuse_adapt, refuse_penalties, refuse_warm
from tlprune.transfer.groups import check_mask_kinds


class Sequential:
    name = "sequential"
    aux_stage = True
    branch_in_prune = False
    ties_weights = False
    penalty = False

    def check(self, tc: TransferConfig, prune: Any) -> None:
        refuse_penalties(tc)
        refuse_warm(tc)
        refuse_adapt(tc)
        if tc.variant == "reprune" and (not tc.aux_prune or not tc.masks):
            raise ConfigError(
                "variant reprune needs coupling sequential, aux_prune: true and the gate kinds "
                "to carry in transfer.masks"
            )
        if tc.aux_prune and prune.gate_init == "fisher":
            raise ConfigError(
                "prune.gate_init=fisher would replace what the pruned auxiliary stage gives the "
                "target (its masks, or its gates' start): leave gate_init at uniform, or set "
                "transfer.aux_prune: false"
            )
        if tc.aux_prune and tc.variant == "fixed_masks":
            missing = [k for k in prune.kinds if k not in check_mask_kinds(tc.masks)]
            if missing:
                raise ConfigError(
                    f"fixed_masks ships the auxiliary's whole structure: transfer.masks must "
                    f"cover every pruned kind (missing {missing}); use masks: [all]"
                )
            if tc.aux_sparsity is not None and tc.aux_sparsity != prune.sparsity:
                raise ConfigError(
                    "fixed_masks ships the auxiliary's masks, so they must meet the target's "
                    "budget: leave transfer.aux_sparsity empty (or equal to prune.sparsity)"
                )
