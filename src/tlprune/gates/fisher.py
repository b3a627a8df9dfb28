"""Retraining-free masks from the Fisher information of mask variables (Kwon et al. 2022).

Each head and FFN unit gets a mask variable m = 1. The gradient of one example's loss with
respect to m, g, is collected for every example (exactly, in one backward per batch: the masks
carry a batch dimension, so the summed loss's gradient at m[b] is example b's own). The
empirical Fisher I = sum_i g_i g_i^T says how much the loss grows when units are removed:
removing the set Z costs about 1/2 * 1_Z^T I 1_Z. The mask search minimises the diagonal part
of that cost under the parameter budget; the rearrangement then moves units within a layer
where the layer's off-diagonal Fisher says it pays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tlprune.gates.size import UnitSizes


@dataclass
class MaskGrads:
    """Per-example gradients of the loss w.r.t. head masks [N, L, H] and FFN-unit masks
    [N, L, f]."""

    head: Tensor
    ffn_unit: Tensor

    @property
    def examples(self) -> int:
        return self.head.shape[0]

    def diagonal(self) -> dict[str, Tensor]:
        """The diagonal of the empirical Fisher, in gate shapes."""
        return {"head": (self.head**2).sum(0), "ffn_unit": (self.ffn_unit**2).sum(0)}


def _mask_hooks(model, masks: dict[str, list[Tensor]]):
    """Forward-pre hooks that scale each example's head contexts and FFN activations by its
    own mask row (the input of the attention output projection and of W2)."""
    dh = model.config.head_size
    handles = []
    for i, layer in enumerate(model.tlprune.encoder.layers):

        def scale_heads(_module, args, i=i):
            m = masks["head"][i].repeat_interleave(dh, dim=1)  # [B, H * dh]
            return (args[0] * m[:, None, :].to(args[0].dtype),)

        def scale_units(_module, args, i=i):
            return (args[0] * masks["ffn_unit"][i][:, None, :].to(args[0].dtype),)

        handles.append(layer.attention.output.register_forward_pre_hook(scale_heads))
        handles.append(layer.ffn.output.register_forward_pre_hook(scale_units))
    return handles


def collect_mask_grads(model, batches: Iterable[dict], device: torch.device | str = "cpu"):
    """Per-example mask gradients of a dense TlpruneForSequenceClassification over `batches`
    (dicts with input_ids, attention_mask, labels; labels are the model's own predictions for
    unlabelled texts). The model's weights get no gradient and are left unchanged."""
    cfg = model.config
    if not (all(cfg.mha_present) and all(cfg.ffn_present)):
        raise ValueError("Fisher scores need the dense model (every sublayer present)")
    L, H = cfg.num_hidden_layers, cfg.heads_per_layer[0]
    f = cfg.ffn_per_layer[0]
    model.eval()
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    heads, units = [], []
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            n = labels.shape[0]
            masks = {
                "head": [torch.ones(n, H, device=device, requires_grad=True) for _ in range(L)],
                "ffn_unit": [torch.ones(n, f, device=device, requires_grad=True) for _ in range(L)],
            }
            handles = _mask_hooks(model, masks)
            try:
                logits = model(**batch).logits
                loss = F.cross_entropy(logits.float(), labels, reduction="sum")
                grads = torch.autograd.grad(loss, masks["head"] + masks["ffn_unit"])
            finally:
                for h in handles:
                    h.remove()
            heads.append(torch.stack(grads[:L], dim=1).detach().cpu())
            units.append(torch.stack(grads[L:], dim=1).detach().cpu())
    finally:
        for p, r in zip(model.parameters(), was, strict=True):
            p.requires_grad_(r)
    return MaskGrads(head=torch.cat(heads), ffn_unit=torch.cat(units))


def _priority(score: Tensor, floor: int) -> Tensor:
    """Flat indices of score [L, u] in the order the search takes them: every layer's `floor`
    best units first (best first), then all the others by score (ties: the lower index)."""
    ranks = torch.argsort(torch.argsort(score, dim=1, descending=True, stable=True), dim=1)
    reserved = (ranks < floor).flatten()
    flat = score.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices
    return torch.cat([order[reserved[order]], order[~reserved[order]]])


def layer_floor_counts(sizes: UnitSizes, budget: int, floor: float) -> tuple[int, int]:
    """Heads and FFN units every layer keeps at least: `floor` times the budget's average
    fraction of each, rounded down, and at least one head where that fits (floor 0: none)."""
    if floor <= 0:
        return 0, 0
    keep = budget / sizes.full_size
    heads = math.floor(floor * keep * sizes.num_heads)
    units = math.floor(floor * keep * sizes.ffn)
    # at high sparsity the share rounds to no head at all, the very emptying the floor is
    # for: one head per layer then, where one head and the FFN floor of every layer fit
    one = sizes.num_layers * (sizes.head_params() + units * sizes.ffn_unit_params())
    if heads == 0 and one <= budget:
        heads = 1
    return heads, units


