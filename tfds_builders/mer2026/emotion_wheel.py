"""The emotion wheel behind the MER-FG (track 2) metric: word forms, synonyms and five wheels.

MERTools scores MER-FG with the EW-based F1 (MER2026.md §6.2). Before gold and predicted word sets
are compared, every word goes through three tables, all read here from the source files that
MERTools ships (carried in `emotion_wheel/` next to this module; provenance in its README.md):

    L1 forms     format.csv      surface form -> base words       "abandonment" -> "abandoned"
    L2 synonyms  synonym.xlsx    base word -> wheel words         merged over 8 LLM runs
    L3 wheels    wheel1..5.xlsx  wheel word -> category of the innermost ring (level1)

The official scorer reads the same tables from `wheel_mapping.npz`, a pickle; this module
rebuilds them from the sources instead, so nothing is ever unpickled. The rebuilt tables have the
npz's key sets and value sets (checked once, by hand, outside the repository). The order inside a
value does not matter: the scorer only looks at `sorted(...)` of it.

An .xlsx file is a zip of XML files; the small reader below takes what the tables need with the
standard library (no spreadsheet package in requirements.txt).

Nothing here imports merjax: the MER-FG builder normalises training words with
`Wheel.canonical`, the scorer (merjax/metrics.py) maps words with `Wheel.cluster`.
"""
from __future__ import annotations

import functools
import posixpath
import re
import types
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from .csvs import ReleaseError, iter_csv_rows

__all__ = ["FOLDER", "FILES", "WHEELS", "LEVELS", "ReleaseError", "Wheel", "load", "normalise",
           "read_forms", "read_synonyms", "read_wheel", "read_xlsx"]

# The copies carried with the code; `load(folder)` takes any folder holding the same files.
FOLDER = Path(__file__).resolve().parent / "emotion_wheel"
WHEELS: tuple[str, ...] = ("wheel1", "wheel2", "wheel3", "wheel4", "wheel5")
FILES: tuple[str, ...] = ("format.csv", "synonym.xlsx") + tuple(f"{w}.xlsx" for w in WHEELS)
# level1 (innermost ring, 6-7 categories per wheel) ranks submissions; level2 is a diagnostic.
LEVELS: tuple[str, ...] = ("level1", "level2")
_WHEEL_COLUMNS = ("level1", "level2", "level3")


def normalise(word: str) -> str:
    """What the scorer does to every word before any look-up: lower case, outer spaces off."""
    return word.lower().strip()


class Wheel:
    """The three tables of one emotion-wheel folder; every mapping is read-only.

    forms          form -> sorted tuple of base words; each base word is also its own form.
                   Its keys are the vocabulary: any other word is dropped by the metric.
    synonyms       base word -> sorted tuple of wheel words (a wheel word is its own synonym).
    wheels         wheel name (WHEELS) -> {word of that wheel, any ring: level-1 category}.
    wheels_level2  the same with level-2 categories (a level-1 word: its alphabetically first
                   level-2 child), as MERTools' unranked level2 variant.
    """

    def __init__(self, folder, forms, synonyms, levels):
        self.folder = Path(folder)
        self.forms = _read_only({k: tuple(sorted(v)) for k, v in forms.items()})
        self.synonyms = _read_only({k: tuple(sorted(v)) for k, v in synonyms.items()})
        self.levels = _read_only({level: _read_only({w: _read_only(m) for w, m in maps.items()})
                                  for level, maps in levels.items()})
        self.wheels = self.levels["level1"]
        self.wheels_level2 = self.levels["level2"]
        self.vocabulary = frozenset(self.forms)
        # The metric's word -> category of every form, per (level, wheel), worked out once so
        # that scoring is one dict look-up per word.
        self._clusters = {(level, w): {form: self._resolve(form, wheel_map)
                                       for form in self.forms}
                          for level, maps in self.levels.items()
                          for w, wheel_map in maps.items()}

    def __repr__(self):
        return (f"Wheel({str(self.folder)!r}: {len(self.forms)} forms, "
                f"{len(self.synonyms)} base words, wheels {', '.join(self.wheels)})")

    def canonical(self, word: str) -> str | None:
        """The L1 base word of `word` (normalised first), or None outside the vocabulary.

        A form with several base words gives the alphabetically first, as MERTools' case1
        mapping does: "happy" is a form of both `happiness` and `happy`, so -> "happiness".
        """
        bases = self.forms.get(normalise(word))
        return bases[0] if bases else None

    def cluster(self, word: str, wheel: str, level: str = "level1") -> str | None:
        """The category of `word` on `wheel` (MERTools' map_case3), or None when it is dropped.

        Dropped: a word outside the vocabulary, or one none of whose wheel synonyms lies on this
        wheel. Otherwise the category of the alphabetically first synonym that does, which
        makes the answer unique when the synonyms of a word spread over several categories.
        """
        try:
            table = self._clusters[level, wheel]
        except KeyError:
            raise ValueError(f"no emotion wheel {wheel!r} at level {level!r}; expected one of "
                             f"{', '.join(WHEELS)} and one of {', '.join(LEVELS)}") from None
        return table.get(normalise(word))

    def _resolve(self, form, wheel_map):
        candidates = sorted(r for base in self.forms[form] for r in self.synonyms[base])
        return next((wheel_map[c] for c in candidates if c in wheel_map), None)


