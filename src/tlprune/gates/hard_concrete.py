"""Hard-concrete gates (Louizos, Welling, Kingma 2018), one log-alpha per prunable unit.

    u ~ U(0, 1);  s = sigmoid((log u - log(1 - u) + log_alpha) / temp);  z = clamp(s*(r-l)+l, 0, 1)
    P(z > 0) = sigmoid(log_alpha - temp * log(-l / r))   (= sigmoid(log_alpha + 1.6) by default)

Training draws one z per gate per call (one call per batch, as CoFi). Evaluation uses binary
masks (`final_masks`), never samples. Sampling uses the module's own CPU `torch.Generator`, so
it is reproducible whatever the device, and its state is part of `state_dict()` (extra state),
so a checkpoint resumes the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tlprune.gates.size import (
    KINDS,
    GateConfigError,
    UnitSizes,
    expected_size,
    expected_sparsity,
)

_EPS = 1e-6  # u is kept in [eps, 1 - eps] so that log u and log(1 - u) stay finite


@dataclass
class GateConfig:
    """Which gate kinds to learn and the hard-concrete constants (CoFi's values by default).

    init_log_alpha 0 gives keep probability sigmoid(0 + 1.6) = 0.83 (CoFi); CoFi also adds
    N(0, 0.01) noise at init (`init_std`), which breaks ties between otherwise equal units.
    The clamp keeps log-alpha in [ln 0.01, ln 100] (keep probability 0.045 .. 0.9986).
    """

    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    init_log_alpha: float = 0.0
    init_std: float = 0.01
    log_alpha_min: float = math.log(0.01)
    log_alpha_max: float = math.log(100.0)
    temperature: float = 2.0 / 3.0
    limit_l: float = -0.1
    limit_r: float = 1.1

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise GateConfigError(f"unknown gate kind(s) {unknown}; valid kinds: {list(KINDS)}")
        if len(set(self.kinds)) != len(self.kinds):
            raise GateConfigError(f"gate kinds listed twice: {self.kinds}")
        self.kinds = [k for k in KINDS if k in self.kinds]  # canonical order
        if not self.temperature > 0:
            raise GateConfigError(f"gate temperature must be positive, got {self.temperature}")
        if not (self.limit_l < 0.0 and self.limit_r > 1.0):
            raise GateConfigError(
                f"gate stretch limits need limit_l < 0 < 1 < limit_r, got "
                f"({self.limit_l}, {self.limit_r})"
            )
        if not self.log_alpha_min < self.log_alpha_max:
            raise GateConfigError(
                f"gate clamp needs log_alpha_min < log_alpha_max, got "
                f"({self.log_alpha_min}, {self.log_alpha_max})"
            )
        if not self.log_alpha_min <= self.init_log_alpha <= self.log_alpha_max:
            raise GateConfigError(
                f"init_log_alpha {self.init_log_alpha} lies outside the clamp "
                f"[{self.log_alpha_min}, {self.log_alpha_max}]"
            )
        if self.init_std < 0:
            raise GateConfigError(f"init_std must be >= 0, got {self.init_std}")

    @property
    def shift(self) -> float:
        """-temp * log(-l / r): P(z > 0) = sigmoid(log_alpha + shift) (1.599 by default)."""
        return -self.temperature * math.log(-self.limit_l / self.limit_r)

    def keep_prob(self, log_alpha: Tensor) -> Tensor:
        """P(z > 0) for hard-concrete gates with these constants."""
        return torch.sigmoid(log_alpha + self.shift)


class GateSet(nn.Module):
    """One log-alpha Parameter per enabled kind (`log_alpha[kind]`, shapes from `UnitSizes`).

    - training: ``z = gates.sample()`` once per batch (or ``gates()`` in train mode);
    - after each optimizer step: ``gates.clamp_()``;
    - constraint: ``gates.expected_sparsity()`` (differentiable) into the `Lagrangian`;
    - evaluation: ``gates.deterministic(final_masks(gates.keep_probs(), sizes, t).masks)``.
    """

    def __init__(
        self,
        config: GateConfig,
        sizes: UnitSizes,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.sizes = sizes
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(seed)
        if generator.device.type != "cpu":
            raise ValueError("GateSet needs a CPU torch.Generator (samples are moved to the gates)")
        self.generator = generator
        self.log_alpha = nn.ParameterDict()
        for kind in config.kinds:
            init = torch.full(sizes.shape(kind), config.init_log_alpha)
            if config.init_std > 0:
                init += config.init_std * torch.randn(init.shape, generator=generator)
            init.clamp_(config.log_alpha_min, config.log_alpha_max)
            self.log_alpha[kind] = nn.Parameter(init)

    @property
    def kinds(self) -> list[str]:
        return list(self.config.kinds)

    def extra_repr(self) -> str:
        return f"kinds={self.kinds}, sizes={self.sizes}"

    # -- checkpointing: the generator state travels with state_dict() -------------------------
    def get_extra_state(self) -> Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.generator.set_state(state.detach().to("cpu", torch.uint8))

    def reseed(self, seed: int) -> None:
        """Restart the sampling noise from `seed` (e.g. for a deep-copied second branch)."""
        self.generator.manual_seed(seed)

    # -- gates ----------------------------------------------------------------------------------
    def keep_probs(self) -> dict[str, Tensor]:
        """P(z > 0) per enabled kind (differentiable)."""
        return {kind: self.config.keep_prob(la) for kind, la in self.log_alpha.items()}

    def sample(self) -> dict[str, Tensor]:
        """One hard-concrete draw z in [0, 1] per gate (differentiable w.r.t. log-alpha)."""
        cfg = self.config
        out = {}
        for kind, log_alpha in self.log_alpha.items():
            u = torch.rand(log_alpha.shape, generator=self.generator, dtype=log_alpha.dtype)
            u = u.mul_(1 - 2 * _EPS).add_(_EPS).to(log_alpha.device)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / cfg.temperature)
            out[kind] = (s * (cfg.limit_r - cfg.limit_l) + cfg.limit_l).clamp(0.0, 1.0)
        return out

    def deterministic(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fixed binary masks as a gate dict for the enabled kinds (on the gates' device/dtype)."""
        missing = [k for k in self.kinds if k not in masks]
        extra = [k for k in masks if k not in self.kinds]
        if missing or extra:
            raise ValueError(
                f"masks must cover exactly the enabled kinds {self.kinds}; "
                f"missing {missing}, not enabled {extra}"
            )
        out = {}
        for kind, log_alpha in self.log_alpha.items():
            mask = masks[kind].detach().to(log_alpha.device, log_alpha.dtype)
            if tuple(mask.shape) != tuple(log_alpha.shape):
                shape = tuple(log_alpha.shape)
                raise ValueError(f"mask {kind!r} has shape {tuple(mask.shape)}, expected {shape}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"mask {kind!r} is not binary (0/1)")
            out[kind] = mask
        return out

    def forward(self, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Sampled gates in training; `masks` (required in eval mode) as fixed gates."""
        if masks is not None:
            return self.deterministic(masks)
        if self.training:
            return self.sample()
        raise RuntimeError("GateSet in eval mode needs binary masks: gates(final_masks(...).masks)")

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp every log-alpha into the configured range (call after each optimizer step)."""
        for log_alpha in self.log_alpha.values():
            log_alpha.clamp_(self.config.log_alpha_min, self.config.log_alpha_max)

    def expected_size(self) -> Tensor:
        return expected_size(self.keep_probs(), self.sizes)

    def expected_sparsity(self) -> Tensor:
        """s_hat = 1 - E[size] / full_size (differentiable)."""
        return expected_sparsity(self.keep_probs(), self.sizes)
