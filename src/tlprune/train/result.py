"""What every training run returns: one type for the dense fine-tune and the pruned model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    """A finished run: its model, tokenizer, report (what the run directory's report file
    holds) and directory (None for an unsaved fine-tune)."""

    model: Any
    tokenizer: Any
    report: dict
    out_dir: Path | None

    @property
    def pruned(self) -> bool:
        """A pruned model (its report has a sparsity section), or the dense fine-tune."""
        return "sparsity" in self.report

    @property
    def metrics(self) -> dict:
        """Dev (of the model that ships) and test metrics."""
        dev = self.report["dev"]
        return {"dev": dev.get("final", dev) if self.pruned else dev, "test": self.report["test"]}
