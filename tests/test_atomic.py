"""SIGKILL (and Ctrl-C) in the middle of writing: `data prepare`, `export` and `bench --json`
(a study cell: tests/test_study.py) leave nothing under the final name that looks complete,
and what was there stays intact.

Each kill happens in a separate process at the worst moment: inside the write itself (a
patched writer puts part of the output down, then the process kills itself as `kill -9` would).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.test_bundled import make_vader_sdist
from tests.test_export import pruned  # noqa: F401 - the module fixture

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, cache: Path) -> int:
    env = {**os.environ, "TLPRUNE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    script = "import os, signal\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], env=env, timeout=300).returncode


KILL = "os.kill(os.getpid(), signal.SIGKILL)"


def test_sigkill_during_data_prepare_leaves_it_unprepared_and_a_rerun_works(tmp_path):
    from tlprune.data import bundled

    archive = make_vader_sdist(tmp_path / "v.tar.gz")
    cache = tmp_path / "cache"
    code = _run(
        f"""
        import datasets
        from tlprune.data import bundled
        real = datasets.DatasetDict.save_to_disk
        def half(self, path, **kw):
            real(self, path, **kw)  # the data is down, the marker not yet
            {KILL}
        datasets.DatasetDict.save_to_disk = half
        bundled.prepare("vader-nyt", archive={str(archive)!r})
        """,
        cache,
    )
    assert code == -9
    os.environ["TLPRUNE_CACHE"] = str(cache)
    try:
        assert not bundled.is_prepared("vader-nyt")
        assert not bundled.dataset_dir("vader-nyt").exists()
        bundled.prepare("vader-nyt", archive=archive)
        assert bundled.is_prepared("vader-nyt")
    finally:
        del os.environ["TLPRUNE_CACHE"]


@pytest.mark.parametrize("how", ["sigkill", "ctrl-c"])
def test_interrupted_export_leaves_no_variant(tmp_path, pruned, how):  # noqa: F811
    out = tmp_path / "variant"
    stop = KILL if how == "sigkill" else "raise KeyboardInterrupt"
    code = _run(
        f"""
        from tlprune.train import export_job
        real = export_job._write_variant
        def half(*a, **k):
            real(*a, **k)  # every file of the variant written, the report not yet
            {stop}
        export_job._write_variant = half
        export_job.export({str(pruned)!r}, {str(out)!r}, trim_vocab=[])
        """,
        tmp_path / "cache",
    )
    assert code != 0
    assert not out.exists()
    if how == "ctrl-c":  # the temporary sibling is cleaned up too
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".variant")] == []


def test_sigkill_while_bench_writes_json_keeps_the_previous_file(tmp_path, tiny_bert_dir):
    from tests.test_bench import _pruned_dir

    model = _pruned_dir(tiny_bert_dir, tmp_path)
    target = tmp_path / "bench.json"
    target.write_text(json.dumps({"results": ["previous"]}))
    code = _run(
        f"""
        from pathlib import Path
        from tlprune.bench import BenchConfig, bench
        real = Path.write_text
        def half(self, text, *a, **k):
            real(self, text[: len(text) // 2], *a, **k)  # half the JSON is on disk
            {KILL}
        Path.write_text = half
        cfg = BenchConfig(backends=["eager"], shapes=[[1, 8]], threads=1)
        bench({str(model)!r}, {str(tiny_bert_dir)!r}, cfg, {str(target)!r}, progress=False)
        """,
        tmp_path / "cache",
    )
    assert code == -9
    assert json.loads(target.read_text()) == {"results": ["previous"]}