def _read_only(mapping):
    return types.MappingProxyType(dict(mapping))


@functools.lru_cache(maxsize=8)
def _load(folder: Path) -> Wheel:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ReleaseError(f"{folder}: emotion wheel file(s) {', '.join(missing)} not found; "
                           f"expected {', '.join(FILES)} in that folder (the copies carried with "
                           f"the code are in {FOLDER})")
    forms, rows = read_forms(folder / "format.csv")
    synonyms = read_synonyms(folder / "synonym.xlsx")
    # Every base word needs a synonym entry: MERTools' scorer fails on a base word without one.
    for base, (row, line) in rows.items():
        if base not in synonyms:
            raise ReleaseError(f"{folder / 'format.csv'}: data row {row} (line {line}): base "
                               f"word {base!r} has no entry in {folder / 'synonym.xlsx'}; "
                               f"expected it among the words or synonyms there")
    levels = {level: {} for level in LEVELS}
    for wheel in WHEELS:
        levels["level1"][wheel], levels["level2"][wheel] = read_wheel(folder / f"{wheel}.xlsx")
    return Wheel(folder, forms, synonyms, levels)


def load(folder=None) -> Wheel:
    """The emotion wheel of `folder` (default: the carried copies, FOLDER), cached per folder.

    A missing or malformed file raises ReleaseError (a ValueError) naming the file and folder.
    """
    return _load(Path(FOLDER if folder is None else folder).expanduser().resolve())


# ------------------------------------------------------------------------------------------------
# The source tables


def read_forms(path) -> tuple[dict[str, set[str]], dict[str, tuple[int, int]]]:
    """L1 from format.csv (`name,format`): each form of `format` (comma-separated) -> `name`.

    Returns (form -> base words, base word -> (data row, line) for messages). A base word is
    also a form of itself; empty forms are skipped (the row `no words` has none).
    """
    path = Path(path)
    forms, rows = {}, {}
    for row, line, cells in iter_csv_rows(path, ("name", "format")):
        base = normalise(cells["name"])
        if not base:
            raise ReleaseError(f"{path}: data row {row} (line {line}), column 'name': expected "
                               f"a base word, found an empty cell")
        if base in rows:
            raise ReleaseError(f"{path}: data row {row} (line {line}), column 'name': expected "
                               f"each base word once, found {base!r} again (first at data row "
                               f"{rows[base][0]})")
        rows[base] = (row, line)
        for form in [base] + [normalise(f) for f in cells["format"].split(",")]:
            if form:
                forms.setdefault(form, set()).add(base)
    return forms, rows


