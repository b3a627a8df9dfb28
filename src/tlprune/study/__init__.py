"""Studies: grids of runs from a spec, a results store, search, and the report."""

from tlprune.study.runner import StudyResult, run_study
from tlprune.study.spec import StudySpec, load_spec, parse_spec

__all__ = ["StudyResult", "StudySpec", "load_spec", "parse_spec", "run_study"]
