"""MER-Prefer (track 3): the task contract, the §6.3 metric on hand-worked cases, the scorer
(rows by position), folds, answer.csv, and the CI-sized run end to end on the demo release."""
import csv
import json
import types
import zipfile

import numpy as np
import pytest

from configs import prefer as prefer_config
from merjax import export, metrics, score, tasks, train
from merjax.data import prepare
from merjax.score import ScoreError
from merjax.tasks import prefer
from merjax.train import FoldResult
from tfds_builders.mer2026 import demo

# ------------------------------------------------------------------------------------------------
# The metric: gold ties left out, a predicted tie counted as a1 (MER2026.md §6.3)

GOLD = ["a1", "a1", "a1", "a2", "same", "same"]
PRED = ["a1", "same", "a2", "a2", "a1", "a2"]
# Scored rows 1-4 (gold ties 5, 6 left out): gold a1 a1 a1 a2, predicted a1 a1 (same) a2 a2.
#   a1: support 3, 2 hits, 2 predicted -> F1 = 2*2 / (2 + 3) = 0.8
#   a2: support 1, 1 hit, 2 predicted  -> F1 = 2*1 / (2 + 1) = 2/3
# WAF = (3 * 0.8 + 1 * 2/3) / 4 = 23/30; ACC = 3/4.
# Three classes over all six rows, the predicted tie kept as a tie:
#   a1: support 3, 1 hit, 2 predicted -> 0.4; a2: support 1, 1 hit, 3 predicted -> 0.5; same: 0
# WAF3 = (3 * 0.4 + 1 * 0.5 + 2 * 0) / 6 = 1.7/6.
WAF, ACC, WAF3 = 23 / 30, 0.75, 1.7 / 6


def codes(values):
    return np.array([("a1", "a2", "same").index(v) for v in values])


def test_two_class_metric_by_hand():
    assert metrics.preference_scores(codes(GOLD), codes(PRED)) == {
        "waf": pytest.approx(WAF), "acc": pytest.approx(ACC), "n": 4}
    assert metrics.preference_waf3(codes(GOLD), codes(PRED)) == pytest.approx(WAF3)
    # Scored as a1, a predicted tie is worth exactly an a1 answer.
    as_a1 = codes([p if p != "same" else "a1" for p in PRED])
    assert metrics.preference_scores(codes(GOLD), as_a1) == metrics.preference_scores(
        codes(GOLD), codes(PRED))
    with pytest.raises(ValueError, match="aligned by row"):
        metrics.preference_scores(codes(GOLD), codes(PRED)[:5])


def test_eval_metrics_threshold_and_baselines():
    # P(a1) -> a1 where >= 0.5: a1 a1 a2 a2 a1 a2 (0.5 exactly is a1).
    probs = np.array([0.9, 0.5, 0.2, 0.1, 0.7, 0.3], np.float32)
    lengths = np.array([[10, 20], [30, 20], [5, 5], [1, 9], [9, 1], [3, 4]])
    kept = dict(preference=codes(GOLD), lengths=lengths, reference=np.full(6, 0.6))
    out = prefer.eval_metrics(probs, kept, None, prefix="val/")
    # Model: scored gold a1 a1 a1 a2 vs a1 a1 a2 a2: a1 F1 = 4/5, a2 F1 = 2/3 as above.
    assert out["val/waf"] == pytest.approx(WAF) and out["val/acc"] == pytest.approx(ACC)
    # Always a1: a1 F1 = 2*3 / (4 + 3) = 6/7, a2 F1 = 0 -> WAF = 3 * 6/7 / 4.
    assert out["val/a1_waf"] == pytest.approx(18 / 28) and out["val/a1_acc"] == 0.75
    # Longer wins (equal: a1): a2 a1 a1 a2 on the scored rows -> a1: 2 hits of 2 predicted, 3
    # true -> 0.8; a2: 1 hit, 2 predicted, 1 true -> 2/3: WAF 23/30, ACC 3/4.
    assert out["val/longer_waf"] == pytest.approx(WAF)
    assert out["val/ref_waf"] == out["val/a1_waf"]  # 0.6 everywhere: always a1
    # Three classes: a1 a1 a2 a2 a1 a2 against a1 a1 a1 a2 same same.
    assert out["val/waf3"] == pytest.approx(metrics.weighted_f1(
        codes(GOLD), codes(["a1", "a1", "a2", "a2", "a1", "a2"])))


