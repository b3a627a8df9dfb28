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
        """The fine-tune's report; for a pruned model, the dev metrics of the model that ships
        (after the final fine-tune) and the test metrics."""
        if not self.pruned:
            return self.report
        return {"dev": self.report["dev"]["final"], "test": self.report["test"]}
