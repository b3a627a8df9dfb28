"""Layer-wise mask tuning by least squares (Kwon et al. 2022), and folding the tuned masks
into the weights.

Before its LayerNorm, a sublayer's output is linear in its unit masks: x + b + sum_u m_u A_u(x),
where A_u is unit u's contribution (a head's context through its rows of W_O, an FFN unit's
activation times its column of W2). Going through the sublayers in order, each kept unit's
mask becomes the real number that best reconstructs the dense model's pre-LayerNorm output of
the same sublayer, the pruned model's earlier sublayers already tuned: the pruned model is
pulled back towards the dense one where pruning moved it, without any retraining.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _Batch:
    """One tuning batch as it travels through the sublayers: the dense model's hidden state,
    the pruned model's (tuned so far), and what attention needs."""

    teacher_x: Tensor
    student_x: Tensor
    additive: Tensor | None
    valid: Tensor  # [B, T] bool: the tokens that count (not padding)


def _module(model, layer: int, kind: str):
    sub = model.tlprune.encoder.layers[layer]
    return sub.attention if kind == "head" else sub.ffn


def _norm(model, layer: int, kind: str):
    sub = model.tlprune.encoder.layers[layer]
    return sub.attention_norm if kind == "head" else sub.ffn_norm


def _start(student, teacher, batch: dict) -> _Batch:
    from tlprune.modeling.modeling_tlprune import _additive_mask

    ids, mask = batch["input_ids"], batch["attention_mask"]
    types = batch.get("token_type_ids")
    t = teacher.tlprune.embeddings(ids, types)
    s = student.tlprune.embeddings(ids, types)
    return _Batch(t, s, _additive_mask(mask, ids, t.dtype), mask.bool())


def _sublayer(model, layer: int, kind: str, x: Tensor, additive, z) -> Tensor:
    module = _module(model, layer, kind)
    return module(x, additive, z) if kind == "head" else module(x, z)


def _advance(student, teacher, batches: list[_Batch], t_outs, layer: int, kind: str, z) -> None:
    """Move every batch past sublayer (layer, kind): the dense model ungated (its outputs
    `t_outs`, already computed), the pruned one under its tuned masks `z` (post-LayerNorm, as
    in the model's forward)."""
    from tlprune.modeling.modeling_tlprune import residual_norm

    for b, t_out in zip(batches, t_outs, strict=True):
        b.teacher_x = residual_norm(_norm(teacher, layer, kind), b.teacher_x, t_out, None, None)
        s_out = _sublayer(student, layer, kind, b.student_x, b.additive, z)
        b.student_x = residual_norm(_norm(student, layer, kind), b.student_x, s_out, None, None)


def _normal_equations(model, layer: int, kind: str, units: Tensor, keep: Tensor, resid: Tensor):
    """Gram matrix A^T A and A^T r of the kept units' contributions A over tokens, in float64.

    A head's contribution is its context through its columns of W_O ([tokens, kept, d] is
    small: at most a dozen heads); an FFN unit's is its activation times its column of W2,
    whose Gram factorises as (H^T H) * (W2^T W2) without forming [tokens, units, d]."""
    proj = _module(model, layer, kind).output.weight.double()  # [d, units * width]
    units, resid = units.double(), resid.double()
    if kind == "head":
        dh = model.config.head_size
        c = units.unflatten(-1, (-1, dh))[:, keep]  # [n, kept, dh]
        w = proj.unflatten(1, (-1, dh))[:, keep]  # [d, kept, dh]
        a = torch.einsum("nhk,dhk->nhd", c, w)
        return torch.einsum("nhd,ngd->hg", a, a), torch.einsum("nhd,nd->h", a, resid)
    h, w2 = units[:, keep], proj[:, keep]  # [n, kept], [d, kept]
    return (h.T @ h) * (w2.T @ w2), ((resid @ w2) * h).sum(0)


@dataclass
class TuneStats:
    """Reconstruction error of each sublayer before and after tuning (mean squared, per
    token and dimension), to report and to test."""

    before: dict[str, float]
    after: dict[str, float]


