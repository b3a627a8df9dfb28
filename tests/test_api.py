"""The typed API: one function per CLI command, the lazy top-level names point at it."""

import tlprune
import tlprune.api as api


def test_every_command_has_an_api_function_and_the_top_level_names_are_those():
    for name in ("finetune", "prune", "evaluate", "export", "bench", "study", "report",
                 "prepare_data", "bundled_datasets", "load"):  # fmt: skip
        assert callable(getattr(api, name)), name
    for name in tlprune._API:
        assert getattr(tlprune, name) is getattr(api, name)
    assert tlprune.RunResult is api.RunResult


def test_bundled_datasets_lists_every_registered_dataset():
    from tlprune.data import bundled

    rows = api.bundled_datasets()
    assert [r["name"] for r in rows] == sorted(bundled.REGISTRY)
    assert all({"task", "labels", "prepared"} <= set(r) for r in rows)
