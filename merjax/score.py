"""Scores a submission file as the official MER2026 scorers do (MERTools' evaluation code and the Codabench kits).

    python -m merjax.score --track=ps    --truth=TRUTH --answer=predictions.csv|answer.zip|DIR
    python -m merjax.score --track=cross --truth=track1_test.csv --answer=answer.zip|answer.csv
    python -m merjax.score --track=fg    --truth=track2_test.csv --answer=answer.zip|answer.csv
    python -m merjax.score --track=prefer --truth=TRUTH.csv --answer=answer.zip|answer.csv

Prints one JSON line with the scores on stdout and nothing else there:
    ps:    {"mae", "mae_valence", "mae_arousal", "mse", "n"}   (MAE is the ranking score)
    cross: {"waf", "acc", "n"}                                  (WAF is the ranking score)
    fg:    {"ew_f1", "ew_p", "ew_r", "n", and per wheel K = 1..5 "wheelK_f1", "wheelK_p",
            "wheelK_r", "wheelK_n" (samples counted)}            (EW-F1 is the ranking score)
    prefer: {"waf", "acc", "n" (rows scored: gold not a tie), "waf3", "rows"}
                                                                (WAF is the ranking score)
A file the official scorer would reject (or mis-score) is one line on stderr naming the file, the
line and what was expected and found, and exit code 2.

Like the official scorers, scoring iterates over the ids of the TRUTH file and looks each one up
in the answer. The MER-PS rules (every sample_id exactly once, no unknown ids, finite integers in
[1, 255]) come from the starting kit (§5.7); the MER-Cross rules from MERTools evaluation.py (every
truth name present with one of the 6 labels; extra names are ignored, here with a warning); the
MER-FG rules from MERTools' Track-2 evaluation.py and wheel.py (every truth name present; any
`openset` text parses, words outside the emotion wheel's vocabulary are dropped; extra names are
ignored, with a warning).

MER-Prefer is the exception: its candidate names repeat, so rows are matched BY POSITION, as
MER2026_Track3's func_preference_metric zips them (§6.3): the answer must have the truth's rows, in
its order, each with the truth's name, a1 and a2 (§6.3 zips the two preference columns only;
the check makes a shuffled or truncated answer an error instead of a silently wrong score).

Another track is one more `score_<track>(truth_path, answer_path) -> dict` added to SCORERS.
Nothing here needs JAX (but see metrics.py's imports).
"""
import contextlib
import csv
import functools
import io
import json
import math
import os
import re
import sys
import zipfile

from absl import flags

from merjax import cli, metrics
# The MER-FG tables (format.csv, synonym.xlsx, wheel1..5.xlsx), read without unpickling anything.
from tfds_builders.mer2026 import emotion_wheel
# MERTools' emos_mer: the exact lower-case strings of the files (no JAX or TFDS behind it).
from tfds_builders.mer2026.csvs import TRACK1_LABELS as CROSS_LABELS
# MER-Prefer's preferences in the metric's order: a1=0, a2=1, same=2.
from tfds_builders.mer2026.csvs import PREFERENCES
# The MER-PS scorer takes integers on the raw label scale (§5.7).
from merjax.submission import PS_MAX, PS_MIN
# A plain decimal number. float() alone would also take "1_0" (= 10), which a CSV scorer does not.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class ScoreError(ValueError):
    """A truth or answer file that cannot be scored; the message names the file and the line."""


# ------------------------------------------------------------------------------------------------
# Reading CSV files (plain, inside a zip, or inside a folder)


@contextlib.contextmanager
def _open_text(path, member=None):
    """Yields (name for messages, text stream) of a CSV file or of `member` of a zip.

    utf-8-sig: a file saved by Excel starts with a BOM, which pandas (the official scorers'
    reader) drops too; newline="" is what the csv module needs for quoted line breaks.
    """
    try:
        if member is None:
            with open(path, encoding="utf-8-sig", newline="") as f:
                yield path, f
        else:
            with zipfile.ZipFile(path) as z, z.open(member) as raw:
                yield f"{path}:{member}", io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    except (OSError, zipfile.BadZipFile) as e:
        raise ScoreError(f"{path}: cannot read ({e})") from None
    except UnicodeDecodeError as e:
        raise ScoreError(f"{path}: not UTF-8 text ({e})") from None


