"""MER-FG training side (merjax/tasks/fg.py): the contract, scoring that equals the official
EW-F1 on the original words, decoding, and the run end to end on the demo release."""
import csv
import json

import numpy as np
import pytest

from configs import fg as fg_config
from merjax import metrics, score, submission, tasks, train
from merjax.tasks import fg
from tfds_builders.mer2026 import demo as mer2026_demo
from tfds_builders.mer2026 import emotion_wheel


def test_fg_satisfies_the_task_contract():
    assert tasks.load("fg") is fg


def test_decode_keeps_the_top_word_and_every_word_over_the_threshold():
    probs = np.array([[0.1, 0.2, 0.3], [0.9, 0.6, 0.1]])
    np.testing.assert_array_equal(submission.fg_decode(probs, 0.5),
                                  [[False, False, True], [True, True, False]])


def test_validation_scoring_equals_the_official_ew_f1_on_the_original_words():
    """Gold as the transform stores it (clusters of the original words) and predictions as
    vocabulary words give exactly metrics.ew_scores on the words themselves."""
    vocabulary = ("anger", "anxiety", "happiness", "joy", "sadness", "surprise", "worry")
    wheel, categories, word_bits = fg.tables(vocabulary, "")
    rng = np.random.default_rng(0)
    pool = ["angry", "happy", "joyful", "sad", "worried", "shocked", "neutral", "on edge",
            "let down", "Anxious ", "calm"]
    gold_words = [",".join(rng.choice(pool, rng.integers(1, 4), replace=False))
                  for _ in range(40)]
    probs = rng.random((40, len(vocabulary)))
    chosen = submission.fg_decode(probs, 0.6)
    gold = np.stack([fg.gold_bits(w, wheel, categories) for w in gold_words])
    ours = fg.ew(chosen, gold, word_bits, categories)
    official = metrics.ew_scores(gold_words, [[v for v, c in zip(vocabulary, row) if c]
                                              for row in chosen], wheel)
    for key in ("ew_f1", "ew_p", "ew_r"):
        assert ours[key] == pytest.approx(official[key], abs=1e-12)
    assert 0 < ours["ew_f1"] < 1


def _config(tmp_path, *variants):
    c = fg_config.get_config(",".join(("runlocal",) + variants))
    c.data.tfds_dir = str(tmp_path / "tfds")
    return c


def test_runlocal_writes_a_complete_answer_the_scorer_reads(tmp_path):
    workdir = tmp_path / "run"
    scores = train.run(_config(tmp_path), str(workdir))
    assert {"cv/ew_f1", "cv/top_set_ew_f1", "cv/ref_ew_f1", "cv/threshold"} <= set(scores)
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    evals = [r for r in rows if "val/ew_f1" in r]
    assert {r["fold"] for r in evals} == {0, 1}
    assert all({"val/words_per_clip", "val/distinct_words", "val/top_word_share"} <= set(r)
               for r in evals)

    release = next((tmp_path / "tfds" / "merjax_demo").glob("mer2026-*")) / "release"
    with open(release / "track1_track2_candidate.csv", newline="") as f:
        candidates = [r["name"] for r in csv.DictReader(f)]
    with open(workdir / "answer.csv", newline="") as f:
        answer = list(csv.DictReader(f))
    assert [r["name"] for r in answer] == candidates
    vocabulary = emotion_wheel.load().forms
    assert all(r["openset"] and all(w in vocabulary for w in r["openset"].split(","))
               for r in answer)
    truth = release / mer2026_demo.TRUTH_DIR / "track2_candidates.csv"
    from_csv = score.score_fg(str(truth), str(workdir / "answer.csv"))
    assert from_csv == score.score_fg(str(truth), str(workdir / "answer.zip"))
    # The list form the scorer also accepts gives the same scores.
    listed = tmp_path / "listed.csv"
    with open(listed, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "openset"])
        writer.writerows([r["name"], "[" + ", ".join(r["openset"].split(",")) + "]"]
                         for r in answer)
    assert score.score_fg(str(truth), str(listed)) == from_csv