# ------------------------------------------------------------------------------------------------
# The scorer: rows by position, names repeat, descriptions hold commas, quotes and line breaks

A = 'He said "calm, steady".\nThen silence.'
B = "The speaker frowns, glares"
TRUTH = [["name", "a1", "a2", "preference"], ["c1", A, B, "a1"], ["c1", B, A, "a1"],
         ["c2", A, B, "a1"], ["c3", B, A, "a2"], ["c4", A, A, "same"], ["c5", B, B, "same"]]


def write_rows(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return str(path)


def answer_rows(preferences):
    return [TRUTH[0]] + [r[:3] + [p] for r, p in zip(TRUTH[1:], preferences)]


def test_prefer_scorer_by_hand_csv_and_zip(tmp_path):
    truth = write_rows(tmp_path / "truth.csv", TRUTH)
    answer = write_rows(tmp_path / "answer.csv", answer_rows(PRED))
    expected = {"waf": pytest.approx(WAF), "acc": pytest.approx(ACC), "n": 4,
                "waf3": pytest.approx(WAF3), "rows": 6}
    assert score.score_prefer(truth, answer) == expected
    with zipfile.ZipFile(tmp_path / "answer.zip", "w") as z:
        z.write(answer, arcname="answer.csv")
    assert score.score_prefer(truth, str(tmp_path / "answer.zip")) == expected


@pytest.mark.parametrize("change, fragments", [
    # one row fewer
    (lambda rows: rows[:-1], ["answer.csv: 5 data rows", "truth.csv has 6", "in its order"]),
    # The a1 text of data row 3 differs. Lines are where a row ends (as for every scorer):
    # A holds a line break, so data rows 1-3 of the truth end on lines 3, 5 and 7.
    (lambda rows: rows[:3] + [["c2", "other text", B, "a1"]] + rows[4:],
     ["answer.csv line 6 (data row 3): a1 'other text'", "truth.csv line 7"]),
    # rows 3 and 4 swapped: names no longer line up
    (lambda rows: rows[:3] + [rows[4], rows[3]] + rows[5:],
     ["answer.csv line 7 (data row 3): name 'c3'", "'c2'"]),
    (lambda rows: rows[:2] + [rows[2][:3] + ["A2"]] + rows[3:],
     ["answer.csv line 5: preference 'A2'", "a1, a2, same"]),
    (lambda rows: [["name", "a1", "preference"]] + [r[:2] + r[3:] for r in rows[1:]],
     ["answer.csv line 1", "lacks column(s) a2"]),
])
def test_prefer_scorer_errors_name_file_and_row(tmp_path, change, fragments):
    truth = write_rows(tmp_path / "truth.csv", TRUTH)
    answer = write_rows(tmp_path / "answer.csv", change(answer_rows(PRED)))
    with pytest.raises(ScoreError) as info:
        score.score_prefer(truth, answer)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_prefer_scorer_bad_truth_value_names_the_truth(tmp_path):
    truth = write_rows(tmp_path / "truth.csv", TRUTH[:3] + [TRUTH[3][:3] + ["tie"]] + TRUTH[4:])
    answer = write_rows(tmp_path / "answer.csv", answer_rows(PRED))
    with pytest.raises(ScoreError, match=r"truth\.csv line 7: preference 'tie'"):
        score.score_prefer(truth, answer)


# ------------------------------------------------------------------------------------------------
# Folds and answer.csv, on stand-in data

def _split(rows):
    """A random-access source of examples as the prepared dataset decodes them."""
    return [dict(name=n.encode(), fold=f, index=i, a1=a1.encode(), a2=a2.encode())
            for i, (n, f, a1, a2) in enumerate(rows)]


def _data(train_rows=(), candidate_rows=(), no_input=(), counts=None, num_folds=2):
    meta = dict(no_input=dict(train=[], candidates=list(no_input)),
                csv_rows=dict(candidates=len(candidate_rows)),
                preference_counts=counts or dict(emoprefer=dict(a1=1, a2=3, same=2)))
    return types.SimpleNamespace(
        splits=dict(train=_split(train_rows), candidates=_split(candidate_rows)),
        info=types.SimpleNamespace(metadata=meta),
        builder_config=types.SimpleNamespace(num_folds=num_folds, name="stand-in"))


def test_folds_follow_the_builder_and_leave_out_clips_without_input():
    rows = [("c0", 0, "x", "y"), ("c1", 1, "x", "y"), ("c0", 0, "x", "y"), ("c2", 1, "x", "y"),
            ("c3", 0, "x", "y")]
    data = _data(rows)
    data.info.metadata["no_input"]["train"] = ["c3"]
    folds = prefer.folds(None, data)
    assert [f.name for f in folds] == ["fold_0", "fold_1"]
    assert [list(f.validation.indices) for f in folds] == [[0, 2], [1, 3]]
    assert [list(f.train.indices) for f in folds] == [[1, 3], [0, 2]]
    data.builder_config.num_folds = 3
    with pytest.raises(ValueError, match="fold 2 of 3 has no judged row"):
        prefer.folds(None, data)


def test_answer_keeps_candidate_order_repeats_texts_and_answers_no_input(tmp_path):
    texts = [("s1", 0, A, B), ("s2", 0, B, A), ("s1", 0, B, B), ("s3", 0, A, B)]
    data = _data(candidate_rows=texts, no_input=["s3"])
    # Split order differs from the CSV rows: positions 0..3 hold rows 2, 0, 3, 1.
    data.splits["candidates"] = [data.splits["candidates"][i] for i in (2, 0, 3, 1)]
    ids = ["s1", "s1", "s3", "s2"]
    kept = dict(row=np.array([2, 0, 3, 1]))
    fold0 = np.array([0.2, 0.9, 0.9, 0.6], np.float32)
    fold1 = np.array([0.6, 0.3, 0.9, 0.2], np.float32)  # means 0.4, 0.6, 0.9, 0.4
    results = [FoldResult("fold_0", 1, {}, ids, fold0, kept),
               FoldResult("fold_1", 1, {}, ids, fold1, kept)]
    prefer.write_outputs(str(tmp_path), results, None, data)
    with open(tmp_path / "answer.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    # rows 0..3: s1 (0.6: a1), s2 (0.4: a2), s1 (0.4: a2), s3 (no input: the majority, a2)
    assert rows == [["name", "a1", "a2", "preference"], ["s1", A, B, "a1"], ["s2", B, A, "a2"],
                    ["s1", B, B, "a2"], ["s3", A, B, "a2"]]
    with zipfile.ZipFile(tmp_path / "answer.zip") as z:
        assert z.read("answer.csv") == (tmp_path / "answer.csv").read_bytes()
    # Even a1 and a2 counts answer a1.
    data.info.metadata["preference_counts"] = dict(emoprefer=dict(a1=2, a2=1, same=0),
                                                   emopreferv2=dict(a1=1, a2=2, same=5))
    assert prefer.majority_preference(data) == "a1"


def test_reference_features_change_sign_when_a1_and_a2_swap():
    mods = {"audio": ("dense", 5, 1), "video": ("dense", 3, 1)}
    rng = np.random.default_rng(0)
    batch = {"audio": rng.normal(size=(4, 1, 5)), "audio_mask": np.ones((4, 1), bool),
             "video": rng.normal(size=(4, 1, 3)), "video_mask": np.ones((4, 1), bool)}
    for c in ("a1", "a2"):
        batch[c] = rng.integers(1, 257, size=(4, 12))
        batch[f"{c}_mask"] = np.arange(12) < rng.integers(1, 13, size=(4, 1))
    features = prefer.pair_features(mods, clip_dims=3)
    x = features(batch)
    assert x.shape == (4, 4 * 27)
    swapped = dict(batch, a1=batch["a2"], a2=batch["a1"], a1_mask=batch["a2_mask"],
                   a2_mask=batch["a1_mask"])
    np.testing.assert_allclose(features(swapped), -x)


# ------------------------------------------------------------------------------------------------
# The CI-sized run, end to end

def test_task_satisfies_the_contract():
    assert tasks.load("prefer") is tasks.check(prefer)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("prefer")
    config = prefer_config.get_config("runlocal")
    config.data.tfds_dir = str(base / "tfds")
    workdir = base / "run"
    summary = train.run(config, str(workdir))
    (release,) = (base / "tfds" / "merjax_demo").glob("mer2026-*/release")
    return types.SimpleNamespace(config=config, workdir=workdir, summary=summary,
                                 release=release)


def test_run_writes_cv_scores_and_a_scorable_answer(run):
    lines = [json.loads(line) for line in (run.workdir / "metrics.jsonl").read_text().splitlines()]
    best = {}
    for line in lines:
        if "val/waf" in line:
            for key in ("val/waf", "val/acc", "val/waf3", "val/a1_waf", "val/longer_waf",
                        "val/ref_waf"):
                assert 0 <= line[key] <= 1, (key, line)
            best[line["fold"]] = max(best.get(line["fold"], 0.0), line["val/waf"])
    assert sorted(best) == [0, 1]
    assert run.summary["cv/waf"] == pytest.approx(np.mean(list(best.values())))
    assert lines[-1] == {"step": run.config.total_steps, **run.summary}

    with open(run.release / "track3_candidate.csv", newline="", encoding="utf-8") as f:
        candidates = list(csv.reader(f))
    with open(run.workdir / "answer.csv", newline="", encoding="utf-8") as f:
        answer = list(csv.reader(f))
    assert answer[0] == ["name", "a1", "a2", "preference"]
    assert len(answer) == len(candidates)
    assert [r[:3] for r in answer[1:]] == candidates[1:]  # order, repeats and texts kept
    assert {r[3] for r in answer[1:]} <= {"a1", "a2"}
    names = [r[0] for r in candidates[1:]]
    assert len(set(names)) < len(names)  # the demo repeats candidate names
    truth = run.release / demo.TRUTH_DIR / "track3_candidates.csv"
    scores = score.score_prefer(str(truth), str(run.workdir / "answer.zip"))
    assert scores["rows"] == len(names) and 0 <= scores["waf"] <= 1


def test_predict_mode_writes_the_same_answer(run):
    answer = (run.workdir / "answer.csv").read_text()
    (run.workdir / "answer.csv").unlink()
    train.run(run.config, str(run.workdir), mode="predict")
    assert (run.workdir / "answer.csv").read_text() == answer


def test_trained_model_is_symmetric_in_a1_and_a2(run):
    """P(a1 > a2) = 1 - P(a2 > a1) on the exported best state of a fold, on real pairs."""
    train.run(run.config, str(run.workdir), mode="export")
    exported, params, signature = export.load(str(run.workdir / "fold_0" / "export"))
    assert signature["output"]["shape"] == ["b"]
    data = prepare.prepare(run.config, prefer, announce=False)
    transform = prefer.make_transform(run.config, data)
    examples = [transform(data.splits["train"][i]) for i in range(8)]
    inputs = {k: np.stack([e[k] for e in examples]) for k in signature["inputs"]}
    swapped = dict(inputs, a1=inputs["a2"], a2=inputs["a1"], a1_mask=inputs["a2_mask"],
                   a2_mask=inputs["a1_mask"])
    p = np.asarray(exported.call(params, inputs))
    q = np.asarray(exported.call(params, swapped))
    assert p.shape == (8,) and not np.allclose(p, 0.5, atol=1e-3)  # trained: not all even
    np.testing.assert_allclose(p + q, 1.0, atol=1e-6)