def _read_rows(path, columns, member=None):
    """(name, [(line number, {column: text})]) of a CSV with a header holding `columns`.

    Other columns are allowed and ignored, as when the official scorers pick columns by name.
    Blank lines are skipped (pandas skips them too); a row with another number of fields than the
    header is an error. Line numbers are 1-based physical lines, the header being line 1.
    """
    with _open_text(path, member) as (name, stream):
        reader = csv.reader(stream)
        try:
            header = next(reader, None)
            if header is None:
                raise ScoreError(f"{name}: empty file; expected a header row "
                                 f"{','.join(columns)}")
            _check_header(name, header, columns)
            index = {c: header.index(c) for c in columns}
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise ScoreError(f"{name} line {reader.line_num}: expected {len(header)} "
                                     f"fields ({','.join(header)}), found {len(row)}: {row!r}")
                rows.append((reader.line_num, {c: row[i] for c, i in index.items()}))
        except csv.Error as e:
            raise ScoreError(f"{name} line {reader.line_num}: not valid CSV ({e})") from None
    return name, rows


def _check_header(name, header, columns):
    missing = [c for c in columns if c not in header]
    if missing:
        raise ScoreError(f"{name} line 1: header {','.join(header)!r} lacks column(s) "
                         f"{','.join(missing)}; expected {','.join(columns)} (exact, lower case)")
    repeated = [c for c in columns if header.count(c) > 1]
    if repeated:
        raise ScoreError(f"{name} line 1: column(s) {','.join(repeated)} appear more than once "
                         f"in header {','.join(header)!r}")


