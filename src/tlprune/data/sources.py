"""Load a classification task from any source into one shape: train/test `Dataset`s with
columns `text` [, `text_pair`], `label` (int), plus the label names.

Sources: a bundled dataset name, a CSV/TSV/JSONL file, a `datasets.save_to_disk` folder, or a
Hugging Face hub dataset id (`owner/name`, where a hub is reachable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlprune.config import DataConfig
from tlprune.data import bundled
from tlprune.data.split import stratified_split
from tlprune.errors import DataError

FILE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
DEFAULT_MAX_LENGTH = 128


@dataclass
class TaskData:
    """A classification task ready for budgets and training."""

    name: str
    train: Any  # datasets.Dataset
    test: Any  # datasets.Dataset
    label_names: list[str]
    has_pair: bool
    max_length: int
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_task(cfg: DataConfig, values: str | None = None) -> TaskData:
    """Resolve `cfg.target` (name, file, folder or hub id) and normalise its columns.
    `values`: a regression source, whose numeric column of that name is kept in the train
    split instead of class labels (a regression auxiliary; no label column needed)."""
    target = cfg.target
    path = Path(target).expanduser()
    if target in bundled.REGISTRY:
        return _check_values(_load_bundled(cfg), values, target)
    if path.suffix.lower() in FILE_SUFFIXES or path.is_file():
        return _load_files(cfg, path, values)
    if path.is_dir():
        return _load_saved(cfg, path, values)
    if "/" in target and not target.startswith((".", "/", "~")):
        return _load_hub(cfg, values)
    raise DataError(
        f"unknown dataset {target!r}: use one of {sorted(bundled.REGISTRY)}, a CSV/TSV/JSONL "
        "file, a `datasets` folder, or a hub id owner/name"
    )


def _load_bundled(cfg: DataConfig) -> TaskData:
    import datasets

    info = bundled.get(cfg.target)
    if not bundled.is_prepared(cfg.target):
        bundled.prepare(cfg.target)
    dd = datasets.load_from_disk(str(bundled.dataset_dir(cfg.target)))
    return TaskData(
        name=cfg.target,
        train=dd["train"],
        test=dd["test"],
        label_names=list(info.labels),
        has_pair=False,
        max_length=cfg.max_length or info.max_length,
        source=f"bundled ({info.package.requirement})",
    )


def _read_table(path: Path):
    import datasets
    import pandas as pd

    if not path.is_file():
        raise DataError(f"data file {path} not found: check the path")
    sep = FILE_SUFFIXES.get(path.suffix.lower())
    try:
        if path.suffix.lower() in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=path.suffix.lower() == ".jsonl", dtype=False)
        else:
            frame = pd.read_csv(path, sep=sep or ",", dtype=str, keep_default_na=False)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path} as {path.suffix or 'a table'}: {exc}") from None
    if len(frame) == 0:
        raise DataError(f"data file {path} has no rows: give a file with labelled examples")
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def _load_files(cfg: DataConfig, path: Path, values: str | None) -> TaskData:
    train = _read_table(path)
    if cfg.test_file:
        test = _read_table(Path(cfg.test_file).expanduser())
        notes = [f"test split from {cfg.test_file}"]
    else:
        train, test = _split_off_test(train, cfg, values is None)
        notes = [f"test split: seeded stratified {cfg.test_fraction:.0%} of {path.name}"]
    return _normalise(cfg, str(path), train, test, f"file {path}", notes, values)


def _load_saved(cfg: DataConfig, path: Path, values: str | None) -> TaskData:
    import datasets

    try:
        obj = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"{path} is not a `datasets.save_to_disk` folder ({exc.__class__.__name__}); "
            "give a CSV/TSV/JSONL file or a saved dataset"
        ) from None
    return _from_dataset_obj(cfg, obj, f"datasets folder {path}", values)


def _load_hub(cfg: DataConfig, values: str | None) -> TaskData:
    import datasets

    try:
        obj = datasets.load_dataset(cfg.target)
    except Exception as exc:  # the hub raises many types; all mean "cannot get it here"
        raise DataError(
            f"cannot load hub dataset {cfg.target!r} ({exc.__class__.__name__}); without hub "
            "access, save it with `save_to_disk` elsewhere and pass the folder"
        ) from None
    return _from_dataset_obj(cfg, obj, f"hub dataset {cfg.target}", values)


def _from_dataset_obj(
    cfg: DataConfig, obj: Any, source: str, values: str | None = None
) -> TaskData:
    import datasets

    notes: list[str] = []
    if isinstance(obj, datasets.Dataset):
        train, test = _split_off_test(obj, cfg, values is None)
        notes.append(f"test split: seeded stratified {cfg.test_fraction:.0%} of the dataset")
    else:
        if "train" not in obj:
            raise DataError(f"{source} has splits {list(obj)} but no 'train' split")
        train = obj["train"]
        test_name = "test" if "test" in obj else "validation" if "validation" in obj else None
        if test_name is None:
            train, test = _split_off_test(train, cfg, values is None)
            notes.append(f"test split: seeded stratified {cfg.test_fraction:.0%} of train")
        else:
            test = obj[test_name]
            notes.append(f"test split: the dataset's '{test_name}' split")
    return _normalise(cfg, cfg.target, train, test, source, notes, values)


def _check_values(task: TaskData, values: str | None, source: str) -> TaskData:
    if values is not None and values not in task.train.column_names:
        _missing_values(values, task.train.column_names, source)
    return task


def _missing_values(column: str, available: list[str], source: str) -> None:
    raise DataError(
        f"value column {column!r} not found in the train split of {source} (columns: "
        f"{available}); set the auxiliary's value_column to a numeric column"
    )


def _labels_of(ds: Any, column: str) -> list[Any]:
    return list(ds[column])


def _split_off_test(ds: Any, cfg: DataConfig, stratify: bool = True):
    """A seeded test split: stratified by label, or (regression sources) uniform."""
    if not stratify:
        labels = ["all"] * len(ds)
    elif cfg.label_column not in ds.column_names:
        _missing(cfg.label_column, "label", ds.column_names, "label_column")
    else:
        labels = [str(v) for v in _labels_of(ds, cfg.label_column)]
    if len(labels) < 2:
        raise DataError("the dataset has fewer than 2 rows: cannot split off a test set")
    ids = {v: i for i, v in enumerate(sorted(set(labels)))}
    n_test = max(1, round(len(labels) * cfg.test_fraction))
    test_idx, train_idx = stratified_split([ids[v] for v in labels], n_test, cfg.split_seed)
    return ds.select(train_idx), ds.select(test_idx)


def _missing(column: str, role: str, available: list[str], key: str, where: str = "") -> None:
    raise DataError(
        f"{role} column {column!r} not found{where} (columns: {available}); "
        f"set data.{key}=NAME to the right column"
    )


def _check_columns(cfg: DataConfig, train, test, source: str, values: str | None) -> None:
    wanted = [("text_column", cfg.text_column, "text")]
    if values is None:
        wanted.append(("label_column", cfg.label_column, "label"))
    elif values not in train.column_names:
        _missing_values(values, train.column_names, source)
    if cfg.text_pair_column:
        wanted.append(("text_pair_column", cfg.text_pair_column, "text pair"))
    for split_name, ds in (("train", train), ("test", test)):
        if len(ds) == 0:
            raise DataError(f"the {split_name} split of {source} is empty")
        for key, column, role in wanted:
            if column not in ds.column_names:
                _missing(column, role, ds.column_names, key, f" in the {split_name} split")


def _labels(cfg: DataConfig, train, test, source: str) -> tuple[list[str], list[int], list[int]]:
    """Label names and the label ids of both splits: a ClassLabel's own names, or the values
    seen in training, sorted (numbers by value)."""
    import datasets

    feature = train.features[cfg.label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), list(train[cfg.label_column]), list(test[cfg.label_column])
    raw_train = [_label_key(v) for v in train[cfg.label_column]]
    raw_test = [_label_key(v) for v in test[cfg.label_column]]
    if any(v == "" for v in raw_train + raw_test):
        raise DataError(f"some rows of {source} have an empty label: fill or remove them")
    label_names = sorted(set(raw_train), key=_sort_key)
    unseen = sorted(set(raw_test) - set(label_names), key=_sort_key)
    if unseen:
        raise DataError(
            f"test label(s) {unseen} never occur in the training split of {source}: "
            "add training examples of them or drop them from test"
        )
    index = {v: i for i, v in enumerate(label_names)}
    return label_names, [index[v] for v in raw_train], [index[v] for v in raw_test]


def _normalise(
    cfg: DataConfig,
    name: str,
    train,
    test,
    source: str,
    notes: list[str],
    values: str | None = None,
) -> TaskData:
    import datasets

    _check_columns(cfg, train, test, source, values)
    if values is not None:  # regression: no classes; the values travel in the train split
        label_names, train_y, test_y = [], [0] * len(train), [0] * len(test)
    else:
        label_names, train_y, test_y = _labels(cfg, train, test, source)
    if len(label_names) < 2 and values is None:
        raise DataError(f"{source} has a single label {label_names}: classification needs two")

    def clean(ds, ys, split_name):
        cols = {"text": [_text(v, split_name, source) for v in ds[cfg.text_column]]}
        if cfg.text_pair_column:
            cols["text_pair"] = [_text(v, split_name, source) for v in ds[cfg.text_pair_column]]
        cols["label"] = ys
        if values is not None and split_name == "train":  # only the train split is used
            cols[values] = list(ds[values])
        return datasets.Dataset.from_dict(cols)

    return TaskData(
        name=name,
        train=clean(train, train_y, "train"),
        test=clean(test, test_y, "test"),
        label_names=label_names,
        has_pair=bool(cfg.text_pair_column),
        max_length=cfg.max_length or DEFAULT_MAX_LENGTH,
        source=source,
        notes=notes,
    )


def _label_key(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _sort_key(v: str):
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _text(v: Any, split_name: str, source: str) -> str:
    if v is None:
        raise DataError(f"a row of the {split_name} split of {source} has no text: fill or drop it")
    return str(v)
