"""The MER-FG emotion wheel (tfds_builders/mer2026/emotion_wheel.py), EW-F1 (metrics.ew_scores) and
`merjax.score --track=fg`, against rows of the source files read by hand and scores worked out
by hand."""
import functools
import json
import shutil
import zipfile
from xml.sax.saxutils import escape

import pytest

from merjax import metrics, score
from tests.test_score import assert_one_line_error, run_cli, write, write_zip
from tfds_builders.mer2026 import emotion_wheel
from tfds_builders.mer2026.emotion_wheel import ReleaseError


@pytest.fixture(scope="module")
def wheel():
    return emotion_wheel.load()


# ------------------------------------------------------------------------------------------------
# The carried tables against their source files


def test_table_sizes_match_the_official_mapping(wheel):
    # MER2026.md §6.2 and the data README: 7,356 forms, 1,255 base words, 253 wheel words.
    assert len(wheel.forms) == 7356 and wheel.vocabulary == set(wheel.forms)
    assert len(wheel.synonyms) == 1255
    on_wheels = set().union(*(set(m) for m in wheel.wheels.values()))
    assert len(on_wheels) == 253
    assert {w for words in wheel.synonyms.values() for w in words} == on_wheels
    # Every base word has synonyms (the scorer would fail on one without).
    assert {b for bases in wheel.forms.values() for b in bases} == set(wheel.synonyms)


def test_level1_categories_per_wheel(wheel):
    expected = {
        "wheel1": {"disgusted", "happy", "mad", "sad", "scared", "surprised"},
        "wheel2": {"angry", "bad", "disgusted", "fearful", "happy", "sad", "surprised"},
        "wheel3": {"joyful", "mad", "peaceful", "powerful", "sad", "scared"},
        "wheel4": {"anger", "disgust", "fear", "genius", "joy", "sad"},
        "wheel5": {"joyful", "mad", "peaceful", "powerful", "sad", "scared"},
    }
    assert {w: set(m.values()) for w, m in wheel.wheels.items()} == expected
    for name, categories in expected.items():  # a category is a word of its own wheel
        assert all(wheel.wheels[name][c] == c for c in categories)


def test_forms_of_format_csv_rows(wheel):
    # format.csv line 2: abandoned,"abandoned,abandon,abandonment,abandons,abandoning,abandonments"
    for form in ("abandoned", "abandon", "abandonment", "abandons", "abandoning", "abandonments"):
        assert wheel.forms[form] == ("abandoned",)
    # Lines 552-553: happiness and happy list the same forms, so "happy" has two base words and
    # canonical() takes the alphabetically first, as MERTools' case1 does.
    assert wheel.forms["happy"] == ("happiness", "happy")
    assert wheel.canonical("  Happy ") == "happiness"
    assert wheel.canonical("Abandonment") == "abandoned"
    assert wheel.canonical("neutral") is None and wheel.canonical("") is None
    # The row "no words" has an empty format cell: the base word is its only form.
    assert wheel.forms["no words"] == ("no words",) and "" not in wheel.forms


def test_synonyms_of_synonym_xlsx_rows(wheel):
    # synonym.xlsx row 98, run 2: "Abandoned" | "deserted, forsaken, neglected, left behind".
    row = dict(emotion_wheel.read_xlsx(emotion_wheel.FOLDER / "synonym.xlsx"))[98]
    assert row[2:4] == ["Abandoned", "deserted, forsaken, neglected, left behind"]
    assert wheel.synonyms["left behind"] == ("abandoned",)
    assert "abandoned" in wheel.synonyms["deserted"]  # with other runs' wheel words
    # Row 2, run 1: "exposed" | "uncovered, revealed, unprotected"; a wheel word maps to itself.
    assert wheel.synonyms["uncovered"] == ("exposed",)
    assert "exposed" in wheel.synonyms["unprotected"] and "exposed" in wheel.synonyms["exposed"]


