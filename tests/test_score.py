"""merjax.score against numbers worked out by hand, and the file checks of the official scorers."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from merjax import score
from merjax.score import ScoreError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, lines in members.items():
            z.writestr(name, "".join(line + "\n" for line in lines))
    return str(path)


# ------------------------------------------------------------------------------------------------
# MER-Cross

CROSS_TRUTH = ["name,discrete",
               "a,neutral", "b,neutral", "c,neutral", "d,angry",
               "e,angry", "f,happy", "g,sad", "h,surprise"]
CROSS_ANSWER = ["name,discrete",
                "a,neutral", "b,angry", "c,neutral", "d,angry",
                "e,happy", "f,happy", "g,neutral", "h,worried"]
# By hand, per true class (support, tp, #predicted -> F1 = 2 tp / (#pred + support)):
#   neutral 3, 2, 3 -> 2/3;  angry 2, 1, 2 -> 1/2;  happy 1, 1, 2 -> 2/3;  sad, surprise -> 0.
#   worried is only predicted: weight 0.
# WAF = (3 * 2/3 + 2 * 1/2 + 1 * 2/3) / 8 = 11/24; ACC = 4/8 (a, c, d, f).
CROSS_WAF, CROSS_ACC = 11 / 24, 0.5


def brute_force_weighted_f1(y_true, y_pred):
    """sklearn's f1_score(average='weighted', zero_division=0) written out from its definition:
    over the labels of y_true and y_pred, precision and recall per label, F1, weighted by
    support."""
    total = 0.0
    for label in sorted(set(y_true) | set(y_pred)):
        tp = sum(t == label and p == label for t, p in zip(y_true, y_pred))
        predicted, support = y_pred.count(label), y_true.count(label)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += support * f1
    return total / len(y_true)


def labels(lines):
    return [line.split(",")[1] for line in lines[1:]]


def test_cross_scores_by_hand(tmp_path):
    truth = write(tmp_path / "truth.csv", CROSS_TRUTH)
    answer = write(tmp_path / "answer.csv", CROSS_ANSWER)
    out = score.score_cross(truth, answer)
    assert out == {"waf": pytest.approx(CROSS_WAF), "acc": pytest.approx(CROSS_ACC), "n": 8}
    assert brute_force_weighted_f1(labels(CROSS_TRUTH), labels(CROSS_ANSWER)) == \
        pytest.approx(CROSS_WAF)


def test_cross_waf_matches_sklearn_on_random_labels(tmp_path):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true = list(rng.choice(score.CROSS_LABELS[:4], 200))  # 4 true classes, 6 predicted
    y_pred = list(rng.choice(score.CROSS_LABELS, 200))
    truth = write(tmp_path / "truth.csv", ["name,discrete"] +
                  [f"s{i},{y}" for i, y in enumerate(y_true)])
    answer = write(tmp_path / "answer.csv", ["name,discrete"] +
                   [f"s{i},{y}" for i, y in enumerate(y_pred)])
    out = score.score_cross(truth, answer)
    assert out["waf"] == pytest.approx(sklearn_metrics.f1_score(y_true, y_pred, average="weighted"))
    assert out["acc"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))


def test_cross_answer_order_zip_and_extras(tmp_path, capsys):
    truth = write(tmp_path / "truth.csv", CROSS_TRUTH)
    shuffled = [CROSS_ANSWER[0]] + CROSS_ANSWER[:0:-1]
    # An extra name with a label the scorer would reject: ignored, as evaluation.py never reads it.
    with_extra = shuffled + ["zz,not-a-label", "yy,happy"]
    answer_zip = write_zip(tmp_path / "answer.zip", {"answer.csv": with_extra})
    out = score.score_cross(truth, answer_zip)
    assert out == {"waf": pytest.approx(CROSS_WAF), "acc": pytest.approx(CROSS_ACC), "n": 8}
    err = capsys.readouterr().err
    assert "warning" in err and "2 name(s)" in err and "'zz'" in err
    # A zip with one differently named CSV is read too.
    other = write_zip(tmp_path / "other.zip", {"sub/my_answer.csv": CROSS_ANSWER})
    assert score.score_cross(truth, other) == out


CROSS_ERRORS = [
    # (answer lines, fragments the message must hold)
    (CROSS_ANSWER[:3] + ["c,Happy"] + CROSS_ANSWER[4:], ["answer.csv line 4", "'Happy'",
                                                         "neutral, angry"]),
    (CROSS_ANSWER[:-1], ["answer.csv", "1 name(s)", "'h'", "truth.csv line 9"]),
    (CROSS_ANSWER + ["b,sad"], ["answer.csv line 10", "'b'", "first at line 3"]),
    (["name,label"] + CROSS_ANSWER[1:], ["answer.csv line 1", "discrete"]),
    (["Name,discrete"] + CROSS_ANSWER[1:], ["answer.csv line 1", "name"]),
    (CROSS_ANSWER[:5] + ["e"] + CROSS_ANSWER[6:], ["answer.csv line 6", "expected 2 fields"]),
    ([], ["answer.csv", "empty file"]),
]


def assert_one_line_error(tmp_path, scorer, truth_lines, answer_name, answer_lines, fragments):
    """Scoring fails with a ScoreError of one line holding every fragment."""
    truth = write(tmp_path / "truth.csv", truth_lines)
    answer = write(tmp_path / answer_name, answer_lines)
    with pytest.raises(ScoreError) as info:
        scorer(truth, answer)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("answer_lines, fragments", CROSS_ERRORS)
def test_cross_errors_name_file_and_line(tmp_path, answer_lines, fragments):
    assert_one_line_error(tmp_path, score.score_cross, CROSS_TRUTH, "answer.csv", answer_lines,
                          fragments)


def test_cross_bad_truth_label_names_the_truth(tmp_path):
    truth = write(tmp_path / "truth.csv", CROSS_TRUTH[:2] + ["b,fear"] + CROSS_TRUTH[3:])
    answer = write(tmp_path / "answer.csv", CROSS_ANSWER)
    with pytest.raises(ScoreError, match=r"truth\.csv line 3: discrete 'fear'"):
        score.score_cross(truth, answer)


def test_cross_reads_bom_crlf_and_quotes_like_pandas(tmp_path):
    truth = write(tmp_path / "truth.csv", CROSS_TRUTH)
    body = "\r\n".join(['"name","discrete"'] + [f'"{line}"'.replace(",", '","')
                                                for line in CROSS_ANSWER[1:]]) + "\r\n"
    answer = tmp_path / "answer.csv"
    answer.write_bytes(b"\xef\xbb\xbf" + body.encode())  # Excel's UTF-8 BOM
    out = score.score_cross(truth, str(answer))
    assert out == {"waf": pytest.approx(CROSS_WAF), "acc": pytest.approx(CROSS_ACC), "n": 8}


def test_zip_without_the_csv_is_an_error(tmp_path):
    truth = write(tmp_path / "truth.csv", CROSS_TRUTH)
    bad = write_zip(tmp_path / "bad.zip", {"x.csv": CROSS_ANSWER, "y.csv": CROSS_ANSWER})
    with pytest.raises(ScoreError, match=r"bad\.zip: expected answer\.csv"):
        score.score_cross(truth, bad)


# ------------------------------------------------------------------------------------------------
# MER-PS

PS_TRUTH = ["sample_id,valence,arousal",
            "test_21_V01_T000,100,50", "test_21_V01_T001,200.5,10", "test_22_V02_T000,1,255"]
PS_ANSWER = ["sample_id,valence,arousal",
             "test_21_V01_T000,110,50", "test_21_V01_T001,200,20", "test_22_V02_T000,5,250"]
# |diff| valence 10, 0.5, 4 (mean 14.5/3); arousal 0, 10, 5 (mean 5); all six: 29.5/6.
# squared: 100, 0.25, 16, 0, 100, 25 -> 241.25/6.
PS_SCORES = {"mae": pytest.approx(29.5 / 6), "mae_valence": pytest.approx(14.5 / 3),
             "mae_arousal": pytest.approx(5.0), "mse": pytest.approx(241.25 / 6), "n": 3}


def test_ps_scores_by_hand_in_any_row_order(tmp_path):
    truth = write(tmp_path / "truth.csv", PS_TRUTH)
    assert score.score_ps(truth, write(tmp_path / "a.csv", PS_ANSWER)) == PS_SCORES
    reordered = [PS_ANSWER[0], PS_ANSWER[3], PS_ANSWER[1], PS_ANSWER[2]]
    assert score.score_ps(truth, write(tmp_path / "b.csv", reordered)) == PS_SCORES
    # Extra columns are ignored and an integral "110.0" is the integer 110 (not rounded).
    wide = ["x,sample_id,arousal,valence", "1,test_21_V01_T000,50,110.0",
            "2,test_21_V01_T001,20,200", "3,test_22_V02_T000,250,5"]
    assert score.score_ps(truth, write(tmp_path / "c.csv", wide)) == PS_SCORES


def test_ps_zip_and_folder_answers_equal_the_csv(tmp_path):
    truth = write(tmp_path / "truth.csv", PS_TRUTH)
    csv_scores = score.score_ps(truth, write(tmp_path / "predictions.csv", PS_ANSWER))
    zipped = write_zip(tmp_path / "sub.zip", {"model.py": ["x = 1"], "predictions.csv": PS_ANSWER})
    assert score.score_ps(truth, zipped) == csv_scores
    # The code submission's output_dir holding predictions.csv.
    assert score.score_ps(truth, str(tmp_path)) == csv_scores


def test_ps_truth_folder(tmp_path):
    answer = write(tmp_path / "predictions.csv", PS_ANSWER)
    folder = tmp_path / "eval"
    folder.mkdir()
    write(folder / "sample_ids.csv", ["sample_id,subject"] +
          [line.split(",")[0] + ",s" for line in PS_TRUTH[1:]])
    write(folder / "targets.csv", ["valence,arousal"] +
          [line.split(",", 1)[1] for line in PS_TRUTH[1:]])
    assert score.score_ps(str(folder), answer) == PS_SCORES
    write(folder / "targets.csv", PS_TRUTH)  # with the ids: they must agree row by row
    assert score.score_ps(str(folder), answer) == PS_SCORES
    write(folder / "targets.csv", [PS_TRUTH[0], PS_TRUTH[2], PS_TRUTH[1], PS_TRUTH[3]])
    with pytest.raises(ScoreError, match=r"targets\.csv line 2: sample_id 'test_21_V01_T001'"):
        score.score_ps(str(folder), answer)
    write(folder / "targets.csv", PS_TRUTH[:3])
    with pytest.raises(ScoreError, match=r"targets\.csv: 2 rows, but .*sample_ids\.csv has 3"):
        score.score_ps(str(folder), answer)


def ps_answer_with(row):
    """PS_ANSWER whose second data row (file line 3) is `row`."""
    return PS_ANSWER[:2] + [row] + PS_ANSWER[3:]


PS_ERRORS = [
    (ps_answer_with("test_21_V01_T001,200.5,20"), ["line 3", "valence '200.5'", "not an integer"]),
    (ps_answer_with("test_21_V01_T001,200,nan"), ["line 3", "arousal 'nan'", "not finite"]),
    (ps_answer_with("test_21_V01_T001,inf,20"), ["line 3", "valence 'inf'", "not finite"]),
    (ps_answer_with("test_21_V01_T001,0,20"), ["line 3", "valence '0'", "outside [1, 255]"]),
    (ps_answer_with("test_21_V01_T001,200,256"), ["line 3", "arousal '256'", "outside"]),
    (ps_answer_with("test_21_V01_T001,2_00,20"), ["line 3", "valence '2_00'", "not a number"]),
    (ps_answer_with("test_21_V01_T001,,20"), ["line 3", "valence ''", "not a number"]),
    (ps_answer_with("predict1_V01_T000,200,20"), ["line 3", "'predict1_V01_T000'", "not in",
                                                  "1 unknown"]),
    (ps_answer_with("test_21_V01_T000,200,20"), ["line 3", "repeated", "first at line 2"]),
    (PS_ANSWER[:3], ["predictions.csv", "1 sample_id(s)", "'test_22_V02_T000'",
                     "truth.csv line 4"]),
    (["id,valence,arousal"] + PS_ANSWER[1:], ["predictions.csv line 1", "sample_id"]),
    (ps_answer_with("test_21_V01_T001,200"), ["line 3", "expected 3 fields", "found 2"]),
]


@pytest.mark.parametrize("answer_lines, fragments", PS_ERRORS)
def test_ps_errors_name_file_and_line(tmp_path, answer_lines, fragments):
    assert_one_line_error(tmp_path, score.score_ps, PS_TRUTH, "predictions.csv", answer_lines,
                          ["predictions.csv", *fragments])


def test_missing_files_are_score_errors(tmp_path):
    truth = write(tmp_path / "truth.csv", PS_TRUTH)
    with pytest.raises(ScoreError, match=r"nope\.csv: cannot read"):
        score.score_ps(truth, str(tmp_path / "nope.csv"))


# ------------------------------------------------------------------------------------------------
# The command line


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "merjax.score", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_one_json_line(tmp_path):
    truth = write(tmp_path / "truth.csv", PS_TRUTH)
    answer = write_zip(tmp_path / "sub.zip", {"predictions.csv": PS_ANSWER})
    result = run_cli("--track=ps", f"--truth={truth}", f"--answer={answer}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == PS_SCORES


def test_cli_error_is_one_line_and_exit_2(tmp_path):
    truth = write(tmp_path / "truth.csv", CROSS_TRUTH)
    answer = write(tmp_path / "answer.csv", CROSS_ANSWER[:3] + ["c,Happy"] + CROSS_ANSWER[4:])
    result = run_cli("--track=cross", f"--truth={truth}", f"--answer={answer}")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("merjax.score: error: ") and "answer.csv line 4" in line


def test_cli_help_exits_0():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--answer" in result.stdout + result.stderr
