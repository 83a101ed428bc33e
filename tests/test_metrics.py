"""Metrics against values worked out by hand."""
import json

import numpy as np
import pytest

from merjax import metrics


def test_ps_mae_rounds_and_clips_like_the_scorer():
    pred = np.array([[10.4, 300.0], [0.2, 100.6]])  # -> [[10, 255], [1, 101]]
    target = np.array([[12, 250], [1, 100]])
    out = metrics.ps_metrics(pred, target)
    # |10-12| + |255-250| + |1-1| + |101-100| = 8 over 4 values
    assert out["mae"] == pytest.approx(2.0)
    assert out["mae_valence"] == pytest.approx(1.0)   # (2 + 0) / 2
    assert out["mae_arousal"] == pytest.approx(3.0)   # (5 + 1) / 2


def test_submission_values_are_integers_in_range():
    # Halves round to even (np.rint, as Python's round does): 254.5 -> 254, 127.5 -> 128.
    out = metrics.ps_to_submission([[-3.0, 0.5], [254.5, 999.0], [127.5, 128.49]])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[1, 1], [254, 255], [128, 128]])
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.ps_to_submission([[np.nan, 1.0]])


def test_ccc_and_pearson_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 4.0, 6.0, 8.0])
    assert metrics.pearson(x, y) == pytest.approx(1.0)
    # means 2.5, 5; var x 1.25, var y 5; cov 2.5 -> 2*2.5 / (1.25 + 5 + 6.25) = 0.4
    assert metrics.ccc(x, y) == pytest.approx(0.4)
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    assert metrics.pearson(x, -x) == pytest.approx(-1.0)
    assert metrics.pearson(x, np.ones(4)) == 0.0  # undefined -> 0


def test_writer_appends_jsonl_and_tensorboard(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path))
    writer.write(5, {"train/loss": 0.5})
    writer.write(10, {"val/waf": 0.25}, fold=2)
    writer.close()
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 5, "train/loss": 0.5}, {"step": 10, "fold": 2, "val/waf": 0.25}]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_weighted_f1_matches_sklearn_by_hand():
    y = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 2, 2]
    # F1: class 0 = 2*2/(2+3) = 0.8, class 1 = 2*1/(2+2) = 0.5, class 2 = 2*1/(2+1) = 2/3.
    expected = (3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6
    assert metrics.weighted_f1(y, p) == pytest.approx(expected)
    assert metrics.accuracy(y, p) == pytest.approx(4 / 6)
    # A class only predicted (3) weighs nothing; a class never predicted scores 0.
    assert metrics.weighted_f1([0, 1], [0, 3]) == pytest.approx(0.5)
    assert metrics.weighted_f1([0, 0], [0, 0]) == 1.0