def test_wheel_rows_inherit_empty_cells_from_above(wheel):
    # wheel1.xlsx rows 2-4: Mad | Offended | Skeptical, then (empty) | (empty) | Insulated, then
    # (empty) | Aggressive | Provoked.
    rows = dict(emotion_wheel.read_xlsx(emotion_wheel.FOLDER / "wheel1.xlsx"))
    assert rows[3] == ["", "", "Insulated"] and rows[4] == ["", "Aggressive", "Provoked"]
    w1, w1_level2 = wheel.wheels["wheel1"], wheel.wheels_level2["wheel1"]
    assert w1["insulated"] == w1["offended"] == w1["provoked"] == w1["mad"] == "mad"
    assert w1_level2["insulated"] == "offended" and w1_level2["provoked"] == "aggressive"
    assert w1_level2["mad"] == "aggressive"  # a level-1 word: its first level-2 child
    # wheel5.xlsx cells carry spaces (" Mad "): stripped.
    assert wheel.wheels["wheel5"]["jealous"] == "mad"
    # wheel2 lists "embarrassed" under disgusted (row 31) and under sad (row 38): the later row.
    assert wheel.wheels["wheel2"]["embarrassed"] == "sad"


def test_cluster_takes_the_first_candidate_on_the_wheel(wheel):
    # abashed -> synonyms ashamed, embarrassed; wheel1 puts ashamed under sad (row 32) and
    # embarrassed under mad (row 17): the alphabetically first candidate decides.
    assert wheel.synonyms["abashed"] == ("ashamed", "embarrassed")
    w1 = wheel.wheels["wheel1"]
    assert w1["ashamed"] == "sad" and w1["embarrassed"] == "mad"
    assert wheel.cluster("Abashment", "wheel1") == "sad"
    # unprotected -> exposed, unsafe, vulnerable; the first two are not on wheel1, so vulnerable
    # decides (row 70: (Scared, row 62) | Weak | Vulnerable).
    assert wheel.synonyms["unprotected"] == ("exposed", "unsafe", "vulnerable")
    assert "exposed" not in wheel.wheels["wheel1"] and "unsafe" not in wheel.wheels["wheel1"]
    assert wheel.cluster("unprotected", "wheel1") == "scared"
    # Dropped: a word outside the vocabulary, and one with no synonym on the wheel.
    assert wheel.cluster("neutral", "wheel1") is None
    assert wheel.cluster("insulated", "wheel2") is None
    with pytest.raises(ValueError, match="wheel6"):
        wheel.cluster("happy", "wheel6")


# ------------------------------------------------------------------------------------------------
# A toy wheel folder written by hand (shared and inline strings, omitted cells)

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
OFFICE_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


def write_xlsx(path, rows, shared=False, sheet="worksheets/sheet1.xml"):
    """A one-sheet .xlsx of `rows` (lists of text; None = cell left out of the file)."""
    strings, cells_xml = [], []
    for r, row in enumerate(rows, start=1):
        cells = []
        for c, text in enumerate(row):
            if text is None:
                continue
            ref = f"{chr(ord('A') + c)}{r}"
            if shared:
                strings.append(text)
                cells.append(f'<c r="{ref}" t="s"><v>{len(strings) - 1}</v></c>')
            else:
                cells.append(f'<c r="{ref}" t="inlineStr"><is><t>{escape(text)}</t></is></c>')
        cells_xml.append(f'<row r="{r}">{"".join(cells)}</row>')
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("xl/workbook.xml", f'<workbook xmlns="{MAIN}" xmlns:r="{OFFICE_RELS}"><sheets>'
                   f'<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", f'<Relationships xmlns="{RELS}"><Relationship '
                   f'Id="rId1" Type="{OFFICE_RELS}/worksheet" Target="{sheet}"/></Relationships>')
        z.writestr(f"xl/{sheet}", f'<worksheet xmlns="{MAIN}"><sheetData>{"".join(cells_xml)}'
                   f'</sheetData></worksheet>')
        if shared:
            items = "".join(f"<si><t>{escape(s)}</t></si>" for s in strings)
            z.writestr("xl/sharedStrings.xml", f'<sst xmlns="{MAIN}">{items}</sst>')


