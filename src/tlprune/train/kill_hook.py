"""A test hook: TLPRUNE_KILL_AT=PHASE:STEP kills the process with SIGKILL right after step
STEP of phase PHASE (prune, aux, warm, final, teacher), as `kill -9` would, so that a resume
in a new process can be compared with an uninterrupted run."""

from __future__ import annotations

import os
import signal


def kill_if_asked(phase: str, step: int) -> None:
    if os.environ.get("TLPRUNE_KILL_AT") == f"{phase}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
