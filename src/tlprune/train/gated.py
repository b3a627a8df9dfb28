"""The gated objective of the prune phase: task loss (or distillation) of the full-size encoder
under sampled gates, plus the Lagrangian, plus an auxiliary branch's terms; the gates'
clamp and projection after each update."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tlprune.gates import GateSet, Lagrangian
from tlprune.gates.price import price_term
from tlprune.gates.target_shift import shift_to_target
from tlprune.train.engine import Step
from tlprune.transfer.adapt import backward_adapted


class GatedModel(nn.Module):
    """The full-size encoder with its gates, Lagrangian and distiller: one module to prepare."""

    def __init__(
        self,
        model: nn.Module,
        gates: GateSet,
        lagrangian: Lagrangian,
        distiller=None,
        branch: nn.Module | None = None,
        shift: bool = False,
        hold_from: int | None = None,
        price: bool = False,
    ):
        super().__init__()
        self.shift = shift  # the constraint holds by projection (gates/target_shift.py)
        self.hold_from = hold_from  # from this step on, projection replaces the multipliers
        self.price = price  # projection for the level, lambda1 for the price (gates/price.py)
        if price:  # the last update's pre-projection gap: in checkpoints, for exact resume
            self.register_buffer("drift", torch.zeros(()))
        self.model = model
        self.gates = gates
        self.lagrangian = lagrangian
        self.distiller = distiller
        self.branch = branch  # the auxiliary branch of a transfer run (transfer/branch.py)

    def forward(self, batch: dict, target: float, teacher_out: Any = None, step: int = 0):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        labels = batch["labels"]
        z = self.gates()
        distil = self.distiller is not None and teacher_out is not None
        out = self.model(**inputs, gates=z, output_hidden_states=distil)
        parts: dict[str, torch.Tensor] = {}
        if distil:
            mha = z.get("mha")
            n_layers = len(out.hidden_states) - 1
            open_layers = (
                list(range(n_layers))
                if mha is None
                else [i for i, on in enumerate((mha.detach() > 0).tolist()) if on]
            )
            d = self.distiller(
                out.logits,
                out.hidden_states,
                teacher_out.logits,
                teacher_out.hidden_states,
                labels,
                inputs["attention_mask"],
                open_layers,
            )
            task = d.pop("loss")
            parts.update({k: v.detach() for k, v in d.items()})
        else:
            task = F.cross_entropy(out.logits, labels)
        s_hat = self.gates.expected_sparsity().to(task.dtype)
        if self.price:
            lag = price_term(self.lagrangian, s_hat, target, self.drift)
        else:
            lag = self.lagrangian(s_hat, target)
        projected = self.shift or (self.hold_from is not None and step >= self.hold_from)
        if projected:  # unused, but in the graph: several processes (DDP) need every parameter
            lag = 0 * lag
        parts.update(task=task.detach(), lagrangian=lag.detach(), expected_sparsity=s_hat.detach())
        loss = task + lag
        if self.branch is not None:
            extra, aux_parts = self.branch(step, z, task.device)
            loss = loss + extra
            parts.update(aux_parts)
        return loss, parts


class WithMasks(nn.Module):
    """The model under fixed binary gates, callable like any classifier (for evaluation)."""

    def __init__(self, model: nn.Module, gates: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.z = gates

    def forward(self, **batch):
        return self.model(**batch, gates=self.z)


class GatedObjective:
    """One micro-batch of the prune phase, over a prepared GatedModel (`module`).

    `project_from`: the step from which each update ends with the projection of the gates onto
    the next step's target (0 for `shift`, the ramp's end for `hold`, None: the multipliers)."""

    def __init__(self, module, inner: GatedModel, accelerator, schedule, teacher, project_from):
        self.module, self.inner, self.schedule = module, inner, schedule
        self.accelerator, self.teacher, self.project_from = accelerator, teacher, project_from
        self.target = 0.0
        self.level: Any = 0.0  # the expected sparsity the gates started this update from

    def __call__(self, batch: Any, step: int) -> Step:
        self.target = self.schedule(step)
        teacher_out = None
        if self.teacher is not None:
            with torch.no_grad():
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                teacher_out = self.teacher(**inputs, output_hidden_states=True)
        loss, parts = self.module(batch, self.target, teacher_out, step)
        if self.inner.price:  # the level this update starts from, in the gates' own precision
            with torch.no_grad():  # (the logged value follows the loss's dtype); no host sync
                self.level = self.inner.gates.expected_sparsity()
        out = Step(loss, parts, task=parts["task"])
        branch = self.inner.branch
        if branch is not None:  # transfer.adapt: the aux term comes apart
            out.aux_term, branch.task_term = branch.task_term, None
            if out.aux_term is not None:  # scale g_A on the shared weights and gates
                out.backward = self._adapted(out)
        return out

    def _adapted(self, out: Step):
        def backward() -> dict[str, Any]:
            b = self.inner.branch
            cos = backward_adapted(
                self.accelerator, out.loss, out.aux_term, b.shared_weights(), b.shared_gates()
            )
            return {"aux/cosine": torch.tensor(cos)}

        return backward

    def after_update(self, step: int, synced: bool) -> None:
        inner = self.inner
        inner.gates.clamp_()
        if self.project_from is not None and synced and step + 1 >= self.project_from:
            if inner.price:  # how far this gate step alone moved the level (not the ramp)
                with torch.no_grad():
                    inner.drift.fill_(float(inner.gates.expected_sparsity() - self.level))
            shift_to_target(inner.gates, self.schedule(step + 1))  # the next step's own target
        if inner.branch is not None and inner.branch.gates is not None:
            inner.branch.gates.clamp_()

    def log_row(self, step: int, out: Step) -> dict[str, Any]:
        row = {k: float(v) for k, v in out.parts.items()}
        row.update(
            phase="prune",
            step=step,
            target=self.target,
            lambda1=float(self.inner.lagrangian.lambda1.detach()),
            lambda2=float(self.inner.lagrangian.lambda2.detach()),
        )
        if self.inner.price:  # this update's drift, which the next one's lambda1 step reads
            row["drift"] = float(self.inner.drift)
        return row

    def postfix(self, out: Step) -> dict[str, str]:
        s_hat = float(out.parts["expected_sparsity"])
        return {"loss": f"{float(out.task):.3f}", "s": f"{s_hat:.3f}", "t": f"{self.target:.3f}"}