def _zip_member(path, wanted):
    """The CSV to score inside a zip: `wanted` at its root, else its only .csv file."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist()
                     if not n.endswith("/") and not n.startswith("__MACOSX/")]
    except (OSError, zipfile.BadZipFile) as e:
        raise ScoreError(f"{path}: cannot read zip ({e})") from None
    if wanted in names:
        return wanted
    csvs = [n for n in names if n.lower().endswith(".csv")]
    if len(csvs) == 1:
        return csvs[0]
    raise ScoreError(f"{path}: expected {wanted} (or exactly one .csv) in the zip, found "
                     f"{names if len(names) <= 10 else names[:10] + ['...']}")


def _answer_rows(path, wanted, columns):
    """Rows of an answer given as a CSV file, a zip holding `wanted`, or a folder holding it."""
    if os.path.isdir(path):
        return _read_rows(os.path.join(path, wanted), columns)
    if zipfile.is_zipfile(path):
        return _read_rows(path, columns, member=_zip_member(path, wanted))
    return _read_rows(path, columns)


def _by_id(name, rows, id_column):
    """{id: (line, row)}; a repeated id is an error (which of two answers would count?)."""
    out = {}
    for line, row in rows:
        key = row[id_column]
        if key in out:
            raise ScoreError(f"{name} line {line}: {id_column} {key!r} is repeated "
                             f"(first at line {out[key][0]}); expected each id once")
        out[key] = (line, row)
    return out


# ------------------------------------------------------------------------------------------------
# Matching the answer's ids to the truth's


def _missing_ids(truth_name, truth, answer_name, answer, id_column):
    """Error if a truth id has no answer row: the official scorers fail on the lookup."""
    missing = [k for k in truth if k not in answer]
    if missing:
        line = truth[missing[0]][0]
        raise ScoreError(f"{answer_name}: {len(missing)} {id_column}(s) of the truth are missing, "
                         f"the first {missing[0]!r} ({truth_name} line {line}); expected every "
                         f"truth id once")


def _unknown_ids(answer, truth):
    """Answer ids not in the truth, in file order: [(line, id)]."""
    return [(line, k) for k, (line, _) in answer.items() if k not in truth]


def _warn_extra(truth_name, truth, answer_name, answer):
    """Answer names the scorer never looks at: they cannot change the score, so a warning."""
    extra = _unknown_ids(answer, truth)
    if extra:
        print(f"warning: {answer_name}: {len(extra)} name(s) not in {truth_name} are ignored, "
              f"as by the official scorer (first {extra[0][1]!r} at line {extra[0][0]})",
              file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# MER-PS (track 4): MAE over valence and arousal on the raw [1, 255] scale


def _number(text, where, column):
    """The float of a plain decimal number in a CSV cell (nan/inf included), or ScoreError."""
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped) or stripped.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(stripped)
    raise ScoreError(f"{where}: {column} {text!r} is not a number")


def _ps_prediction(text, where, column):
    """A submitted value: a finite integer in [1, 255], taken as given (never rounded here).

    An integral decimal such as "128.0" is the integer 128: a pandas-based scorer reads both the
    same way.
    """
    value = _number(text, where, column)
    expected = f"expected a finite integer in [{PS_MIN}, {PS_MAX}]"
    if not math.isfinite(value):
        raise ScoreError(f"{where}: {column} {text!r} is not finite; {expected}")
    if value != int(value):
        raise ScoreError(f"{where}: {column} {text!r} is not an integer; {expected} "
                         f"(round before writing)")
    if not PS_MIN <= value <= PS_MAX:
        raise ScoreError(f"{where}: {column} {text!r} is outside [{PS_MIN}, {PS_MAX}]; {expected}")
    return int(value)


def _ps_target(text, where, column):
    value = _number(text, where, column)
    if not math.isfinite(value):
        raise ScoreError(f"{where}: {column} {text!r} is not finite; a label must be a number")
    return value


def _read_ps_truth(path):
    """(name, {sample_id: (line, (valence, arousal))}) in truth order.

    `path` is a CSV sample_id,valence,arousal, or a folder as released after the challenge:
    sample_ids.csv (column sample_id) and targets.csv (valence,arousal, optionally sample_id)
    holding the same samples row by row.
    """
    if os.path.isdir(path):
        return _read_ps_truth_folder(path)
    name, rows = _read_rows(path, ("sample_id", "valence", "arousal"))
    values = [(line, row["sample_id"], row) for line, row in rows]
    return name, _ps_truth_table(name, values)


def _read_ps_truth_folder(path):
    ids_name, id_rows = _read_rows(os.path.join(path, "sample_ids.csv"), ("sample_id",))
    targets_path = os.path.join(path, "targets.csv")
    with _open_text(targets_path) as (_, stream):
        header = next(csv.reader(stream), None) or []
    columns = ("valence", "arousal")
    if "sample_id" in header:  # then the ids must agree with sample_ids.csv row by row
        columns = ("sample_id",) + columns
    targets_name, target_rows = _read_rows(targets_path, columns)
    if len(id_rows) != len(target_rows):
        raise ScoreError(f"{targets_name}: {len(target_rows)} rows, but {ids_name} has "
                         f"{len(id_rows)}; expected the same samples row by row")
    values = []
    for (_, id_row), (line, row) in zip(id_rows, target_rows):
        if "sample_id" in row and row["sample_id"] != id_row["sample_id"]:
            raise ScoreError(f"{targets_name} line {line}: sample_id {row['sample_id']!r}, but "
                             f"{ids_name} has {id_row['sample_id']!r} in that row; expected the "
                             f"same order")
        values.append((line, id_row["sample_id"], row))
    return targets_name, _ps_truth_table(targets_name, values)


def _ps_truth_table(name, values):
    table = {}
    for line, sample_id, row in values:
        if sample_id in table:
            raise ScoreError(f"{name} line {line}: sample_id {sample_id!r} is repeated "
                             f"(first at line {table[sample_id][0]})")
        where = f"{name} line {line}"
        table[sample_id] = (line, (_ps_target(row["valence"], where, "valence"),
                                   _ps_target(row["arousal"], where, "arousal")))
    if not table:
        raise ScoreError(f"{name}: no samples; the truth needs at least one row")
    return table


def score_ps(truth_path, answer_path):
    """MER-PS scores of predictions.csv (or a zip/folder holding it) against the truth."""
    truth_name, truth = _read_ps_truth(truth_path)
    answer_name, rows = _answer_rows(answer_path, "predictions.csv",
                                     ("sample_id", "valence", "arousal"))
    answer = _by_id(answer_name, rows, "sample_id")
    unknown = _unknown_ids(answer, truth)
    if unknown:  # the kit: "no unknown ids"
        line, sample_id = unknown[0]
        raise ScoreError(f"{answer_name} line {line}: sample_id {sample_id!r} is not in "
                         f"{truth_name} ({len(unknown)} unknown id(s) in all); expected only "
                         f"truth ids")
    _missing_ids(truth_name, truth, answer_name, answer, "sample_id")
    pred, target = [], []
    for sample_id, (_, label) in truth.items():
        line, row = answer[sample_id]
        where = f"{answer_name} line {line}"
        pred.append([_ps_prediction(row[c], where, c) for c in ("valence", "arousal")])
        target.append(label)
    return _ps_scores(pred, target)


def _column(pairs, i):
    return [pair[i] for pair in pairs]


def _ps_scores(pred, target):
    """§6.4: MAE over all N x 2 values (primary), per dimension, and MSE."""
    return {"mae": metrics.mae(pred, target),
            "mae_valence": metrics.mae(_column(pred, 0), _column(target, 0)),
            "mae_arousal": metrics.mae(_column(pred, 1), _column(target, 1)),
            "mse": metrics.mse(pred, target),
            "n": len(target)}


# ------------------------------------------------------------------------------------------------
# MER-Cross (track 1): weighted F1 over the 6 labels


def _cross_label(text, where):
    """Exactly one of the 6 strings: evaluation.py's emo2idx lookup takes nothing else."""
    if text not in CROSS_LABELS:
        raise ScoreError(f"{where}: discrete {text!r} is not a label; expected one of "
                         f"{', '.join(CROSS_LABELS)} (exact, lower case)")
    return text