def read_synonyms(path) -> dict[str, set[str]]:
    """L2 from synonym.xlsx: base word -> wheel words, merged over all runs.

    Columns word_runK, synonym_runK (K = 1, 2, ...): in each run every synonym (comma-separated)
    of the wheel word `word_runK` maps to that wheel word, and the wheel word to itself.
    """
    path = Path(path)
    header, rows = _sheet_table(path)
    runs = sorted(int(m.group(1)) for m in map(re.compile(r"word_run(\d+)").fullmatch, header)
                  if m)
    lacking = [f"synonym_run{k}" for k in runs if f"synonym_run{k}" not in header]
    if not runs or lacking:
        raise ReleaseError(f"{path}: row 1: expected column pairs word_runK,synonym_runK "
                           f"(K = 1..8), found header {header}")
    out = {}
    for row, cells in rows:
        for k in runs:
            word = normalise(cells.get(f"word_run{k}", ""))
            synonyms = [normalise(s) for s in cells.get(f"synonym_run{k}", "").split(",")]
            if not word:
                if any(synonyms):
                    raise ReleaseError(f"{path}: row {row}, column word_run{k}: expected the "
                                       f"wheel word of synonym_run{k}, found an empty cell")
                continue
            out.setdefault(word, set()).add(word)
            for s in filter(None, synonyms):
                out.setdefault(s, set()).add(word)
    return out


def read_wheel(path) -> tuple[dict[str, str], dict[str, str]]:
    """L3 from wheelK.xlsx (columns level1, level2, level3; an empty cell = the one above).

    Returns (level1, level2) maps. level1: each word of the wheel, on any ring -> the level-1
    category of its row. level2: a level-3 word -> its level-2 parent, a level-2 word -> itself,
    a level-1 word -> the alphabetically first of its level-2 children.

    A few words sit on two branches of a wheel (wheel2: `embarrassed` under disgusted, row 31,
    and under sad, row 38); the later row wins, which is what MERTools' table holds.
    """
    path = Path(path)
    header, rows = _sheet_table(path)
    lacking = [c for c in _WHEEL_COLUMNS if c not in header]
    if lacking:
        raise ReleaseError(f"{path}: row 1: expected columns {', '.join(_WHEEL_COLUMNS)}, found "
                           f"header {header}")
    level1, level2, children = {}, {}, {}
    above = {}
    for row, cells in rows:
        ring = {}
        for column in _WHEEL_COLUMNS:
            ring[column] = normalise(cells.get(column, "")) or above.get(column)
            if ring[column] is None:
                raise ReleaseError(f"{path}: row {row}, column {column}: expected a word (an "
                                   f"empty cell repeats the one above), found an empty cell "
                                   f"with nothing above it")
        above = ring
        first, second, third = (ring[c] for c in _WHEEL_COLUMNS)
        level1.update({first: first, second: first, third: first})
        level2.update({second: second, third: second})
        children.setdefault(first, set()).add(second)
    level2.update({first: min(seconds) for first, seconds in children.items()})
    return level1, level2


# ------------------------------------------------------------------------------------------------
# A minimal .xlsx reader: the first worksheet's cells as text

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_OFFICE_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_PACKAGE_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_CELL_REF = re.compile(r"([A-Z]+)(\d+)")


