"""Loading user data: CSV/TSV/JSONL files and `datasets` folders, single sentences and pairs."""

import json

import datasets
import pytest

from tlprune.config import DataConfig
from tlprune.data.sources import load_task
from tlprune.errors import DataError


def write_csv(path, rows, sep=","):
    header = sep.join(rows[0].keys())
    path.write_text(header + "\n" + "\n".join(sep.join(map(str, r.values())) for r in rows) + "\n")
    return path


ROWS = [{"sentence": f"text {i}", "y": ["neg", "pos"][i % 2]} for i in range(50)]


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_tsv_with_string_labels(tmp_path, suffix, sep):
    f = write_csv(tmp_path / f"d{suffix}", ROWS, sep)
    task = load_task(DataConfig(target=str(f), text_column="sentence", label_column="y"))
    assert task.label_names == ["neg", "pos"]
    assert len(task.train) + len(task.test) == 50
    assert len(task.test) == 10
    assert set(task.train.column_names) == {"text", "label"}
    assert task.notes and "test split" in task.notes[0]


def test_jsonl_pairs_with_test_file(tmp_path):
    def dump(path, n):
        path.write_text(
            "\n".join(json.dumps({"a": f"q{i}", "b": f"p{i}", "label": i % 3}) for i in range(n))
        )
        return path

    train, test = dump(tmp_path / "train.jsonl", 30), dump(tmp_path / "test.jsonl", 9)
    cfg = DataConfig(target=str(train), test_file=str(test), text_column="a", text_pair_column="b")
    task = load_task(cfg)
    assert task.has_pair and task.num_labels == 3
    assert task.label_names == ["0", "1", "2"]
    assert task.train[0] == {"text": "q0", "text_pair": "p0", "label": 0}
    assert len(task.test) == 9


def test_saved_datasetdict_with_classlabel(tmp_path):
    feats = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["x", "y"])}
    )
    mk = lambda n: datasets.Dataset.from_dict(  # noqa: E731
        {"text": [f"t{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}, features=feats
    )
    datasets.DatasetDict(train=mk(20), validation=mk(6)).save_to_disk(str(tmp_path / "dd"))
    task = load_task(DataConfig(target=str(tmp_path / "dd")))
    assert task.label_names == ["x", "y"] and len(task.test) == 6
    assert "validation" in task.notes[0]


def test_saved_single_dataset_gets_split(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    task = load_task(DataConfig(target=str(tmp_path / "ds")))
    assert len(task.test) == 8


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text(""), "no rows|cannot read"),
        (lambda p: p.write_text("sentence,y\n"), "no rows"),
        (lambda p: write_csv(p, [{"txt": "a", "y": 1}] * 4), "text column 'sentence' not found"),
        (lambda p: write_csv(p, [{"sentence": "a", "lab": 1}] * 4), "label column 'y' not found"),
        (lambda p: write_csv(p, [{"sentence": "a", "y": "pos"}] * 4), "single label"),
    ],
)
def test_bad_files(tmp_path, setup, match):
    f = tmp_path / "d.csv"
    setup(f)
    with pytest.raises(DataError, match=match):
        load_task(DataConfig(target=str(f), text_column="sentence", label_column="y"))


def test_test_label_unseen_in_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    test = write_csv(tmp_path / "test.csv", [{"sentence": "z", "y": "neutral"}])
    cfg = DataConfig(
        target=str(train), test_file=str(test), text_column="sentence", label_column="y"
    )
    with pytest.raises(DataError, match=r"\['neutral'\] never occur in the training split"):
        load_task(cfg)


def test_unreadable_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\x00\xff{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_task(DataConfig(target=str(f)))


def test_unknown_name_and_not_a_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_task(DataConfig(target="nope"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"not a `datasets\.save_to_disk` folder"):
        load_task(DataConfig(target=str(tmp_path / "folder")))


def test_hub_id_unreachable_is_a_clear_error(monkeypatch):
    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="cannot load hub dataset 'someone/sst2'"):
        load_task(DataConfig(target="someone/sst2"))