def _by_name(truth_path, answer_path, column):
    """(truth name, {name: (line, row)}, answer name, {name: (line, row)}) of a clip track's
    `name,<column>` truth and answer.csv (or its zip): every truth name answered, extra answers
    warned about and ignored (the official evaluation.py never looks at them)."""
    truth_name, truth_rows = _read_rows(truth_path, ("name", column))
    truth = _by_id(truth_name, truth_rows, "name")
    if not truth:
        raise ScoreError(f"{truth_name}: no samples; the truth needs at least one row")
    answer_name, rows = _answer_rows(answer_path, "answer.csv", ("name", column))
    answer = _by_id(answer_name, rows, "name")
    _missing_ids(truth_name, truth, answer_name, answer, "name")
    _warn_extra(truth_name, truth, answer_name, answer)
    return truth_name, truth, answer_name, answer


def score_cross(truth_path, answer_path):
    """MER-Cross scores of answer.csv (or answer.zip) against track1_test.csv (name,discrete)."""
    truth_name, truth, answer_name, answer = _by_name(truth_path, answer_path, "discrete")
    y_true, y_pred = [], []
    for name, (truth_line, row) in truth.items():
        y_true.append(_cross_label(row["discrete"], f"{truth_name} line {truth_line}"))
        line, answer_row = answer[name]
        y_pred.append(_cross_label(answer_row["discrete"], f"{answer_name} line {line}"))
    return {"waf": metrics.weighted_f1(y_true, y_pred),
            "acc": metrics.accuracy(y_true, y_pred),
            "n": len(y_true)}


# ------------------------------------------------------------------------------------------------
# MER-FG (track 2): the emotion-wheel F1 over open-vocabulary words


def _emotion_wheel(folder):
    """The emotion-wheel tables of `folder` (None: the copies carried with the code)."""
    try:
        return emotion_wheel.load(folder)
    except emotion_wheel.ReleaseError as e:  # names the file; exit 2 like a bad answer file
        raise ScoreError(f"emotion wheel: {e}") from None


def score_fg(truth_path, answer_path, wheel_dir=None):
    """MER-FG scores of answer.csv (or answer.zip) against track2_test.csv (name,openset).

    `openset` cells of both files may be `a,b`, `[a, b]` or `['a', 'b']` (string_to_list, as
    MERTools parses them); wheel_dir: another folder holding the emotion-wheel tables.
    """
    wheel = _emotion_wheel(wheel_dir)
    _, truth, _, answer = _by_name(truth_path, answer_path, "openset")
    gold = [row["openset"] for _, row in truth.values()]
    pred = [answer[name][1]["openset"] for name in truth]
    return metrics.ew_scores(gold, pred, wheel)


# ------------------------------------------------------------------------------------------------
# MER-Prefer (track 3): two-class WAF over rows matched by position

