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


class _Width:
    """The kept hidden dims: the `width` best by keep probability, snapped to a multiple."""

    def __init__(self, mask: Tensor, probs: Tensor, full: int, multiple: int, notes: list[str]):
        self.mask, self.full, self.multiple, self.notes = mask, full, multiple, notes
        self.order = torch.sort(probs, descending=True, stable=True).indices

    @property
    def value(self) -> int:
        return int(self.mask.sum())

    def snap(self, d: int, up: bool) -> int:
        """The nearest allowed width at or below (above) d."""
        m = self.multiple
        if m == 1 or d >= self.full or d % m == 0:
            return d
        if up:
            return min(self.full, -(-d // m) * m)
        return d - d % m if d >= m else d

    def set(self, new: int, why: str | None) -> None:
        old = self.value
        self.mask[:] = False
        self.mask[self.order[:new]] = True
        if why is not None:
            change = "added" if new > old else "removed"
            self.notes.append(f"{change} {abs(new - old)} hidden dims: {why}")

    def round(self) -> None:
        """A configured rounding, not a fallback: to the nearest allowed width (ties down);
        FFN units then absorb the difference in size."""
        d = self.value
        down, up = self.snap(d, up=False), self.snap(d, up=True)
        if down != d:
            self.set(up if up - d < d - down else down, None)


class _Fit:
    """Heads, FFN units and hidden width adjusted, in a fixed order of fallbacks, until the
    exact size meets the budget (and is less than one step below it)."""

    def __init__(self, heads, units, width: _Width | None, sizes, budget, enabled, notes):
        self.heads, self.units, self.width, self.sizes = heads, units, width, sizes
        self.budget, self.notes = budget, notes
        self.adj_heads, self.adj_units = "head" in enabled, "ffn_unit" in enabled

    def d(self) -> int:
        return self.width.value if self.width is not None else self.sizes.hidden

    def size(self) -> int:
        d = self.d()
        return self.heads.kept * self.sizes.head_params(d) + self.units.kept * self.up()

    def up(self) -> int:
        return self.sizes.ffn_unit_params(self.d())

    def hp(self) -> int:
        return self.sizes.head_params(self.d())

    def line(self, n_h: int, n_f: int) -> tuple[int, int]:
        """(slope, const): n_h heads and n_f units at width d hold slope * d + const."""
        dh = self.sizes.head_size
        return 4 * dh * n_h + 2 * n_f, 3 * dh * n_h + n_f

    def widen(self) -> None:
        """Widen hidden only when every adjustable head and unit could not fill the budget."""
        w, heads, units = self.width, self.heads, self.units
        if w is None or w.value >= self.sizes.hidden:
            return
        n_h = heads.keep.numel() if self.adj_heads else heads.kept
        n_f = units.keep.numel() if self.adj_units else units.kept
        slope, const = self.line(n_h, n_f)
        if slope > 0 and slope * w.value + const < self.budget:
            new = w.snap(min(self.sizes.hidden, -(-(self.budget - const) // slope)), up=True)
            w.set(new, f"{w.value} could not hold the budget {self.budget}")

    def cut(self) -> None:
        """Over the budget: FFN units first, then heads, then hidden dims."""
        budget, heads, units = self.budget, self.heads, self.units
        if self.size() > budget and self.adj_units:
            units.remove(min(-(-(self.size() - budget) // self.up()), units.kept))
        if self.size() > budget and self.adj_heads:
            k = min(-(-(self.size() - budget) // self.hp()), heads.kept)
            heads.remove(k)
            self.notes.append(f"removed {k} heads: removing every FFN unit did not meet the budget")
        if self.size() > budget and self.width is not None:
            slope, const = self.line(heads.kept, units.kept)
            if const <= budget:
                new = self.width.snap(min(self.width.value, (budget - const) // slope), up=False)
                self.width.set(new, "the units left did not fit")

    def fill(self) -> None:
        """Room left: FFN units first, then heads (and units out again if a head overshoots)."""
        budget, heads, units = self.budget, self.heads, self.units
        if budget - self.size() >= self.up() and self.adj_units:
            units.add(min((budget - self.size()) // self.up(), units.free))
        step = self.up() if self.adj_units else self.hp()
        if budget - self.size() >= step and self.adj_heads and heads.free:
            gap = budget - self.size()
            k = min(-(-gap // self.hp()) if self.adj_units else gap // self.hp(), heads.free)
            heads.add(k)
            self.notes.append(f"added {k} heads: every FFN unit was in and the budget had room")
            if self.size() > budget and self.adj_units:
                units.remove(min(-(-(self.size() - budget) // self.up()), units.kept))

    def check(self, kept: int) -> None:
        """Say when the result is over the budget or more than one step below it."""
        assert kept == self.size(), (kept, self.size())
        step = self.up() if self.adj_units else self.hp()
        if kept > self.budget:
            self.notes.append(
                f"cannot meet the budget {self.budget} with the enabled kinds: kept {kept}"
            )
        elif (self.adj_units or self.adj_heads) and self.budget - kept >= step:
            self.notes.append(f"kept {kept} is {self.budget - kept} below the budget {self.budget}")


def _probabilities(keep_probs: Mapping[str, Tensor], sizes: UnitSizes) -> dict[str, Tensor]:
    """Checked float64 keep probabilities of every kind (1 for the kinds not enabled)."""
    check_gates(keep_probs, sizes)
    p = {k: v.detach().to("cpu", torch.float64) for k, v in keep_probs.items()}
    for kind, value in p.items():
        if not bool(((value >= 0) & (value <= 1)).all()):
            raise ValueError(f"keep probabilities of {kind!r} must lie in [0, 1]")
    for kind in ("head", "mha", "ffn_unit", "ffn", "hidden"):
        p.setdefault(kind, torch.ones(sizes.shape(kind), dtype=torch.float64))
    return p


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
    device = next((v.device for v in keep_probs.values()), torch.device("cpu"))
    enabled = set(keep_probs)
    p = _probabilities(keep_probs, sizes)

    # 1. CoFi's deterministic rule: round(sum of keep probs) per layer / over hidden.
    def top(kind: str) -> Tensor:
        rows = p[kind] if p[kind].dim() == 2 else p[kind][None]
        return _top_per_row(rows, _round_half_up(rows.sum(1))).view(p[kind].shape)

    heads = _Pool(top("head"), p["mha"] >= 0.5, p["head"], p["mha"])
    units = _Pool(top("ffn_unit"), p["ffn"] >= 0.5, p["ffn_unit"], p["ffn"])
    hidden = top("hidden")
    notes: list[str] = []
    width = _Width(hidden, p["hidden"], sizes.hidden, hidden_multiple, notes)
    if "hidden" in enabled:
        width.round()
    budget = math.floor((1.0 - target_sparsity) * sizes.full_size)
    # 2. the exact budget: widen, cut, fill
    fit = _Fit(heads, units, width if "hidden" in enabled else None, sizes, budget, enabled, notes)
    fit.widen()
    fit.cut()
    fit.fill()
    masks_all = {
        "head": heads.mask(),
        "mha": heads.parent,
        "ffn_unit": units.mask(),
        "ffn": units.parent,
        "hidden": hidden,
    }
    masks = {k: masks_all[k].to(device=device, dtype=torch.float32) for k in p if k in enabled}
    kept = exact_size(masks, sizes)
    fit.check(kept)
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