def read_xlsx(path) -> list[tuple[int, list[str]]]:
    """The first worksheet of an .xlsx as [(row number, [cell text, ...])], 1-based rows.

    Cells come back as their text ("" for an empty or omitted cell), rows as long as the
    widest row; rows with no cell are left out. Shared strings (t="s"), inline strings
    (t="inlineStr"), formula strings (t="str") and numbers (as written in the file) are read;
    that is all these tables hold. The first worksheet is the one pandas.read_excel (MERTools'
    reader) takes by default.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = set(z.namelist())
            sheet = _first_sheet(path, z, members)
            strings = _shared_strings(path, z) if "xl/sharedStrings.xml" in members else []
            root = _parse(path, z, sheet)
    except (OSError, zipfile.BadZipFile) as e:
        raise ReleaseError(f"{path}: expected an .xlsx workbook (a zip), cannot read it "
                           f"({e})") from None
    rows, width = [], 0
    next_row = 1
    for row_el in root.iter(f"{_MAIN}row"):
        row_number = int(row_el.get("r", next_row))
        next_row = row_number + 1
        cells, next_col = {}, 0
        for cell in row_el.findall(f"{_MAIN}c"):
            col = next_col
            ref = cell.get("r")
            if ref:
                match = _CELL_REF.fullmatch(ref)
                if not match:
                    raise ReleaseError(f"{path}: {sheet}: expected a cell reference like B3, "
                                       f"found {ref!r}")
                col = _column_index(match.group(1))
            next_col = col + 1
            text = _cell_text(path, cell, strings)
            if text:
                cells[col] = text
        if cells:
            width = max(width, max(cells) + 1)
            rows.append((row_number, cells))
    return [(n, [cells.get(i, "") for i in range(width)]) for n, cells in rows]


def _sheet_table(path):
    """(header, [(row number, {column name: text})]) of an .xlsx whose first row is a header."""
    rows = read_xlsx(path)
    if not rows:
        raise ReleaseError(f"{path}: expected a header row and data, found an empty worksheet")
    (_, header), data = rows[0], rows[1:]
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if h and header.count(h) > 1})
    if repeated:
        raise ReleaseError(f"{path}: row 1: expected each column name once, found "
                           f"{', '.join(repeated)} repeated in header {header}")
    return header, [(n, {h: v for h, v in zip(header, values) if h}) for n, values in data]


def _parse(path, z, member):
    try:
        return ET.fromstring(z.read(member))
    except KeyError:
        raise ReleaseError(f"{path}: expected {member} in the workbook, found no such "
                           f"member") from None
    except ET.ParseError as e:
        raise ReleaseError(f"{path}: {member} is not well-formed XML ({e})") from None


def _first_sheet(path, z, members):
    """The zip member of the workbook's first sheet (workbook.xml order, via its relations)."""
    workbook = _parse(path, z, "xl/workbook.xml")
    sheet = workbook.find(f"{_MAIN}sheets/{_MAIN}sheet")
    if sheet is None:
        raise ReleaseError(f"{path}: expected at least one worksheet, found none")
    relations = _parse(path, z, "xl/_rels/workbook.xml.rels")
    for rel in relations.iter(f"{_PACKAGE_REL}Relationship"):
        if rel.get("Id") == sheet.get(_OFFICE_REL):
            target = rel.get("Target", "")
            # Relative to xl/, or absolute from the package root.
            member = (target.lstrip("/") if target.startswith("/")
                      else posixpath.normpath(posixpath.join("xl", target)))
            if member in members:
                return member
    # Relations that do not resolve: the usual location of the first sheet.
    return "xl/worksheets/sheet1.xml"


def _shared_strings(path, z):
    """The workbook's string table: a cell of type "s" holds an index into it."""
    root = _parse(path, z, "xl/sharedStrings.xml")
    return [_rich_text(si) for si in root.iter(f"{_MAIN}si")]


def _rich_text(element):
    """The text of a string item: its <t>, or the <t> of each rich-text run <r>.

    Phonetic hints (<rPh>, East Asian readings) are not part of the text.
    """
    direct = element.find(f"{_MAIN}t")
    if direct is not None:
        return direct.text or ""
    return "".join(t.text or "" for r in element.findall(f"{_MAIN}r")
                   for t in r.findall(f"{_MAIN}t"))


def _cell_text(path, cell, strings):
    kind = cell.get("t", "n")
    if kind == "inlineStr":
        inline = cell.find(f"{_MAIN}is")
        return _rich_text(inline) if inline is not None else ""
    value = cell.find(f"{_MAIN}v")
    if value is None or value.text is None:
        return ""
    if kind == "s":
        index = int(value.text)
        if not 0 <= index < len(strings):
            raise ReleaseError(f"{path}: cell {cell.get('r')}: expected a shared string index "
                               f"below {len(strings)}, found {index}")
        return strings[index]
    return value.text


def _column_index(letters):
    """A -> 0, Z -> 25, AA -> 26."""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1
