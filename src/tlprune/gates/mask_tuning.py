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


class _Stop(Exception):
    """Raised by a hook once the sublayer of interest has been seen: the rest is not needed."""


@dataclass
class _Capture:
    """What the hooks saw of one sublayer on one batch."""

    x: Tensor | None = None  # the sublayer's input (the residual)
    out: Tensor | None = None  # its output (dense model), before the residual and LayerNorm
    units: Tensor | None = None  # per-unit activations entering the output projection


def _module(model, layer: int, kind: str):
    sub = model.tlprune.encoder.layers[layer]
    return sub.attention if kind == "head" else sub.ffn


def _run(model, batch, gates, layer: int, kind: str, want_units: bool) -> _Capture:
    """Forward `batch` up to sublayer (`layer`, `kind`) and capture its input, output and,
    for the pruned model, the per-unit activations."""
    cap = _Capture()
    module = _module(model, layer, kind)

    def on_input(_m, args):
        cap.x = args[0]

    def on_output(_m, _args, output):
        cap.out = output
        raise _Stop

    def on_units(_m, args):
        cap.units = args[0]

    handles = [module.register_forward_pre_hook(on_input), module.register_forward_hook(on_output)]
    if want_units:
        handles.append(module.output.register_forward_pre_hook(on_units))
    try:
        model(**batch, gates=gates)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return cap


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

    `batches()` yields fresh iterations over the tuning texts (no labels needed). A sublayer
    keeps its binary masks when the least-squares solution would not lower its error.
    """
    student.eval()
    teacher.eval()
    scales = {k: masks[k].clone().float() for k in ("head", "ffn_unit")}
    before, after = {}, {}
    for layer in range(student.config.num_hidden_layers):
        for kind in ("head", "ffn_unit"):
            keep = masks[kind][layer].bool()
            name = f"{kind}.{layer}"
            if not keep.any():
                continue
            m, err0, err1 = _solve(
                student, teacher, scales, layer, kind, keep, batches, damping, clamp
            )
            before[name], after[name] = err0, err1
            if err1 < err0:
                scales[kind][layer, keep] = m.to(scales[kind].dtype)
            else:
                after[name] = err0
    return scales, TuneStats(before=before, after=after)


@torch.no_grad()
def _solve(student, teacher, scales, layer, kind, keep, batches, damping, clamp):
    """Least-squares masks of one sublayer, and its error with binary and with tuned masks."""
    gates = {k: v.clone() for k, v in scales.items()}
    gates[kind][layer] = keep.float()  # this sublayer's own masks start from binary
    k = int(keep.sum())
    gram = torch.zeros(k, k, dtype=torch.float64)
    rhs = torch.zeros(k, dtype=torch.float64)
    rr, count = 0.0, 0
    for batch in batches():
        batch = {n: v for n, v in batch.items() if n != "labels"}
        valid = batch["attention_mask"].bool()
        t = _run(teacher, batch, None, layer, kind, want_units=False)
        s = _run(student, batch, gates, layer, kind, want_units=True)
        bias = _module(student, layer, kind).output.bias
        target = (t.x + t.out)[valid].double()
        resid = target - s.x[valid].double() - bias.double()
        g, r = _normal_equations(student, layer, kind, s.units[valid], keep, resid)
        gram += g
        rhs += r
        rr += float((resid**2).sum())
        count += resid.numel()
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
