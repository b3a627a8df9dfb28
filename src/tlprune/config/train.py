"""One training phase's settings (the dense fine-tune, every phase of a prune run, the
auxiliary stage)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tlprune.errors import ConfigError


@dataclass
class TrainConfig:
    """One training phase: optimisation, length (epochs or steps) and evaluation cadence."""

    lr: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: float = 10.0
    max_steps: int | None = None  # when set, overrides epochs
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_every: int | None = None  # optimizer steps between dev evaluations; None = each epoch
    freeze: list[str] = field(default_factory=list)  # e.g. [word_embeddings]
    mixed_precision: str = "no"  # no | bf16 | fp16

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size, eval_batch_size and grad_accum must be >= 1")
        if self.epochs <= 0 and self.max_steps is None:
            raise ConfigError(f"train.epochs must be positive, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(
                f"train.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}"
            )
        known = {"word_embeddings", "embeddings"}
        bad = [f for f in self.freeze if f not in known]
        if bad:
            raise ConfigError(f"train.freeze: unknown part(s) {bad}; choose from {sorted(known)}")