TOY_FORMAT = ["name,format",
              'happy,"happy,happiness,Happily"',
              'joyful,"joyful,joy"',
              'sad,"sad,sadness"',
              'angry,"angry,anger"',
              'upset,"upset, upsets"',
              "bittersweet,bittersweet",
              'calm,"calm,calmness"']
# Two runs; upset is a synonym of sad and of angry, bittersweet of sad and of cheerful.
TOY_SYNONYMS = [["word_run1", "synonym_run1", "word_run2", "synonym_run2"],
                ["Happy", "joyful, Glad", "happy", "joyful"],
                ["Sad", "upset, bittersweet", "sad", None],
                ["Angry", "upset", None, None],
                ["Cheerful", "bittersweet", "calm", ""]]
TOY_WHEEL = [["level1", "level2", "level3"],
             ["Positive", "Happy", "Cheerful"],
             [None, None, "Calm"],
             ["Negative", "Sad", "Lonely"],
             ["", "Angry", "Furious"]]
# wheel5 lacks "cheerful": there bittersweet's next candidate, sad, decides.
TOY_WHEEL5 = [TOY_WHEEL[0], ["Positive", "Happy", "Calm"]] + TOY_WHEEL[3:]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy_wheel")
    write(folder / "format.csv", TOY_FORMAT)
    write_xlsx(folder / "synonym.xlsx", TOY_SYNONYMS, shared=True)
    for name in emotion_wheel.WHEELS[:4]:
        write_xlsx(folder / f"{name}.xlsx", TOY_WHEEL, sheet="worksheets/data.xml")
    write_xlsx(folder / "wheel5.xlsx", TOY_WHEEL5)
    return folder


@pytest.fixture(scope="module")
def toy(toy_dir):
    return emotion_wheel.load(toy_dir)


def test_toy_tables(toy):
    assert set(toy.forms) == {"happy", "happiness", "happily", "joyful", "joy", "sad", "sadness",
                              "angry", "anger", "upset", "upsets", "bittersweet", "calm",
                              "calmness"}
    assert dict(toy.synonyms) == {
        "happy": ("happy",), "joyful": ("happy",), "glad": ("happy",), "sad": ("sad",),
        "upset": ("angry", "sad"), "bittersweet": ("cheerful", "sad"), "angry": ("angry",),
        "cheerful": ("cheerful",), "calm": ("calm",)}
    assert dict(toy.wheels["wheel1"]) == {
        "positive": "positive", "happy": "positive", "cheerful": "positive", "calm": "positive",
        "negative": "negative", "sad": "negative", "lonely": "negative", "angry": "negative",
        "furious": "negative"}
    assert toy.wheels_level2["wheel1"]["negative"] == "angry"  # min(sad, angry)
    assert toy.cluster("upsets", "wheel1", "level2") == "angry"  # angry < sad
    assert [toy.cluster("bittersweet", w) for w in emotion_wheel.WHEELS] == \
        ["positive"] * 4 + ["negative"]
    assert emotion_wheel.load(str(toy.folder)) is toy  # cached per folder


def test_missing_wheel_file_names_file_and_folder(tmp_path, toy_dir):
    folder = tmp_path / "wheel"
    shutil.copytree(toy_dir, folder)
    (folder / "wheel3.xlsx").unlink()
    with pytest.raises(ReleaseError, match=r"wheel.*wheel3\.xlsx not found"):
        emotion_wheel.load(folder)