def search_masks(
    diag: dict[str, Tensor],
    sizes: UnitSizes,
    budget: int,
    floor: float = 0.0,
    allowed: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Head and FFN-unit masks whose prunable size is <= budget < size + one FFN unit (when
    FFN units are left to add), keeping the most diagonal-Fisher importance: for every number
    of heads n, the n best heads and as many of the best FFN units as the rest of the budget
    holds; the n with the largest kept importance wins. With `floor` > 0 every layer keeps its
    `layer_floor_counts` best heads and units whatever their scores: the diagonal Fisher adds
    up removals one by one and can empty whole layers whose joint removal it does not see.
    `allowed` (0/1 masks in gate shapes): only those units can be kept, e.g. the survivors of
    an earlier step of gradual pruning."""
    hc, uc = sizes.head_params(), sizes.ffn_unit_params()
    min_heads, min_units = layer_floor_counts(sizes, budget, floor)
    layers = diag["head"].shape[0]
    limit = {k: diag[k].numel() for k in ("head", "ffn_unit")}
    if allowed is not None:
        diag, limit = _restrict(diag, allowed, {"head": min_heads, "ffn_unit": min_units})
    head_order = _priority(diag["head"], min_heads)
    unit_order = _priority(diag["ffn_unit"], min_units)
    head_sorted = diag["head"].flatten()[head_order].double()
    unit_sorted = diag["ffn_unit"].flatten()[unit_order].double()
    head_cum = torch.cat([head_sorted.new_zeros(1), head_sorted.cumsum(0)])
    unit_cum = torch.cat([unit_sorted.new_zeros(1), unit_sorted.cumsum(0)])
    best, best_n = None, 0
    for n in range(layers * min_heads, limit["head"] + 1):
        room = budget - n * hc
        if room < 0:
            break
        units = min(room // uc, limit["ffn_unit"])
        if units < layers * min_units:
            break
        kept = head_cum[n] + unit_cum[units]
        if best is None or kept > best:
            best, best_n = kept, n
    if best is None:
        raise ValueError(f"a layer floor of {floor} does not fit in a budget of {budget}")
    n_units = min((budget - best_n * hc) // uc, limit["ffn_unit"])
    return {
        "head": _first(head_order, best_n, diag["head"]),
        "ffn_unit": _first(unit_order, int(n_units), diag["ffn_unit"]),
    }


def _restrict(diag: dict[str, Tensor], allowed: dict[str, Tensor], floors: dict[str, int]):
    """Scores with the units outside `allowed` last (-inf), and how many units may be kept."""
    out, limit = {}, {}
    for kind in ("head", "ffn_unit"):
        keep = allowed[kind].bool()
        if int(keep.sum(1).min()) < floors[kind]:
            raise ValueError(
                f"a layer has fewer allowed {kind}s than the layer floor of {floors[kind]}"
            )
        out[kind] = torch.where(keep, diag[kind], torch.full_like(diag[kind], -math.inf))
        limit[kind] = int(keep.sum())
    return out, limit


def _first(order: Tensor, k: int, like: Tensor) -> Tensor:
    """A 0/1 mask of like's shape keeping the flat indices order[:k]."""
    mask = torch.zeros(like.numel(), dtype=like.dtype)
    mask[order[:k]] = 1.0
    return mask.view_as(like)


def removal_cost(fisher: Tensor, mask: Tensor) -> float:
    """1_Z^T I 1_Z for the removed set Z of one layer's 0/1 `mask` (twice the loss increase)."""
    z = (1 - mask).double()
    return float(z @ fisher.double() @ z)


def rearrange_layer(
    fisher: Tensor, mask: Tensor, max_swaps: int | None = None, allowed: Tensor | None = None
) -> Tensor:
    """Swap kept and removed units of one layer (their number unchanged) while a swap lowers
    1_Z^T I 1_Z, the best swap first: the off-diagonal Fisher, which the search ignores. Only
    units where `allowed` is 1 are brought back."""
    I = fisher.double()  # noqa: E741 - the Fisher matrix
    mask = mask.clone()
    diag = torch.diagonal(I)
    limit = mask.numel() if max_swaps is None else max_swaps
    for _ in range(limit):
        gone = (mask == 0).nonzero().flatten()
        removed = gone if allowed is None else ((mask == 0) & allowed.bool()).nonzero().flatten()
        kept = (mask == 1).nonzero().flatten()
        if removed.numel() == 0 or kept.numel() == 0:
            break
        r = I[:, gone].sum(1)  # I 1_Z
        # bring i back (i in Z), remove j (j kept): the change of 1_Z^T I 1_Z
        out_i = -2 * r[removed] + diag[removed]
        in_j = 2 * r[kept] + diag[kept]
        delta = out_i[:, None] + in_j[None, :] - 2 * I[removed][:, kept]
        best = int(delta.argmin())
        if float(delta.flatten()[best]) >= -1e-12 * max(1.0, float(diag.abs().max())):
            break
        i, j = removed[best // kept.numel()], kept[best % kept.numel()]
        mask[i], mask[j] = 1.0, 0.0
    return mask


def rearrange(
    grads: MaskGrads,
    masks: dict[str, Tensor],
    max_swaps: int | None = None,
    allowed: dict[str, Tensor] | None = None,
):
    """`rearrange_layer` on every layer's heads and FFN units (bringing back only `allowed`
    units); returns the masks and the per-kind removal cost before and after."""
    out, costs = {}, {}
    for kind in ("head", "ffn_unit"):
        g = getattr(grads, kind).double()  # [N, L, u]
        rows, before, after = [], 0.0, 0.0
        for layer in range(g.shape[1]):
            fisher = g[:, layer].T @ g[:, layer]
            back = None if allowed is None else allowed[kind][layer]
            new = rearrange_layer(fisher, masks[kind][layer], max_swaps, back)
            before += removal_cost(fisher, masks[kind][layer])
            after += removal_cost(fisher, new)
            rows.append(new.to(masks[kind].dtype))
        out[kind] = torch.stack(rows)
        costs[kind] = {"before": before, "after": after}
    return out, costs
