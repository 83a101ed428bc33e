"""CSV schemas and parsers of the MER2026 release (tracks 1-3).

Every reader takes a path, checks the header against the documented schema and returns
immutable rows in file order. Problems raise :class:`ReleaseError` with the full path, the
row (1-based data row plus the physical line, since free text may span lines), the column,
what was expected and what was found.

Schemas follow the official release's CSV headers (SCHEMAS below). Free text (subtitles, track-3 descriptions)
may hold commas, quotes and newlines, so everything goes through the ``csv`` module.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from tfds_builders.common import ReleaseError

__all__ = [
    "ReleaseError", "TRACK1_LABELS", "PREFERENCES", "SCHEMAS", "string_to_list",
    "Subtitle", "Track1Row", "Track2Row", "PreferenceRow", "Track3CandidateRow",
    "iter_csv_rows", "read_subtitles", "read_track1_labels", "read_names",
    "read_track2_openset", "read_track3_preferences", "read_track3_candidates",
]


# Index order is the one of MERTools' globals.py (emos_mer); models map strings to these ids.
TRACK1_LABELS: tuple[str, ...] = ("neutral", "angry", "happy", "sad", "worried", "surprise")
# a1 -> 0, a2 -> 1, same -> 2, as in MERTools' Track-3 utils/common.py.
PREFERENCES: tuple[str, ...] = ("a1", "a2", "same")

# Verbatim headers of every file the release (and the expected test-label files) contains.
SCHEMAS: dict[str, tuple[str, ...]] = {
    "subtitle_chieng.csv": ("name", "chinese", "english"),
    "track1_train.csv": ("name", "discrete"),
    "track1_track2_candidate.csv": ("name",),
    "track2_train_human.csv": ("name", "openset"),
    "track2_train_mercaptionplus.csv": ("name", "openset"),
    "track3_emoprefer.csv": ("name", "a1", "a2", "preference"),
    "track3_emopreferv2.csv": ("name", "a1", "a2", "preference"),
    "track3_candidate.csv": ("name", "a1", "a2"),
}


class Subtitle(NamedTuple):
    """One row of ``subtitle_chieng.csv``; a missing text is ``""`` (MERTools maps NaN to "")."""
    name: str
    chinese: str
    english: str


class Track1Row(NamedTuple):
    """One row of ``track1_train.csv``: the label string and its index in TRACK1_LABELS."""
    name: str
    label: str
    label_index: int


class Track2Row(NamedTuple):
    """One row of a track-2 train file: the raw ``openset`` cell and its parsed words."""
    name: str
    openset: tuple[str, ...]
    raw: str


class PreferenceRow(NamedTuple):
    """One row of a track-3 train file; ``row_index`` is the 0-based data row."""
    row_index: int
    name: str
    a1: str
    a2: str
    preference: str
    preference_index: int


class Track3CandidateRow(NamedTuple):
    """One row of ``track3_candidate.csv``; names may repeat, so rows are keyed by row_index."""
    row_index: int
    name: str
    a1: str
    a2: str


def string_to_list(s) -> list[str]:
    """Parse an ``openset`` cell exactly like MERTools' ``string_to_list``.

    Accepts ``a,b,c``, ``[a, b]`` and ``['a', 'b']``; multi-word labels such as ``let down``
    survive. ``None``, NaN and ``""`` give ``[]``; a list is returned as a list unchanged.
    Unlike MERTools, outer whitespace is stripped first: MERTools would keep a stray "[" on
    the first word of `` [a, b]``, which no label vocabulary contains.
    """
    if isinstance(s, (list, tuple)):
        return list(s)
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return []
    s = str(s).strip()
    if s == "":
        return []
    if s[0] == "[":
        s = s[1:]
    if s and s[-1] == "]":
        s = s[:-1]
    return [t.strip() for t in re.split(r"['\",]", s) if t.strip() not in ("", ",")]


def _where(path: Path, row: int, line: int, column: str | None = None) -> str:
    col = f", column {column!r}" if column else ""
    return f"{path}: data row {row} (line {line}){col}"


def iter_csv_rows(path, expected: Sequence[str]) -> Iterator[tuple[int, int, dict[str, str]]]:
    """Yield ``(row_number, line_number, row_dict)`` of a headed CSV, 1-based data rows.

    The header must equal ``expected`` (a UTF-8 BOM and whitespace around header cells are
    tolerated, since spreadsheet tools add them); each row must have exactly that many fields.
    Fully blank lines are skipped.
    """
    path = Path(path)
    expected = tuple(expected)
    if not path.is_file():
        raise ReleaseError(
            f"{path}: expected a CSV file with columns {list(expected)}, found no file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ReleaseError(f"{path}: expected header {list(expected)}, found an empty file")
            found = tuple(h.strip() for h in header)
            if found != expected:
                raise ReleaseError(
                    f"{path}: wrong header: expected columns {list(expected)}, found {list(found)}")
            row_no = 0
            for fields in reader:
                blank = len(fields) == 1 and fields[0].strip() == "" and len(expected) > 1
                if not fields or blank:
                    continue
                row_no += 1
                if len(fields) != len(expected):
                    raise ReleaseError(
                        f"{_where(path, row_no, reader.line_num)}: expected {len(expected)} fields "
                        f"{list(expected)}, found {len(fields)}: {fields!r}")
                yield row_no, reader.line_num, dict(zip(expected, fields))
    except UnicodeDecodeError as e:
        raise ReleaseError(f"{path}: expected UTF-8 text, found undecodable bytes ({e})") from e
    except csv.Error as e:
        raise ReleaseError(f"{path}: expected well-formed CSV, found a parse error: {e}") from e


def _name(path: Path, row: int, line: int, value: str) -> str:
    name = value.strip()
    if not name:
        raise ReleaseError(
            f"{_where(path, row, line, 'name')}: expected a sample name, found an empty cell")
    return name


class _UniqueNames:
    """Remembers where each name was seen so a duplicate error can name both rows."""

    def __init__(self, path: Path):
        self.path, self.seen = path, {}

    def add(self, name: str, row: int, line: int) -> None:
        if name in self.seen:
            first = self.seen[name]
            raise ReleaseError(
                f"{_where(self.path, row, line, 'name')}: expected unique names, found {name!r} "
                f"again (first at data row {first})")
        self.seen[name] = row


def read_subtitles(path) -> dict[str, Subtitle]:
    """Read ``subtitle_chieng.csv`` into ``{name: Subtitle}``; duplicate names are an error."""
    path = Path(path)
    out: dict[str, Subtitle] = {}
    unique = _UniqueNames(path)
    for row, line, d in iter_csv_rows(path, SCHEMAS["subtitle_chieng.csv"]):
        name = _name(path, row, line, d["name"])
        unique.add(name, row, line)
        out[name] = Subtitle(name, d["chinese"], d["english"])
    return out


def read_track1_labels(path) -> tuple[Track1Row, ...]:
    """Read a ``name,discrete`` file (``track1_train.csv`` or a test-label file) in file order."""
    path = Path(path)
    rows, unique = [], _UniqueNames(path)
    for row, line, d in iter_csv_rows(path, SCHEMAS["track1_train.csv"]):
        name = _name(path, row, line, d["name"])
        unique.add(name, row, line)
        label = d["discrete"].strip()
        if label not in TRACK1_LABELS:
            raise ReleaseError(
                f"{_where(path, row, line, 'discrete')}: expected one of {list(TRACK1_LABELS)}, "
                f"found {d['discrete']!r}")
        rows.append(Track1Row(name, label, TRACK1_LABELS.index(label)))
    return tuple(rows)


def read_names(path) -> tuple[str, ...]:
    """Read a one-column ``name`` file (``track1_track2_candidate.csv``); names must be unique."""
    path = Path(path)
    names, unique = [], _UniqueNames(path)
    for row, line, d in iter_csv_rows(path, SCHEMAS["track1_track2_candidate.csv"]):
        name = _name(path, row, line, d["name"])
        unique.add(name, row, line)
        names.append(name)
    return tuple(names)


def read_track2_openset(path) -> tuple[Track2Row, ...]:
    """Read a ``name,openset`` file with ``string_to_list``; names must be unique.

    An empty ``openset`` parses to ``()``; AffectGPT later turns it into ``['neutral']``,
    which is a training choice left to the caller.
    """
    path = Path(path)
    rows, unique = [], _UniqueNames(path)
    for row, line, d in iter_csv_rows(path, SCHEMAS["track2_train_human.csv"]):
        name = _name(path, row, line, d["name"])
        unique.add(name, row, line)
        rows.append(Track2Row(name, tuple(string_to_list(d["openset"])), d["openset"]))
    return tuple(rows)


def read_track3_preferences(path) -> tuple[PreferenceRow, ...]:
    """Read a ``name,a1,a2,preference`` file in row order (a name may appear in several rows)."""
    path = Path(path)
    rows = []
    for row, line, d in iter_csv_rows(path, SCHEMAS["track3_emoprefer.csv"]):
        name = _name(path, row, line, d["name"])
        pref = d["preference"].strip()
        if pref not in PREFERENCES:
            raise ReleaseError(
                f"{_where(path, row, line, 'preference')}: expected one of {list(PREFERENCES)}, "
                f"found {d['preference']!r}")
        rows.append(PreferenceRow(row - 1, name, d["a1"], d["a2"], pref, PREFERENCES.index(pref)))
    return tuple(rows)


def read_track3_candidates(path) -> tuple[Track3CandidateRow, ...]:
    """Read ``track3_candidate.csv`` in row order; repeated names are legal and kept."""
    path = Path(path)
    return tuple(
        Track3CandidateRow(row - 1, _name(path, row, line, d["name"]), d["a1"], d["a2"])
        for row, line, d in iter_csv_rows(path, SCHEMAS["track3_candidate.csv"]))