def test_malformed_wheel_files_name_the_file(tmp_path, toy_dir):
    folder = tmp_path / "wheel"
    shutil.copytree(toy_dir, folder)
    write_xlsx(folder / "wheel2.xlsx", [["level1", "level 2", "level3"]] + TOY_WHEEL[1:])
    with pytest.raises(ReleaseError, match=r"wheel2\.xlsx: row 1: expected columns level1, "
                                           r"level2, level3"):
        emotion_wheel.load(folder)
    write_xlsx(folder / "wheel2.xlsx", [TOY_WHEEL[0], [None, "Happy", "Calm"]])
    with pytest.raises(ReleaseError, match=r"wheel2\.xlsx: row 2, column level1: expected a word"):
        emotion_wheel.load(folder)
    (folder / "wheel2.xlsx").write_text("not a zip")
    with pytest.raises(ReleaseError, match=r"wheel2\.xlsx: expected an \.xlsx workbook"):
        emotion_wheel.load(folder)
    shutil.copy(toy_dir / "wheel2.xlsx", folder / "wheel2.xlsx")
    write(folder / "format.csv", TOY_FORMAT + ["gloomy,gloom"])
    with pytest.raises(ReleaseError, match=r"format\.csv: data row 8 \(line 9\): base word "
                                           r"'gloomy' has no entry in .*synonym\.xlsx"):
        emotion_wheel.load(folder)


# ------------------------------------------------------------------------------------------------
# EW-F1 by hand on the toy wheel (level1: positive / negative)


def test_perfect_prediction_scores_1(toy, wheel):
    out = metrics.ew_scores(["happy,sad"], ["[Joy, sadness]"], toy)
    assert out["ew_f1"] == out["ew_p"] == out["ew_r"] == 1.0 and out["n"] == 1
    gold = ["happy, angry", "abandoned,worried", "[surprised]"]
    real = metrics.ew_scores(gold, gold, wheel)
    assert (real["ew_f1"], real["ew_p"], real["ew_r"]) == (1.0, 1.0, 1.0)


def test_f1_comes_from_the_averaged_p_and_r(toy):
    gold = ["happy, sad",   # {pos, neg} vs {pos}:  P = 1,   R = 1/2
            "angry",        # {neg}      vs {neg}:  P = 1,   R = 1
            "calm",         # {pos}      vs {}:     P = 0,   R = 0   (empty prediction counts)
            "neutral",      # nothing on the wheel: skipped
            ""]             # skipped
    pred = [["joy", "JOY ", "happily", "flabbergasted"],  # duplicates and an unknown word drop
            "[upset, anger]", "", "happy", "sad"]
    out = metrics.ew_scores(gold, pred, toy)
    p, r = 2 / 3, 1.5 / 3
    f = 2 * p * r / (p + r)  # 4/7; the mean of per-sample F1 would be (2/3 + 1 + 0) / 3 = 5/9
    assert f == pytest.approx(4 / 7)
    for name in emotion_wheel.WHEELS:
        assert out[f"{name}_p"] == pytest.approx(p) and out[f"{name}_r"] == pytest.approx(r)
        assert out[f"{name}_f1"] == pytest.approx(4 / 7) and out[f"{name}_n"] == 3
    assert out["ew_f1"] == pytest.approx(4 / 7) and out["n"] == 5


def test_empty_prediction_and_only_neutral(toy):
    assert metrics.ew_scores(["happy"], [""], toy)["ew_f1"] == 0.0
    out = metrics.ew_scores(["neutral", "flabbergasted"], ["happy", "sad"], toy)
    assert out["ew_f1"] == out["ew_p"] == out["ew_r"] == 0.0 and out["wheel1_n"] == 0


def test_first_candidate_rule_changes_one_wheel(toy):
    # bittersweet -> (cheerful, sad): positive on wheels 1-4, negative on wheel5 (no cheerful).
    out = metrics.ew_scores(["bittersweet"], ["calm"], toy)
    assert [out[f"{w}_f1"] for w in emotion_wheel.WHEELS] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert out["ew_f1"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="aligned"):
        metrics.ew_scores(["a", "b"], ["a"], toy)


# ------------------------------------------------------------------------------------------------
# merjax.score --track=fg

FG_TRUTH = ["name,openset",
            'a,"happy, sad"',
            "b,[angry]",
            "c,calm",
            "d,neutral",
            "e,"]
