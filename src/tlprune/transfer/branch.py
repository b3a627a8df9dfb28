"""How: the auxiliary branch beside the target, and its terms of the objective.

    shared  the groups W are the very same Parameters in both branches, the gate kinds M the
            same sampled gates: one tensor each (hard sharing, joint multitask)
    soft    two copies, tied by beta * ||theta_T - theta_A||^2 over W and
            gamma * ||P_T(z>0) - P_A(z>0)||^2 over M
    sequential  the branch trains alone first (train/aux_stage.py), then groups are copied

When alpha(t) = 0 no auxiliary batch is drawn and no auxiliary forward runs, and building the
branch never touches the global RNG: `shared` with alpha = 0 is exactly the `cofi` run.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tlprune.config.transfer import ScheduleConfig, TransferConfig
from tlprune.gates import GateConfig, GateSet, Lagrangian, expected_sparsity
from tlprune.transfer.aux import AuxTask
from tlprune.transfer.couplings import coupling_of
from tlprune.transfer.groups import check_mask_kinds, select_weights
from tlprune.transfer.schedules import Weight


def _tie(encoder: nn.Module, name: str, param: nn.Parameter) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = encoder.get_submodule(module_name)
    module._parameters[leaf] = param


class AuxBranch(nn.Module):
    """Encoder, gates, Lagrangian and task heads of the auxiliary branch."""

    def __init__(
        self,
        target_encoder: nn.Module,
        target_gates: GateSet | None,
        tasks: list[AuxTask],
        cfg: TransferConfig,
        gate_cfg: GateConfig | None,
        sizes: Any,
        seed: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.coupling = coupling_of(cfg)  # what this coupling builds (transfer/couplings/)
        self.tasks = nn.ModuleList(tasks)
        kinds = check_mask_kinds(cfg.masks)
        target_kinds = target_gates.kinds if target_gates is not None else []
        self.weight_names = select_weights(target_encoder, cfg.weights)
        self.encoder = copy.deepcopy(target_encoder)
        self.shared_kinds: list[str] = []
        if self.coupling.ties_weights:
            params = dict(target_encoder.named_parameters())
            for name in self.weight_names:  # one tensor: the target's Parameter in both
                _tie(self.encoder, name, params[name])
            self.shared_kinds = [k for k in kinds if k in target_kinds]
        self.coupled_kinds = [k for k in kinds if k in target_kinds]
        # the target's encoder, unregistered: a reference for the beta penalty only
        object.__setattr__(self, "_target_encoder", target_encoder)
        object.__setattr__(self, "_target_gates", target_gates)
        self.gates: GateSet | None = None
        self.lagrangian: Lagrangian | None = None
        own = [k for k in (gate_cfg.kinds if gate_cfg else []) if k not in self.shared_kinds]
        if cfg.aux_prune and gate_cfg is not None and own:
            self.gates = GateSet(dataclasses.replace(gate_cfg, kinds=own), sizes, seed=seed + 7919)
            if target_gates is not None:  # start where the target's gates start
                with torch.no_grad():
                    for k in own:
                        self.gates.log_alpha[k].copy_(target_gates.log_alpha[k])
            self.lagrangian = Lagrangian()
        self.alpha = self.beta = self.gamma = None
        # adapt: the auxiliary tasks' term is left out of forward()'s total and kept here for
        # a separate backward that scales its gradient on the shared weights (adapt.py)
        self.adapt = cfg.adapt != "none"
        self.task_term: torch.Tensor | None = None
        self.aux_target: Callable[[int], float] = lambda step: 0.0

    def bind(self, steps: int, ramp_steps: int, aux_target: Callable[[int], float]) -> None:
        """Schedules over a prune phase of `steps` steps whose ramp ends at `ramp_steps`."""
        self.alpha = Weight(self.cfg.alpha, steps, ramp_steps)
        self.beta = Weight(self.cfg.beta, steps, ramp_steps)
        self.gamma = Weight(self.cfg.gamma, steps, ramp_steps)
        self.aux_target = aux_target

    def bind_warm(self, steps: int) -> None:
        """Schedules over a dense warm fine-tune of `steps` steps (no gates, no gamma)."""
        self.alpha = Weight(self.cfg.warm_alpha, steps, 0)
        self.beta = Weight(self.cfg.warm_beta, steps, 0)
        self.gamma = Weight(ScheduleConfig(), steps, 0)
        self.aux_target = lambda step: 0.0

    def carried_state(self, streams: bool = True) -> dict[str, torch.Tensor]:
        """What a later phase's branch takes over: the heads (with their stream positions unless
        `streams` is False) and the encoder weights this branch owns (soft: A's copy); never
        the target's shared tensors."""
        state = {f"tasks.{k}": v for k, v in self.tasks.state_dict().items()}
        if not streams:
            state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
        state.update({f"encoder.{n}": p for n, p in self._own_encoder_params()})
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}

    def load_carried(self, state: dict[str, torch.Tensor]) -> None:
        """Load what carried_state() gave (all of it, or all but the stream positions)."""
        own = {f"encoder.{n}" for n, _ in self._own_encoder_params()}
        heads = {f"tasks.{k}" for k in self.tasks.state_dict()}
        streams = {k for k in heads if k.endswith("_extra_state")}
        if set(state) not in (own | heads, own | heads - streams):
            from tlprune.errors import TlpruneError

            raise TlpruneError(
                "the saved auxiliary branch does not match this run's auxiliaries: start again "
                "without --resume (or with --overwrite)"
            )
        self.load_state_dict(state, strict=False)

    # -- parameters by optimizer ----------------------------------------------------------------
    def weight_params(self) -> list[nn.Parameter]:
        """Trainable weights of this branch that the target does not already own."""
        return [p for _, p in self._own_encoder_params()] + list(self.tasks.parameters())

    def _own_encoder_params(self) -> list[tuple[str, nn.Parameter]]:
        """This branch's encoder parameters that are not the target's (tied) tensors."""
        mine = {id(p) for p in self._target_encoder.parameters()}
        return [(n, p) for n, p in self.encoder.named_parameters() if id(p) not in mine]

    def shared_weights(self) -> list[nn.Parameter]:
        """The trainable tensors both branches update (shared coupling's group W)."""
        if not self.coupling.ties_weights:
            return []
        params = dict(self._target_encoder.named_parameters())
        return [params[n] for n in self.weight_names if params[n].requires_grad]

    def shared_gates(self) -> list[nn.Parameter]:
        """The target's log-alphas that both branches sample from (shared coupling's M)."""
        if self._target_gates is None:
            return []
        return [self._target_gates.log_alpha[k] for k in self.shared_kinds]

    def clip_groups(self, target: list[nn.Parameter]) -> list[list[nn.Parameter]]:
        """Gradient-clipping groups beside the target's trainable weights: soft has two models,
        each clipped on its own norm (so beta = 0 is two independent runs); shared is one
        model with extra heads, clipped together."""
        own = [p for p in self.weight_params() if p.requires_grad]
        return [target, own] if self.coupling.penalty else [target + own]

    # -- the objective ---------------------------------------------------------------------------
    def aux_gates(self, z_target: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        z = dict(self.gates()) if self.gates is not None else {}
        for kind in self.shared_kinds:
            if z_target is not None and kind in z_target:
                z[kind] = z_target[kind]
        return z

    def aux_expected_sparsity(self) -> torch.Tensor:
        """A's expected sparsity: its own gates, with the target's (shared) gates held fixed,
        so that L_c(z_A) moves only A's own log-alphas."""
        probs = self.gates.keep_probs()
        if self._target_gates is not None:
            shared = self._target_gates.keep_probs()
            for kind in self.shared_kinds:
                probs[kind] = shared[kind].detach()
        return expected_sparsity(probs, self.gates.sizes)

    def forward(
        self, step: int, z_target: dict[str, torch.Tensor] | None, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """alpha * sum_k w_k L_k [+ L_c(z_A)] + beta * W-penalty + gamma * M-penalty."""
        a, b, g = self.alpha(step), self.beta(step), self.gamma(step)
        total = torch.zeros((), device=device)
        parts: dict[str, torch.Tensor] = {}
        self.task_term = None
        if a > 0:
            z = self.aux_gates(z_target) or None
            tasks_total = torch.zeros((), device=device)
            for task in self.tasks:
                loss = task.loss(self.encoder, z, device)
                tasks_total = tasks_total + a * task.weight * loss
                parts[f"aux/{task.name}"] = loss.detach()
            if self.adapt:  # backpropagated on its own (transfer/adapt.py), not in the total
                self.task_term = tasks_total
            else:
                total = total + tasks_total
        if self.gates is not None and self.lagrangian is not None:  # L_c(z_A), whatever alpha
            s_hat = self.aux_expected_sparsity()
            total = total + self.lagrangian(s_hat, self.aux_target(step))
            parts["aux/expected_sparsity"] = s_hat.detach()
        if self.coupling.penalty and b > 0:
            params = dict(self._target_encoder.named_parameters())
            mine = dict(self.encoder.named_parameters())
            pen = sum(
                (
                    (params[n] - mine[n]).pow(2).sum()
                    for n in self.weight_names
                    if params[n].requires_grad or mine[n].requires_grad  # frozen: equal, skip
                ),
                torch.zeros((), device=device),
            )
            total = total + b * pen
            parts["aux/weight_distance"] = pen.detach()
        if self.coupling.penalty and g > 0 and self.gates is not None:
            keep_t = self._target_gates.keep_probs()
            keep_a = self.gates.keep_probs()
            kinds = [k for k in self.coupled_kinds if k in keep_a]
            if kinds:
                pen = sum((keep_t[k] - keep_a[k]).pow(2).sum() for k in kinds)
                total = total + g * pen
                parts["aux/mask_distance"] = pen.detach()
        parts.update(alpha=torch.tensor(a), beta=torch.tensor(b), gamma=torch.tensor(g))
        return total, parts

    def memory_note(self) -> str:
        """What the branch adds in weights (the soft copy doubles them, plus AdamW state)."""
        mine = {id(p) for p in self._target_encoder.parameters()}
        extra = sum(p.numel() for p in self.encoder.parameters() if id(p) not in mine)
        heads = sum(p.numel() for p in self.tasks.parameters())
        mb = (extra + heads) * 4 * 4 / 2**20  # fp32 weight, grad, two AdamW moments
        return (
            f"auxiliary branch: {extra:,} own encoder weights + {heads:,} head weights "
            f"(~{mb:,.0f} MiB with gradients and AdamW state)"
        )


def build_branch(
    model: nn.Module,
    target_gates: GateSet | None,
    aux_data: list,
    tokenizer: Any,
    cfg: TransferConfig,
    gate_cfg: GateConfig | None,
    sizes: Any,
    seed: int,
    shard: tuple[int, int] = (0, 1),
) -> AuxBranch:
    """Heads for every auxiliary and the branch beside classifier `model`, built under a forked
    RNG so that the target's run draws the same random numbers as without it. `shard`: (this
    process's rank, processes): each process draws its slice of every auxiliary batch."""
    from tlprune.transfer.aux import build_aux_task, unique_names

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed + 104_729)  # the CPU one only: it is forked
        tasks = [
            build_aux_task(d, model, tokenizer, seed + 1_000 + k) for k, d in enumerate(aux_data)
        ]
    for task, name in zip(tasks, unique_names([t.name for t in tasks]), strict=True):
        task.name = name  # one log key per task (the same source twice)
        task.shard = shard
    return AuxBranch(model.tlprune, target_gates, tasks, cfg, gate_cfg, sizes, seed)
