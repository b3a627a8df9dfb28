"""The phases of a prune run, in order; each takes the run's state and adds what it made.

    teacher -> auxiliary stage -> warm fine-tune -> prune -> surgery and final fine-tune

A phase that has nothing to do for the run's config (no distillation, no sequential coupling)
returns at once; a phase whose output is already in the work directory reuses it (resume).
"""

from tlprune.train.phases.aux import aux_phase
from tlprune.train.phases.final import final_phase
from tlprune.train.phases.prune import prune_phase
from tlprune.train.phases.teacher import teacher_phase
from tlprune.train.phases.warm import warm_phase

PIPELINE = (teacher_phase, aux_phase, warm_phase, prune_phase, final_phase)

__all__ = ["PIPELINE"]
