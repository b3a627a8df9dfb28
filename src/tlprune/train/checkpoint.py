"""Resumable checkpoints: module weights (safetensors), optimizer states, RNG states and our
progress, written to a temporary directory and renamed, so a kill never leaves a broken
'latest'. Explicit about what is saved, so a phase restores exactly its own objects."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tlprune.errors import TlpruneError

MARKER = "progress.json"


@dataclass
class Progress:
    """Where a phase stands: optimizer steps done, the epoch, and batches used in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: dict[str, Any] = field(default_factory=dict)  # best dev metrics so far, with step
    # largest |expected sparsity - target| once the target ramp has ended (gate phases)
    worst_gap: float | None = None


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors for safetensors, which refuses shared memory: a tensor met again (weights
    tied between the branches of a transfer run) is saved as a copy under its second name."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        t = v.detach().cpu()
        out[k] = t.clone() if t.data_ptr() in seen else t.contiguous()
        seen.add(t.data_ptr())
    return out


class CheckpointManager:
    """Keeps the last `keep` checkpoints of a phase under `root/step-NNNNNN`."""

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("step-*") if (p / MARKER).is_file())
        return done[-1] if done else None

    def save(
        self,
        progress: Progress,
        modules: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write one checkpoint atomically (call on the main process only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{progress.step:06d}"
        tmp = self.root / f".step-{progress.step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, module in modules.items():
            save_file(_unshared(module.state_dict()), tmp / f"{name}.safetensors")
        torch.save(
            {"optimizers": {n: o.state_dict() for n, o in optimizers.items()}, "rng": _rng_state()},
            tmp / "state.pt",
        )
        for name, write in (extra or {}).items():
            write(tmp / name)
        (tmp / MARKER).write_text(json.dumps(asdict(progress)))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        others = sorted(p for p in self.root.glob("step-*") if p != final)
        for old in others[: max(0, len(others) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load(
        self,
        path: Path,
        modules: dict[str, torch.nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
    ) -> Progress:
        """Restore modules, optimizers and RNG states from `path`; return its progress."""
        try:
            progress = Progress(**json.loads((path / MARKER).read_text()))
            for name, module in modules.items():
                module.load_state_dict(load_file(path / f"{name}.safetensors"))
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
            for name, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            _set_rng_state(state["rng"])
        except (
            OSError,
            ValueError,
            KeyError,
            RuntimeError,
            TypeError,
            EOFError,
            SafetensorError,
        ) as exc:
            raise TlpruneError(
                f"checkpoint {path} is corrupt or incompatible ({exc.__class__.__name__}); "
                "delete it to resume from the one before, or start again without --resume"
            ) from None
        return progress
