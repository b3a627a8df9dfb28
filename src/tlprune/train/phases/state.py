"""What a prune run's phases share: its inputs, and what each phase leaves for the next."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlprune.config import RunConfig


@dataclass
class PruneRun:
    """One prune run while it runs. Inputs first; then each phase's output, None until made."""

    cfg: RunConfig
    task: Any
    budget: Any
    tokenizer: Any
    aux_data: list[Any]
    accelerator: Any
    work: Path
    resume: bool = False
    on_step: Any = None  # callbacks after each optimizer step (tests; progress displays)
    on_aux_step: Any = None
    seconds: dict[str, float] = field(default_factory=dict)
    teacher: Any = None  # teacher phase: the distillation teacher
    stage: Any = None  # auxiliary phase: AuxStageResult
    model: Any = None  # warm phase: the full-size model; prune phase: at its best dev state
    dense_report: dict | None = None
    phase: Any = None  # prune phase: PrunePhaseResult (masks, dev, expected sparsity)
    small: Any = None  # final phase: the pruned, fine-tuned model
    final: Any = None  # final phase: its LoopResult
    test: tuple[Any, Any] | None = None  # final phase: test logits and labels

    @property
    def log_path(self) -> Path:
        return self.work / "log.jsonl"

    @property
    def shard(self) -> tuple[int, int]:
        """(this process's rank, processes): the slice of each auxiliary batch it draws."""
        return self.accelerator.process_index, self.accelerator.num_processes

    def loaders(self, phase: int, train_cfg: Any) -> tuple[Any, Any, Any]:
        """Fresh seeded loaders per phase: a resumed run replays later phases identically."""
        from accelerate.utils import set_seed

        from tlprune.train.finetune import make_loaders

        cfg = self.cfg
        set_seed(cfg.seed + phase)
        phase_cfg = dataclasses.replace(cfg, train=train_cfg, seed=cfg.seed + phase)
        return make_loaders(self.task, self.budget, self.tokenizer, phase_cfg, cfg.smoke)

    def gate_config(self) -> Any:
        from tlprune.gates import GateConfig

        pc = self.cfg.prune
        return GateConfig(
            kinds=list(pc.kinds),
            init_log_alpha=pc.init_log_alpha,
            log_alpha_min=pc.log_alpha_clamp[0],
            log_alpha_max=pc.log_alpha_clamp[1],
        )


def save_main(accelerator, model, path: Path, tensors: dict | None = None) -> None:
    """Save a model directory (and `tensors`: file name -> state) atomically from the main
    process; everyone waits for it."""
    from safetensors.torch import save_file

    from tlprune.paths import atomic_dir

    if accelerator.is_main_process:
        with atomic_dir(path, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            for name, state in (tensors or {}).items():
                save_file(state, tmp / name)
    accelerator.wait_for_everyone()
