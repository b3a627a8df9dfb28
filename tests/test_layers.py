"""The package's layers, checked with grimp: a module imports only from its own layer or the
layers below (function-level imports count too).

    cli, __main__ -> api -> train, study -> transfer, gates, surgery, bench, arch, report,
    presets -> modeling, data, models -> config -> errors, paths
"""

import pytest

grimp = pytest.importorskip("grimp")

LAYERS = [
    ("tlprune.__main__", "tlprune.cli"),
    ("tlprune.api",),
    ("tlprune.train", "tlprune.study"),
    ("tlprune.transfer", "tlprune.gates", "tlprune.surgery", "tlprune.bench", "tlprune.arch",
     "tlprune.report", "tlprune.presets"),
    ("tlprune.modeling", "tlprune.data", "tlprune.models"),
    ("tlprune.config",),
    ("tlprune.errors", "tlprune.paths", "tlprune.registry"),
]  # fmt: skip

KNOWN: set[tuple[str, str]] = set()  # exceptions (none)


def _layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in layer):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_no_module_imports_from_a_layer_above_it():
    graph = grimp.build_graph("tlprune")
    upward = []
    for imp in graph.find_matching_direct_imports(import_expression="tlprune.** -> tlprune.**"):
        a, b = imp["importer"], imp["imported"]
        if _layer_of(a) > _layer_of(b) and (a, b) not in KNOWN:
            upward.append(f"{a} -> {b}")
    assert upward == [], "imports from a higher layer:\n" + "\n".join(sorted(set(upward)))


def test_every_top_level_module_has_a_layer():
    graph = grimp.build_graph("tlprune")
    for module in graph.modules:
        if module.count(".") == 1:
            _layer_of(module)
