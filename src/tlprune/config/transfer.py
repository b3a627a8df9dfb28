"""Typed transfer settings: auxiliaries, coupling (how), groups (what), schedules (when)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlprune.config.kinds import GATE_KINDS
from tlprune.config.train import TrainConfig
from tlprune.errors import ConfigError

COUPLINGS = ("none", "shared", "soft", "sequential")
SEQUENTIAL_VARIANTS = ("fixed_masks", "reprune")
ADAPT = ("none", "cosine")
AUX_TASKS = ("classification", "mlm", "regression")
MLM_TARGET_TEXTS = ("budget", "train")
SCHEDULE_KINDS = ("constant", "linear", "cosine")  # transfer/schedules.py implements each
PARTS = ("all", "embeddings", "attention", "ffn", "norm", "layers")  # weight groups (what)
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")

Group = tuple[str, range | None]


def parse_weight_groups(names: list[str], num_layers: int | None) -> list[Group]:
    """Check weight-group names (and ranges against `num_layers` when known): `all`,
    `embeddings`, or `attention|ffn|norm|layers[@A-B]`."""
    groups: list[Group] = []
    for name in names:
        part, _, span = name.partition("@")
        if part not in PARTS:
            raise ConfigError(f"unknown weight group {name!r}; parts are {list(PARTS)}")
        layers = None
        if span:
            m = _RANGE.match(span)
            if part in ("all", "embeddings") or m is None:
                raise ConfigError(
                    f"weight group {name!r}: a layer range is `part@A-B` (e.g. attention@0-2) "
                    "and applies to attention, ffn, norm and layers"
                )
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo or (num_layers is not None and hi >= num_layers):
                raise ConfigError(
                    f"weight group {name!r}: layers {lo}-{hi} are not within 0-"
                    f"{(num_layers or 1) - 1}"
                )
            layers = range(lo, hi + 1)
        groups.append((part, layers))
    return groups


def check_mask_kinds(kinds: list[str]) -> list[str]:
    """Expand `all` and reject unknown gate kinds (mask groups M)."""
    if "all" in kinds:
        return list(GATE_KINDS)
    bad = [k for k in kinds if k not in GATE_KINDS]
    if bad:
        raise ConfigError(f"unknown mask group(s) {bad}; choose gate kinds {list(GATE_KINDS)}")
    return list(kinds)


@dataclass
class ScheduleConfig:
    """A weight over a phase (the prune phase; warm_* ones over the warm fine-tune): kind
    (constant, linear, cosine), from `value` to `end`, optional linear warm-up from 0 over
    `warmup` (a fraction of the phase), and zero after the named part `off_after` of the prune
    phase (ramp: transfer only while the masks form)."""

    kind: str = "constant"
    value: float = 0.0
    end: float = 0.0  # linear/cosine: the value at the end of the prune phase
    warmup: float = 0.0
    off_after: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(
                f"unknown schedule kind {self.kind!r}; choose from {list(SCHEDULE_KINDS)}"
            )
        if self.value < 0 or self.end < 0:
            raise ConfigError(
                f"schedule weights must be >= 0, got value {self.value}, end {self.end}"
            )
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"schedule warmup is a fraction in [0, 1), got {self.warmup}")
        if self.off_after is not None and self.off_after != "ramp":
            raise ConfigError(
                f"off_after must be ramp (zero once the sparsity ramp ends) or empty, got "
                f"{self.off_after!r}"
            )


@dataclass
class AuxConfig:
    """One auxiliary task. `source`: a bundled name, a CSV/TSV/JSONL file or a `datasets`
    folder, or `target` (MLM on the target's own training texts, see `mlm_text`)."""

    source: str = ""
    task: str = "classification"  # classification | mlm | regression (MSE on value_column)
    weight: float = 1.0  # alpha_k, multiplies the alpha schedule
    text_column: str = "text"
    label_column: str = "label"
    value_column: str = "rating"  # regression: a numeric column (standardised for the loss)
    mlm_text: str = "budget"  # source=target: budget (the budget's train texts) | train (all)
    mlm_probability: float = 0.15
    max_examples: int | None = None  # cap on auxiliary examples (None: all of its train split)
    batch_size: int = 32
    max_length: int | None = None  # None: the dataset's default

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError(
                "an auxiliary needs data: set source to a bundled name, a file, a datasets "
                "folder or `target` (e.g. --aux vader-movies or --aux mlm:target)"
            )
        if self.task not in AUX_TASKS:
            raise ConfigError(f"aux task must be one of {list(AUX_TASKS)}, got {self.task!r}")
        if self.source == "target" and self.task != "mlm":
            raise ConfigError(
                "source `target` gives unlabelled texts only: use it with task mlm "
                "(the target's labels are the end task itself)"
            )
        if self.task == "regression" and Path(self.source).suffix.lower() == ".txt":
            raise ConfigError(
                f"a .txt file has texts only: regression needs a table with a numeric "
                f"{self.value_column!r} column"
            )
        if self.weight < 0:
            raise ConfigError(f"aux weight must be >= 0, got {self.weight} for {self.source}")
        if self.mlm_text not in MLM_TARGET_TEXTS:
            raise ConfigError(f"mlm_text must be one of {list(MLM_TARGET_TEXTS)}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.batch_size < 1 or (self.max_examples is not None and self.max_examples < 1):
            raise ConfigError("aux batch_size and max_examples must be >= 1")


def _aux_stage() -> TrainConfig:
    # One pass over a few thousand auxiliary examples (vader-movies: 265 steps).
    return TrainConfig(lr=5e-5, max_steps=265)


@dataclass
class TransferConfig:
    """How the target and auxiliary branches are coupled, what is coupled, and when.

    L = L_T + alpha(t) sum_k w_k L_k + beta(t) sum_W ||theta_T - theta_A||^2
        + gamma(t) sum_M ||P_T(z>0) - P_A(z>0)||^2 + L_c(z_T) [+ L_c(z_A)]
    """

    coupling: str = "none"
    aux: list[AuxConfig] = field(default_factory=list)
    weights: list[str] = field(default_factory=lambda: ["all"])  # group W (transfer.groups)
    masks: list[str] = field(default_factory=list)  # group M: gate kinds, or [all]
    alpha: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(value=1.0))
    beta: ScheduleConfig = field(default_factory=ScheduleConfig)
    gamma: ScheduleConfig = field(default_factory=ScheduleConfig)
    aux_prune: bool = False  # prune the auxiliary branch to aux_sparsity too
    aux_sparsity: float | None = None  # None: the target's sparsity
    variant: str = "fixed_masks"  # sequential: fixed_masks | reprune
    aux_stage: TrainConfig = field(default_factory=_aux_stage)  # stilts / sequential, on A
    # fisher presets: reuse a finished dense auxiliary stage of the same model, auxiliary rows,
    # schedule and seed from the cache (transfer.stage_cache), and keep new ones there
    cache_stage: bool = True
    # the auxiliary stage's seed (its batches, dropout, new head); None: the run's seed. Set
    # it apart from `seed` to measure how much the stage alone moves the result
    stage_seed: int | None = None
    aux_warm: float = 0.3  # pruned A: this fraction of aux_stage trains densely before gates
    # transfer during the dense warm fine-tune of T as well (shared, soft): schedules over the
    # warm phase's steps; 0 (the default) = T alone there, as in CoFi
    warm_alpha: ScheduleConfig = field(default_factory=ScheduleConfig)
    warm_beta: ScheduleConfig = field(default_factory=ScheduleConfig)
    # when, adaptively: cosine keeps the auxiliary gradient on the shared weights W scaled by
    # max(0, cos(g_T, g_A)) each step, i.e. only while it points the target's way (shared)
    adapt: str = "none"

    def __post_init__(self) -> None:
        if self.coupling not in COUPLINGS:
            raise ConfigError(f"unknown coupling {self.coupling!r}; choose from {list(COUPLINGS)}")
        if self.variant not in SEQUENTIAL_VARIANTS:
            raise ConfigError(
                f"unknown sequential variant {self.variant!r}; choose from "
                f"{list(SEQUENTIAL_VARIANTS)}"
            )
        if self.adapt not in ADAPT:
            raise ConfigError(f"unknown transfer.adapt {self.adapt!r}; choose from {list(ADAPT)}")
        parse_weight_groups(self.weights, num_layers=None)
        check_mask_kinds(self.masks)
        if self.stage_seed is not None and self.stage_seed < 0:
            raise ConfigError(f"transfer.stage_seed must be >= 0, got {self.stage_seed}")
        # here, not in the couplings' checks: the fisher and finetune jobs skip those when
        # there is no coupling (only sequential has a stage: couplings/*.py aux_stage)
        if self.stage_seed is not None and self.coupling != "sequential":
            raise ConfigError(
                f"transfer.stage_seed seeds an auxiliary stage, and coupling {self.coupling} has "
                "none: drop it, or use transfer.coupling=sequential (presets stilts, transfer)"
            )
        if not 0.0 <= self.aux_warm < 1.0:
            raise ConfigError(f"aux_warm is a fraction in [0, 1), got {self.aux_warm}")
        if self.aux_sparsity is not None and not 0.0 < self.aux_sparsity < 1.0:
            raise ConfigError(f"aux_sparsity must be in (0, 1), got {self.aux_sparsity}")
        if self.coupling == "none" and self.aux:
            raise ConfigError(
                "auxiliary data given but transfer.coupling is none (it would be ignored): use "
                "a transfer preset (stilts, sequential, joint, transfer) or set the coupling"
            )
        if self.coupling == "soft" and self.masks and not self.aux_prune:
            raise ConfigError(
                "soft mask coupling (transfer.masks) needs gates on the auxiliary branch: "
                "set transfer.aux_prune: true, or transfer.masks: []"
            )

    @property
    def enabled(self) -> bool:
        return self.coupling != "none" and bool(self.aux)

    @property
    def in_warm(self) -> bool:
        """Whether the auxiliary branch trains beside T during the warm fine-tune."""
        zero = self.warm_alpha.value == 0 and (
            self.warm_alpha.kind == "constant" or self.warm_alpha.end == 0
        )
        return self.coupling in ("shared", "soft") and not zero

    def seed_of_stage(self, run_seed: int) -> int:
        """The seed the auxiliary stage draws from: stage_seed, else the run's."""
        return run_seed if self.stage_seed is None else self.stage_seed

    def check_common(self, prune: Any) -> None:
        """Before a run, with the prune settings at hand: the checks every coupling shares.
        Part of transfer.couplings.check_transfer, which adds the coupling's own."""
        c = self.coupling
        if c != "none" and not self.aux:
            raise ConfigError(
                f"coupling {c} needs at least one auxiliary: pass --aux NAME "
                "(e.g. --aux vader-movies or --aux mlm:target) or set transfer.aux in the config"
            )
        if any(w.off_after == "ramp" for w in (self.alpha, self.beta, self.gamma)) and (
            prune.target_warmup == 0
        ):
            raise ConfigError("off_after: ramp with prune.target_warmup 0 would be always off")
        warm = (self.warm_alpha, self.warm_beta)
        if any(w.off_after for w in warm):
            raise ConfigError("off_after names a part of the prune phase: not for warm schedules")
        if (self.warm_beta.value > 0 or self.warm_beta.end > 0) and not self.in_warm:
            raise ConfigError(
                "transfer.warm_beta acts only when the branch trains in the warm phase: "
                "set transfer.warm_alpha.value > 0 too"
            )
        if self.aux_stage.grad_accum != 1:
            raise ConfigError("transfer.aux_stage.grad_accum must be 1 (not supported there)")


def parse_aux(spec: str) -> AuxConfig:
    """`[mlm:|reg:]SOURCE[@WEIGHT]` from the command line: `vader-movies`, `mlm:target` (the
    budget's texts), `mlm:target-train` (all target training texts), `mlm:notes.txt@0.5`,
    `reg:vader-movies` (regression on its `rating` column), `reg[stars]:reviews.csv`."""
    body, _, weight = spec.partition("@")
    task, kw = "classification", {}
    if body.startswith("mlm:"):
        task, body = "mlm", body[4:]
    elif reg := re.fullmatch(r"reg(?:\[([^\]]+)\])?:(.+)", body):
        task, body = "regression", reg[2]
        if reg[1]:
            kw["value_column"] = reg[1]
    kw.update(source=body, task=task)
    if body == "target-train":
        kw.update(source="target", mlm_text="train")
    if weight:
        try:
            kw["weight"] = float(weight)
        except ValueError:
            raise ConfigError(f"--aux {spec!r}: the weight after @ must be a number") from None
    return AuxConfig(**kw)
