"""Typed run configuration: dataclasses validated on creation, YAML files and dotted overrides.

One package without cycles: kinds (names every section checks against), train (one training
phase), transfer (the transfer settings), and here the run's other sections and the loaders.

Every output directory gets the fully resolved config (`config.yaml`), and unknown keys are
rejected loudly, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tlprune.config.kinds import CONSTRAINTS, GATE_KINDS, PRUNE_METHODS, SELECT_RULES
from tlprune.config.train import TrainConfig
from tlprune.config.transfer import TransferConfig
from tlprune.errors import ConfigError

T = TypeVar("T")


@dataclass
class ModelConfig:
    """Which pre-trained encoder to start from: an alias (`minilm`), a directory or a hub id."""

    name: str = "minilm"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError(
                "model.name is empty: give an alias (minilm), a directory or a hub id"
            )


@dataclass
class DataConfig:
    """The target task, its columns, and the scarce-data budget drawn from its training split."""

    target: str = "vader-amazon"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    test_file: str | None = None  # for file targets without their own test split
    test_fraction: float = 0.2  # used only when a file target has no test split
    budget: int | None = 256  # labelled examples the method may touch (train + dev); None = all
    dev_fraction: float = 0.2
    max_length: int | None = None  # None = the dataset's default (64 sentiment, 256 bbc-news)
    split_seed: int = 0  # seed of the fixed train/test split of a file target
    # unlabelled texts beside the budget: `target-train` (the target's training texts without
    # labels; never dev or test texts), a .txt file (one text per line), or any dataset's texts
    unlabelled: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(
                f"data.budget must be a positive number of examples, got {self.budget}"
            )
        if not 0.0 < self.dev_fraction < 1.0:
            raise ConfigError(f"data.dev_fraction must be in (0, 1), got {self.dev_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"data.max_length must be at least 8 tokens, got {self.max_length}")


def _warm() -> TrainConfig:
    return TrainConfig(epochs=4.0)


def _prune_phase() -> TrainConfig:
    # 600 steps: Adam moves a log-alpha by ~lr per step, so gates need a few hundred steps to
    # close whatever the budget (docs/method.md, hard-concrete gates); CoFi's weight lr for
    # this phase is 2e-5.
    return TrainConfig(lr=2e-5, max_steps=600, eval_every=25)


def _final() -> TrainConfig:
    return TrainConfig(lr=3e-5, batch_size=64, epochs=20.0)


@dataclass
class PruneConfig:
    """Structured pruning: which units, how sparse, and the phases around the gate training."""

    sparsity: float = 0.8  # fraction of the encoder's attention + FFN parameters removed
    kinds: list[str] = field(default_factory=lambda: list(GATE_KINDS))
    # CoFi starts log-alphas at 0 (keep prob 0.83) with lr 1e-2. At that start the sampled gates
    # take a warm MiniLM to chance-level loss (0.57 -> 0.69 on vader-amazon), and a few hundred
    # steps do not recover it; at 3 the sampled model keeps its loss (0.43-0.52), and lr 3e-2
    # still tracks the target ramp (benchmarks/target_ramp.py --init 3 --lr 0.03).
    gate_lr: float = 3e-2  # log-alphas (and the Lagrange multipliers)
    init_log_alpha: float = 3.0  # keep probability sigmoid(3 + 1.6) = 0.99
    log_alpha_clamp: list[float] = field(
        default_factory=lambda: [-4.605170, 4.605170]
    )  # ln .01..100
    target_warmup: float = 0.3  # fraction of the prune phase over which the target ramps up
    target_start: str = "initial"  # ramp from the gates' initial expected sparsity, or "zero"
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints
    # Keep a hidden width that is a multiple of this (the nearest one): CPU matmuls over odd
    # widths run at about half speed (benchmarks/round_hidden.py); FFN units fill the budget as
    # usual. 1 = off.
    round_hidden: int = 32
    # lagrangian: learned multipliers (CoFi); shift: after each gate step one common offset of
    # every log-alpha makes the expected sparsity equal the target (gates/target_shift.py);
    # hold: the multipliers while the target ramps, the offset once it has reached the sparsity;
    # price: the offset at every step for the level, and lambda1, learned from how far each
    # gate step alone moved that level, as the price of sparsity the gates weigh their task
    # gradient against (gates/price.py)
    constraint: str = "lagrangian"
    # uniform: every log-alpha at init_log_alpha (CoFi); fisher: heads and FFN units ranked by
    # the warm model's Fisher score per parameter, from init_log_alpha down to
    # init_log_alpha - gate_init_span (gates/importance_init.py)
    gate_init: str = "uniform"
    gate_init_span: float = 4.0
    method: str = "gates"  # gates (hard-concrete, CoFi-class) | fisher (retraining-free)
    warm: TrainConfig = field(default_factory=_warm)  # dense fine-tune before gates
    prune: TrainConfig = field(default_factory=_prune_phase)  # gates + weights
    final: TrainConfig = field(default_factory=_final)  # the small model, after surgery

    def __post_init__(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(
                f"prune.sparsity must be in (0, 1) (the fraction removed), got {self.sparsity}"
            )
        bad = [k for k in self.kinds if k not in GATE_KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"prune.kinds: unknown {bad}; choose from {list(GATE_KINDS)}")
        if self.target_start not in ("initial", "zero"):
            raise ConfigError(
                f"prune.target_start must be initial or zero, got {self.target_start!r}"
            )
        if not 0.0 <= self.target_warmup <= 1.0:
            raise ConfigError(f"prune.target_warmup must be in [0, 1], got {self.target_warmup}")
        lo_hi = self.log_alpha_clamp
        if len(lo_hi) != 2 or not lo_hi[0] < self.init_log_alpha < lo_hi[1]:
            raise ConfigError(
                f"prune.log_alpha_clamp must be [low, high] around init_log_alpha, got {lo_hi}"
            )
        if self.constraint not in CONSTRAINTS:
            raise ConfigError(
                f"prune.constraint must be one of {list(CONSTRAINTS)}, got {self.constraint!r}"
            )
        if self.gate_init not in ("uniform", "fisher"):
            raise ConfigError(f"prune.gate_init must be uniform or fisher, got {self.gate_init!r}")
        if self.gate_init == "fisher" and not {"head", "ffn_unit"} <= set(self.kinds):
            raise ConfigError(
                "prune.gate_init=fisher ranks heads and FFN units: keep head and ffn_unit in "
                "prune.kinds"
            )
        if self.gate_init == "fisher" and self.method == "fisher":
            raise ConfigError(
                "prune.gate_init=fisher starts gates; prune.method=fisher has none: leave "
                "gate_init at uniform"
            )
        if self.gate_init_span <= 0:
            raise ConfigError(f"prune.gate_init_span must be > 0, got {self.gate_init_span}")
        if self.method not in PRUNE_METHODS:
            raise ConfigError(
                f"prune.method must be one of {list(PRUNE_METHODS)}, got {self.method!r}"
            )
        if self.round_hidden < 1:
            raise ConfigError(f"prune.round_hidden must be >= 1, got {self.round_hidden}")
        if self.gate_lr <= 0 or self.checkpoint_every < 1:
            raise ConfigError("prune.gate_lr must be positive and prune.checkpoint_every >= 1")


@dataclass
class DistillConfig:
    """Distillation from a dense teacher fine-tuned on the same budget (CoFi-style)."""

    enabled: bool = False
    teacher: str | None = None  # a fine-tuned model directory; None: fine-tune one first
    temperature: float = 2.0
    ce_weight: float = 0.0  # hard-label CE; CoFi drops it when distilling, and so do we
    kl_weight: float = 0.1  # logit KL (CoFi's distill_ce_loss_alpha)
    layer_weight: float = 0.9  # layerwise hidden-state MSE (CoFi's distill_loss_alpha)
    # fisher-ft: logit KL to the dense model on batches of data.unlabelled texts beside the
    # labelled batch (hard-label CE) in the final fine-tune; 0 = off (with
    # unlabelled_layer_weight also 0, no batch is drawn)
    unlabelled_weight: float = 1.0
    unlabelled_batch_size: int = 64
    # and hidden-state distillation on the same batches: the relative MSE of every layer's
    # output to the teacher's, layer i to layer i (train/unlabelled_distill.py); 0 = off
    unlabelled_layer_weight: float = 0.0
    # checkpoint selection in that final fine-tune: hold out this many unlabelled texts (never
    # distilled on) and track, beside the dev loss, dev loss + KL(teacher || student) on them
    # (train/agreement.py); `select` is the rule whose best state the run keeps. 0 = no holdout
    agreement_texts: int = 0
    select: str = "dev_loss"  # dev_loss | agreement (needs agreement_texts > 0)

    @property
    def on_unlabelled(self) -> bool:
        """Whether a term reads the unlabelled batches (logit KL or layer states)."""
        return self.unlabelled_weight > 0 or self.unlabelled_layer_weight > 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be positive, got {self.temperature}")
        if self.unlabelled_batch_size < 1:
            raise ConfigError("distill.unlabelled_batch_size must be >= 1")
        weights = (self.ce_weight, self.kl_weight, self.layer_weight, self.unlabelled_weight)
        if min(*weights, self.unlabelled_layer_weight) < 0:
            raise ConfigError("distill weights must be >= 0")
        if self.agreement_texts < 0:
            raise ConfigError("distill.agreement_texts must be >= 0 (0: no held-out texts)")
        if self.select not in SELECT_RULES:
            raise ConfigError(
                f"distill.select must be one of {list(SELECT_RULES)}, got {self.select!r}"
            )
        if self.select == "agreement" and not self.agreement_texts:
            raise ConfigError(
                "distill.select=agreement needs held-out texts: set distill.agreement_texts "
                "(e.g. 512; the fisher presets with --unlabelled only)"
            )


@dataclass
class FisherConfig:
    """Retraining-free masks (prune.method: fisher): Fisher scores of head and FFN-unit masks
    of the dense fine-tuned model, mask search, rearrangement and least-squares mask tuning."""

    examples: int = 2048  # texts scored (the budget's training texts first, then unlabelled)
    score_unlabelled: bool = True  # score --unlabelled texts too, with the teacher's predictions
    rearrange: bool = True  # swap units within a layer by the off-diagonal Fisher
    tune: bool = True  # layer-wise least-squares mask tuning
    tune_examples: int = 512  # texts the tuning reconstructs (a subset of the scored ones)
    damping: float = 1e-3  # ridge towards the binary mask, relative to the Gram diagonal
    # every layer keeps at least layer_floor x the budget's average fraction of its heads and
    # of its FFN units (0: none; the diagonal Fisher can empty whole layers)
    layer_floor: float = 0.0
    final: bool = False  # fine-tune the small model afterwards (prune.final)
    batch_size: int = 32
    # gradual: sparsities reached first, in order, each followed by a fine-tune of
    # step_epochs (prune.final's recipe, distillation included; needs final: true); later
    # steps keep only units the earlier ones kept. []: one step to prune.sparsity
    steps: list[float] = field(default_factory=list)
    step_epochs: float = 10.0

    def __post_init__(self) -> None:
        if self.examples < 1 or self.tune_examples < 1 or self.batch_size < 1:
            raise ConfigError("fisher.examples, tune_examples and batch_size must be >= 1")
        if any(not 0.0 < s < 1.0 for s in self.steps) or self.steps != sorted(set(self.steps)):
            raise ConfigError(f"fisher.steps are increasing sparsities in (0, 1), got {self.steps}")
        if self.step_epochs <= 0:
            raise ConfigError(f"fisher.step_epochs must be > 0, got {self.step_epochs}")
        if self.damping <= 0:  # a unit that is always 0 makes the normal equations singular
            raise ConfigError(f"fisher.damping must be > 0, got {self.damping}")
        if not 0.0 <= self.layer_floor <= 1.0:
            raise ConfigError(f"fisher.layer_floor is in [0, 1], got {self.layer_floor}")


@dataclass
class RunConfig:
    """A whole run: what to start from, what data, how to train, where to write."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # dense fine-tune and teacher
    preset: str = "cofi"
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    fisher: FisherConfig = field(default_factory=FisherConfig)
    seed: int = 0
    out: str | None = None
    overwrite: bool = False  # replace an existing output directory
    smoke: bool = False  # every phase runs only a few steps: an end-to-end install check

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass, YAML, dotted overrides


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")