def tune_masks(
    student,
    teacher,
    masks: dict[str, Tensor],
    batches: Callable[[], Iterable[dict]],
    damping: float = 1e-3,
    clamp: float = 10.0,
) -> tuple[dict[str, Tensor], TuneStats]:
    """Real-valued head and FFN-unit masks (0 where `masks` is 0) for `student` (the dense
    model, run with the masks as gates) that reconstruct `teacher`'s sublayer outputs.

    `batches()` yields the tuning texts (labels are ignored); each batch is carried through
    the sublayers once, so the cost is about one forward pass of both models. A sublayer keeps
    its binary masks when the least-squares solution would not lower its error.
    """
    student.eval()
    teacher.eval()
    scales = {k: masks[k].clone().float() for k in ("head", "ffn_unit")}
    before, after = {}, {}
    with torch.no_grad():
        states = [_start(student, teacher, b) for b in batches()]
        for layer in range(student.config.num_hidden_layers):
            for kind in ("head", "ffn_unit"):
                keep = masks[kind][layer].bool()
                name = f"{kind}.{layer}"
                t_outs = [
                    _sublayer(teacher, layer, kind, b.teacher_x, b.additive, None) for b in states
                ]
                if keep.any():
                    m, err0, err1 = _solve(
                        student, states, t_outs, layer, kind, keep, damping, clamp
                    )
                    before[name], after[name] = err0, err1
                    if err1 < err0:
                        scales[kind][layer, keep] = m.to(scales[kind].dtype)
                    else:
                        after[name] = err0
                _advance(student, teacher, states, t_outs, layer, kind, scales[kind][layer])
    return scales, TuneStats(before=before, after=after)


def _solve(student, states, t_outs, layer, kind, keep, damping, clamp):
    """Least-squares masks of one sublayer, and its error with binary and with tuned masks
    (`t_outs`: the dense model's outputs of the sublayer, per batch)."""
    k = int(keep.sum())
    gram = torch.zeros(k, k, dtype=torch.float64)
    rhs = torch.zeros(k, dtype=torch.float64)
    rr, count = 0.0, 0
    module = _module(student, layer, kind)
    seen: list[Tensor] = []
    hook = module.output.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        for b, t_out in zip(states, t_outs, strict=True):
            seen.clear()  # the units entering the output projection, under binary masks
            _sublayer(student, layer, kind, b.student_x, b.additive, keep.float())
            target = (b.teacher_x + t_out)[b.valid].double()
            resid = target - b.student_x[b.valid].double() - module.output.bias.double()
            g, r = _normal_equations(student, layer, kind, seen[0][b.valid], keep, resid)
            gram += g
            rhs += r
            rr += float((resid**2).sum())
            count += resid.numel()
    finally:
        hook.remove()
    ones = torch.ones(k, dtype=torch.float64)

    def err(m):  # ||A m - r||^2 from the sufficient statistics
        return (float(m @ gram @ m) - 2 * float(m @ rhs) + rr) / max(count, 1)

    lam = damping * float(torch.diagonal(gram).mean().clamp_min(1e-12))
    # ridge towards the binary mask: min ||A m - r||^2 + lam ||m - 1||^2
    m = torch.linalg.solve(gram + lam * torch.eye(k, dtype=torch.float64), rhs + lam * ones)
    m = m.clamp(-clamp, clamp)
    return m, err(ones), err(m)


@torch.no_grad()
def fold_scales(model, scales: dict[str, Tensor]) -> None:
    """Multiply each head's rows of W_O and each FFN unit's column of W2 by its mask, in place:
    the model without gates then computes what it computed with `scales` as gates (where they
    are non-zero; zeros are left for surgery to remove)."""
    dh = model.config.head_size
    for i, layer in enumerate(model.tlprune.encoder.layers):
        s_head = torch.where(scales["head"][i] != 0, scales["head"][i], torch.ones(()))
        w = layer.attention.output.weight
        w.mul_(s_head.repeat_interleave(dh).to(w.dtype)[None, :])
        s_unit = torch.where(scales["ffn_unit"][i] != 0, scales["ffn_unit"][i], torch.ones(()))
        w2 = layer.ffn.output.weight
        w2.mul_(s_unit.to(w2.dtype)[None, :])