FG_ANSWER = ["name,openset",
             'c,""',
             "b,\"['upset', 'anger']\"",
             'a,"[joy, JOY , happily, flabbergasted]"',
             "e,sad",
             "d,happy"]


def test_fg_scores_by_hand(tmp_path, toy_dir, capsys):
    truth = write(tmp_path / "truth.csv", FG_TRUTH)
    out = score.score_fg(truth, write(tmp_path / "answer.csv", FG_ANSWER), wheel_dir=toy_dir)
    assert out["ew_f1"] == pytest.approx(4 / 7)
    assert out["ew_p"] == pytest.approx(2 / 3) and out["ew_r"] == pytest.approx(0.5)
    assert out["n"] == 5 and out["wheel3_n"] == 3
    # In a zip, with an extra name: ignored with a warning.
    zipped = write_zip(tmp_path / "answer.zip", {"answer.csv": FG_ANSWER + ["zz,happy"]})
    assert score.score_fg(truth, zipped, wheel_dir=toy_dir) == out
    assert "'zz'" in capsys.readouterr().err


def test_fg_default_wheel_is_the_carried_one(tmp_path):
    truth = write(tmp_path / "truth.csv", ["name,openset", 'x,"abashed, happy"'])
    answer = write(tmp_path / "answer.csv", ["name,openset", "x,[Abashment]"])
    out = score.score_fg(truth, answer)
    # abashed: wheel1 sad (see above), happy: wheel1 happy; the answer has sad only.
    assert (out["wheel1_p"], out["wheel1_r"]) == (1.0, 0.5)


FG_ERRORS = [
    (FG_ANSWER[:-1], ["answer.csv", "1 name(s)", "'d'", "truth.csv line 5"]),
    (["name,words"] + FG_ANSWER[1:], ["answer.csv line 1", "openset"]),
    (FG_ANSWER[:3] + ["a,happy,sad"] + FG_ANSWER[4:], ["answer.csv line 4", "expected 2 fields"]),
    (FG_ANSWER + ["c,happy"], ["answer.csv line 7", "'c'", "first at line 2"]),
    ([], ["answer.csv", "empty file"]),
]


@pytest.mark.parametrize("answer_lines, fragments", FG_ERRORS)
def test_fg_errors_name_file_and_line(tmp_path, toy_dir, answer_lines, fragments):
    scorer = functools.partial(score.score_fg, wheel_dir=toy_dir)
    assert_one_line_error(tmp_path, scorer, FG_TRUTH, "answer.csv", answer_lines, fragments)


def test_fg_missing_wheel_file_is_a_score_error(tmp_path, toy_dir):
    folder = tmp_path / "wheel"
    shutil.copytree(toy_dir, folder)
    (folder / "synonym.xlsx").unlink()
    assert_one_line_error(tmp_path, functools.partial(score.score_fg, wheel_dir=folder),
                          FG_TRUTH, "answer.csv", FG_ANSWER,
                          ["emotion wheel", str(folder.resolve()), "synonym.xlsx not found"])


def test_fg_cli_prints_one_json_line(tmp_path, toy_dir):
    truth = write(tmp_path / "truth.csv", FG_TRUTH)
    answer = write(tmp_path / "answer.csv", FG_ANSWER)
    result = run_cli("--track=fg", f"--truth={truth}", f"--answer={answer}",
                     f"--emotion_wheel_dir={toy_dir}")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    out = json.loads(line)
    assert out["ew_f1"] == pytest.approx(4 / 7) and out["wheel5_f1"] == pytest.approx(4 / 7)
    assert set(out) == {"ew_f1", "ew_p", "ew_r", "n"} | {
        f"{w}_{k}" for w in emotion_wheel.WHEELS for k in ("f1", "p", "r", "n")}
    missing = run_cli("--track=fg", f"--truth={truth}", f"--answer={answer}",
                      f"--emotion_wheel_dir={tmp_path}")
    assert missing.returncode == 2 and "format.csv" in missing.stderr