def _list(value: Any, tp: Any, key: str) -> list:
    (item_tp,) = typing.get_args(tp)
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.split(",")) if v]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    return [_coerce(v, item_tp, f"{key}[]") for v in value]


def _section(value: Any, tp: Any, key: str) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
    return from_dict(tp, value, prefix=f"{key}.")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _float(value: Any, key: str) -> float:
    if _number(value):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected a number, got {value!r}")


def _int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: expected an integer, got {value!r}")


def _str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if _number(value):
        return str(value)
    raise ConfigError(f"{key}: expected a string, got {value!r}")


_SCALARS = {bool: _bool, float: _float, int: _int, str: _str, Any: lambda value, key: value}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotated type `tp`, converting ints to floats where expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(value, tp, key)
    if origin is list:
        return _list(value, tp, key)
    if dataclasses.is_dataclass(tp):
        return _section(value, tp, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; "
            f"valid keys here: {[prefix + n for n in names]}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the key check above
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML/JSON friendly)."""
    return dataclasses.asdict(cfg)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of `update` win, nested mappings merge key by key."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.lr=3e-5", "data.budget=64"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=3e-5)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return tree


def load_yaml(
    path: str | Path, what: str = "config file", given: str = "--config"
) -> dict[str, Any]:
    """Read a YAML file of keys (a config, a study spec) into a dict, with clear errors for
    missing or malformed files; `what` names the file, `given` where its path came from."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {p} not found: check the path given to {given}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {p} is not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


def build_config(
    cls: type[T],
    file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults < `base` (a preset) < config file < command-line flags < dotted overrides,
    validated once at the end."""
    data: dict[str, Any] = to_dict(cls())
    if base:
        data = merge(data, base)
    if file is not None:
        data = merge(data, load_yaml(file))
    if flags:
        data = merge(data, flags)
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