_PREFER_COLUMNS = ("name", "a1", "a2", "preference")


def _preference(text, where):
    """The metric's code of a preference cell: exactly a1, a2 or same (the official lookup takes
    nothing else; `same` is scored as a1 on the answer side)."""
    if text not in PREFERENCES:
        raise ScoreError(f"{where}: preference {text!r} is not one of "
                         f"{', '.join(PREFERENCES)} (exact, lower case)")
    return PREFERENCES.index(text)


def _same_text(a, b):
    """Descriptions agree up to line-break style and outer spaces (a spreadsheet may rewrite
    those); anything else is another pair."""
    def norm(t):
        return t.replace("\r\n", "\n").replace("\r", "\n").strip()
    return norm(a) == norm(b)


def score_prefer(truth_path, answer_path):
    """MER-Prefer scores of answer.csv (or answer.zip) against a truth name,a1,a2,preference
    (the candidate file's rows with the human preference), rows matched by position."""
    truth_name, truth = _read_rows(truth_path, _PREFER_COLUMNS)
    if not truth:
        raise ScoreError(f"{truth_name}: no rows; the truth needs at least one row")
    answer_name, answer = _answer_rows(answer_path, "answer.csv", _PREFER_COLUMNS)
    if len(answer) != len(truth):
        raise ScoreError(f"{answer_name}: {len(answer)} data rows, {truth_name} has "
                         f"{len(truth)}; expected one answer row per truth row, in its order "
                         f"(repeated names kept)")
    gold, pred = [], []
    for row, ((truth_line, t), (line, a)) in enumerate(zip(truth, answer), start=1):
        for column in ("name", "a1", "a2"):
            if not (_same_text(a[column], t[column]) if column != "name"
                    else a[column] == t[column]):
                raise ScoreError(f"{answer_name} line {line} (data row {row}): {column} "
                                 f"{_clip(a[column])!r} differs from {truth_name} line "
                                 f"{truth_line}: {_clip(t[column])!r}; expected the truth's "
                                 f"rows in its order")
        gold.append(_preference(t["preference"], f"{truth_name} line {truth_line}"))
        pred.append(_preference(a["preference"], f"{answer_name} line {line}"))
    return {**metrics.preference_scores(gold, pred),
            "waf3": metrics.preference_waf3(gold, pred), "rows": len(gold)}


def _clip(text, limit=60):
    """The start of a long cell, for a one-line message."""
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------------------------------
# Command line

# Track name -> scorer(truth_path, answer_path) -> dict of scores.
SCORERS = {"ps": score_ps, "cross": score_cross, "fg": score_fg, "prefer": score_prefer}

_TRACK = flags.DEFINE_enum("track", None, sorted(SCORERS), "Which track's scorer to run.")
_TRUTH = flags.DEFINE_string(
    "truth", None, "Ground truth: ps: CSV sample_id,valence,arousal or a folder with "
    "sample_ids.csv + targets.csv; cross: track1_test.csv (name,discrete); fg: "
    "track2_test.csv (name,openset); prefer: the candidate rows with their preference "
    "(name,a1,a2,preference).")
_ANSWER = flags.DEFINE_string(
    "answer", None, "The submission: a CSV, or a zip (or folder) holding the track's CSV "
    "(ps: predictions.csv, cross, fg and prefer: answer.csv).")
_EMOTION_WHEEL_DIR = flags.DEFINE_string(
    "emotion_wheel_dir", None, "fg only: a folder holding format.csv, synonym.xlsx and "
    "wheel1..5.xlsx (default: the copies in tfds_builders/mer2026/emotion_wheel/).")


def main(argv):
    del argv  # cli.run refuses stray arguments
    scorer = SCORERS[_TRACK.value]
    if _TRACK.value == "fg":
        scorer = functools.partial(scorer, wheel_dir=_EMOTION_WHEEL_DIR.value)
    try:
        scores = scorer(_TRUTH.value, _ANSWER.value)
    except ScoreError as e:  # exit 2 like every scorer's "your file is wrong"
        cli.exit_with(f"error: {e}", 2)
    print(json.dumps(scores))


if __name__ == "__main__":
    flags.mark_flags_as_required(["track", "truth", "answer"])
    cli.run(main)
