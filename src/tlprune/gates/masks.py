"""Final binary masks that hit the size budget exactly (docs/method.md).

budget = floor((1 - t) * full_size). The masks keep at most `budget` prunable parameters and
less than one FFN unit's count below it:

1. Each kind keeps round(sum of keep probs) units, CoFi's deterministic rule, applied per layer
   for heads and FFN units (layer gates mha/ffn stay open when p >= 0.5; hidden: over all d),
   choosing the units with the highest keep probability (ties: the lower index). A head under
   a closed mha gate, or an FFN unit under a closed ffn gate, is gone.
2. Then FFN units are added or removed, ranked by p_unit * p_ffn (their parent's keep prob),
   until kept <= budget < kept + one FFN unit (at the kept hidden width). Units are added to
   open FFN sublayers first; only when those are full does a unit reopen a closed sublayer.
3. Fallbacks, each reported in `notes` (and logged): if removing every FFN unit is not enough,
   heads are removed by p_head * p_mha; if every FFN unit is in and the budget still has room,
   heads are added (reopening mha sublayers) and the overshoot trimmed with FFN units; if the
   budget exceeds what the kept hidden width can hold, hidden dims are added (by keep prob),
   and if the units that cannot be removed do not fit, hidden dims are removed. Each step runs
   at most once (widen hidden; remove FFN units, heads, hidden dims; add FFN units, heads,
   trim FFN units): no loop can spin. What stays out of reach is said in `notes`.

With the ffn_unit kind disabled, heads are the finest unit and the lower bound is one head.
Kinds missing from `keep_probs` are always open and never adjusted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tlprune.gates.size import GateConfigError, UnitSizes, check_gates, exact_size

log = logging.getLogger(__name__)


@dataclass
class FinalMasks:
    """Binary masks (float 0/1, gate shapes, enabled kinds only) and what they achieve."""

    masks: dict[str, Tensor]
    size: int  # prunable parameters kept
    budget: int  # floor((1 - target) * full_size)
    target: float
    sparsity: float  # achieved: 1 - size / full_size
    notes: list[str] = field(default_factory=list)


def _rank_positions(score: Tensor) -> Tensor:
    """Position of each element in the order (score descending, index ascending)."""
    order = torch.sort(score, descending=True, stable=True).indices
    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel())
    return pos


def _top_per_row(p: Tensor, counts: Tensor) -> Tensor:
    """Bool mask keeping the `counts[i]` highest entries of each row of `p` (ties: low index)."""
    order = torch.sort(p, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p.shape[1]).expand_as(order).contiguous())
    return rank < counts[:, None]


def _round_half_up(x: Tensor) -> Tensor:
    return torch.floor(x + 0.5).long()


class _Pool:
    """A kind of equal-size units (heads or FFN units) under per-layer parent gates."""

    def __init__(self, keep: Tensor, parent: Tensor, p: Tensor, p_parent: Tensor) -> None:
        self.rows, self.cols = keep.shape
        self.keep = (keep & parent[:, None]).flatten()
        self.parent = parent.clone()
        self.pos = _rank_positions((p * p_parent[:, None]).flatten())

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def free(self) -> int:
        return self.keep.numel() - self.kept

    def remove(self, k: int) -> None:
        """Drop the `k` kept units that rank lowest."""
        if k <= 0:
            return
        cand = self.keep.nonzero().flatten()
        drop = cand[torch.argsort(self.pos[cand], descending=True)[:k]]
        self.keep[drop] = False

    def add(self, k: int) -> None:
        """Add the `k` best free units: those in open sublayers first, reopening others last."""
        if k <= 0:
            return
        cand = (~self.keep).nonzero().flatten()
        closed = ~self.parent[cand // self.cols]
        key = self.pos[cand] + closed.long() * self.keep.numel()
        take = cand[torch.argsort(key)[:k]]
        self.keep[take] = True
        self.parent[take // self.cols] = True

    def mask(self) -> Tensor:
        return self.keep.view(self.rows, self.cols)


def final_masks(
    keep_probs: Mapping[str, Tensor],
    sizes: UnitSizes,
    target_sparsity: float,
    hidden_multiple: int = 1,
) -> FinalMasks:
    """Binary masks for the enabled kinds (the keys of `keep_probs`) that meet the budget.

    `hidden_multiple` > 1 keeps a hidden width that is a multiple of it (or the full width),
    the one nearest to what the keep probabilities chose:
    matmuls over odd widths run at half speed on CPU (benchmarks/round_hidden.py); FFN units
    then fill the budget as usual."""
    if not 0.0 <= target_sparsity < 1.0:
        raise GateConfigError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    if hidden_multiple < 1:
        raise GateConfigError(f"hidden_multiple must be >= 1, got {hidden_multiple}")
    check_gates(keep_probs, sizes)
    device = next((v.device for v in keep_probs.values()), torch.device("cpu"))
    p = {k: v.detach().to("cpu", torch.float64) for k, v in keep_probs.items()}
    for kind, value in p.items():
        if not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError(f"keep probabilities of {kind!r} must lie in [0, 1]")
    enabled = set(p)
    for kind in ("head", "mha", "ffn_unit", "ffn", "hidden"):
        p.setdefault(kind, torch.ones(sizes.shape(kind), dtype=torch.float64))

    # 1. CoFi's deterministic rule: round(sum of keep probs) per layer / over hidden.
    def top(kind: str) -> Tensor:
        rows = p[kind] if p[kind].dim() == 2 else p[kind][None]
        return _top_per_row(rows, _round_half_up(rows.sum(1))).view(p[kind].shape)

    mha, ffn = p["mha"] >= 0.5, p["ffn"] >= 0.5
    heads = _Pool(top("head"), mha, p["head"], p["mha"])
    units = _Pool(top("ffn_unit"), ffn, p["ffn_unit"], p["ffn"])
    hidden = top("hidden")

    budget = math.floor((1.0 - target_sparsity) * sizes.full_size)
    notes: list[str] = []
    adj_heads, adj_units = "head" in enabled, "ffn_unit" in enabled

    has_hidden = "hidden" in enabled
    hidden_order = torch.sort(p["hidden"], descending=True, stable=True).indices

    def width() -> int:
        return int(hidden.sum())

    def snap(d: int, up: bool) -> int:
        """The nearest allowed width at or below (above) d."""
        m = hidden_multiple
        if m == 1 or d >= sizes.hidden or d % m == 0:
            return d
        if up:
            return min(sizes.hidden, -(-d // m) * m)
        return d - d % m if d >= m else d

    def set_width(new: int, why: str | None) -> None:
        old = width()
        hidden[:] = False
        hidden[hidden_order[:new]] = True
        if why is not None:
            change = "added" if new > old else "removed"
            notes.append(f"{change} {abs(new - old)} hidden dims: {why}")

    if has_hidden and snap(width(), up=False) != width():
        # a configured rounding, not a fallback: to the nearest allowed width (ties down);
        # FFN units then absorb the difference in size
        down, up_ = snap(width(), up=False), snap(width(), up=True)
        set_width(up_ if up_ - width() < width() - down else down, None)

    def size() -> int:
        d = width()
        return heads.kept * sizes.head_params(d) + units.kept * sizes.ffn_unit_params(d)

    def fitting_width(n_h: int, n_f: int) -> tuple[int, int]:
        """(slope, const): n_h heads and n_f units at width d hold slope * d + const."""
        return 4 * sizes.head_size * n_h + 2 * n_f, 3 * sizes.head_size * n_h + n_f

    # Widen hidden only when every adjustable head and unit could not fill the budget.
    if has_hidden and width() < sizes.hidden:
        n_h = heads.keep.numel() if adj_heads else heads.kept
        n_f = units.keep.numel() if adj_units else units.kept
        slope, const = fitting_width(n_h, n_f)
        if slope > 0 and slope * width() + const < budget:
            new = snap(min(sizes.hidden, -(-(budget - const) // slope)), up=True)
            set_width(new, f"{width()} could not hold the budget {budget}")

    def up() -> int:
        return sizes.ffn_unit_params(width())

    def hp() -> int:
        return sizes.head_params(width())

    if size() > budget and adj_units:
        units.remove(min(-(-(size() - budget) // up()), units.kept))
    if size() > budget and adj_heads:
        k = min(-(-(size() - budget) // hp()), heads.kept)
        heads.remove(k)
        notes.append(f"removed {k} heads: removing every FFN unit did not meet the budget")
    if size() > budget and has_hidden:
        slope, const = fitting_width(heads.kept, units.kept)
        if const <= budget:
            new = snap(min(width(), (budget - const) // slope), up=False)
            set_width(new, "the units left did not fit")
    if budget - size() >= up() and adj_units:
        units.add(min((budget - size()) // up(), units.free))
    if budget - size() >= (up() if adj_units else hp()) and adj_heads and heads.free:
        gap = budget - size()
        k = min(-(-gap // hp()) if adj_units else gap // hp(), heads.free)
        heads.add(k)
        notes.append(f"added {k} heads: every FFN unit was in and the budget had room")
        if size() > budget and adj_units:
            units.remove(min(-(-(size() - budget) // up()), units.kept))

    masks_all = {
        "head": heads.mask(),
        "mha": heads.parent,
        "ffn_unit": units.mask(),
        "ffn": units.parent,
        "hidden": hidden,
    }
    masks = {k: masks_all[k].to(device=device, dtype=torch.float32) for k in p if k in enabled}
    kept = exact_size(masks, sizes)
    assert kept == size(), (kept, size())
    step = up() if adj_units else hp()
    if kept > budget:
        notes.append(f"cannot meet the budget {budget} with the enabled kinds: kept {kept}")
    elif (adj_units or adj_heads) and budget - kept >= step:
        notes.append(f"kept {kept} is {budget - kept} below the budget {budget}")
    for note in notes:
        log.warning("final masks: %s", note)
    return FinalMasks(
        masks=masks,
        size=kept,
        budget=budget,
        target=target_sparsity,
        sparsity=1.0 - kept / sizes.full_size,
        notes=notes,
    )
