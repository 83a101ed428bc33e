"""Training learns what the inputs carry, on the demo releases and on releases written by
independent generators (tests/independent) that share neither the demo's rates, scales and
layout nor its label mechanism.

MER-PS must beat the per-(video, second) prior of the training subjects on held-out subjects;
MER-Cross must answer held-out candidates well above the majority class, scored by the same code
as `python -m merjax.score` against truth the release does not contain. Each run finishes in
about a minute on two CPU cores.
"""
import csv

import pytest

from configs import cross as cross_config
from configs import ps as ps_config
from merjax import metrics, score, train
from tests.independent import cross_release, ps_release
from tfds_builders.mer2026 import demo as mer2026_demo


def _ps_config(tmp_path, manual_dir=""):
    """The default config (the kit's 20 train / 4 validation subjects, 600 steps)."""
    c = ps_config.get_config()
    c.data.tfds_dir = str(tmp_path / "tfds")
    c.data.manual_dir = str(manual_dir)
    c.data.num_shards = 2
    c.eval_every = c.checkpoint_every = c.total_steps
    return c


def _cross_config(tmp_path, manual_dir="", features=None):
    c = cross_config.get_config("runlocal")
    c.data.tfds_dir = str(tmp_path / "tfds")
    c.data.manual_dir = str(manual_dir)
    if features is not None:
        c.data.features.audio, c.data.features.text, c.data.features.video = features
    c.total_steps, c.eval_every, c.checkpoint_every, c.log_every = 200, 50, 200, 50
    c.batch_size = c.eval_batch_size = 32
    c.optim.warmup_steps = 20
    return c


def _majority_waf(truth_csv, train_labels):
    """The WAF of answering every candidate with the most frequent training label."""
    majority = max(set(train_labels), key=train_labels.count)
    with open(truth_csv, newline="") as f:
        gold = [row["discrete"] for row in csv.DictReader(f)]
    return metrics.weighted_f1(gold, [majority] * len(gold))


def test_ps_beats_the_prior_on_the_demo(tmp_path):
    scores = train.run(_ps_config(tmp_path), str(tmp_path / "run"))
    assert scores["val/mae"] < 0.85 * scores["val/prior_mae"], scores


@pytest.mark.parametrize("mechanism", ["hbo_theta"])
def test_ps_beats_the_prior_on_an_independent_release(tmp_path, mechanism):
    """Another EEG rate (250 Hz, float64 with large DC offsets), flat / noisy / square-wave bad
    channels, labels carried by the HbO level of 8 fNIRS channels and theta power in 8 EEG
    channels, half of each label's variance shared across subjects."""
    subjects = tuple(f"test_{i}" for i in range(1, 25))
    ps_release.write_ps_release(tmp_path / "release", seed=11, subjects=subjects,
                                mechanism=mechanism)
    scores = train.run(_ps_config(tmp_path, tmp_path / "release"), str(tmp_path / "run"))
    assert scores["val/mae"] < 0.85 * scores["val/prior_mae"], scores


def test_cross_answers_demo_candidates_above_the_majority_class(tmp_path):
    config = _cross_config(tmp_path)
    config.data.demo.scale = 2.0  # the default demo: 36 candidates
    train.run(config, str(tmp_path / "run"))
    demo_root = next((tmp_path / "tfds" / "merjax_demo").glob("mer2026-*")) / "release"
    truth = demo_root / mer2026_demo.TRUTH_DIR / "track1_candidates.csv"
    scores = score.score_cross(str(truth), str(tmp_path / "run" / "answer.zip"))
    with open(demo_root / "track1_train.csv", newline="") as f:
        train_labels = [row["discrete"] for row in csv.DictReader(f)]
    assert scores["waf"] > _majority_waf(truth, train_labels) + 0.2, scores


def test_cross_answers_independent_candidates_above_the_majority_class(tmp_path):
    """Other dims (48/96/32), a shared offset and per-modality scales, the nested layout, labels
    carried by class means buried in isotropic noise."""
    rel = cross_release.write_cross_release(
        tmp_path / "data", seed=5, n_train=400, n_candidates=300, dims=(48, 96, 32),
        separation=0.4, offset=2.0, scale=(1.0, 3.0, 0.3), layout="nested",
        truth_path=tmp_path / "truth.csv")
    config = _cross_config(tmp_path, tmp_path / "data", rel.folders)
    train.run(config, str(tmp_path / "run"))
    scores = score.score_cross(str(tmp_path / "truth.csv"), str(tmp_path / "run" / "answer.csv"))
    majority = _majority_waf(tmp_path / "truth.csv", list(rel.train.values()))
    assert scores["waf"] > majority + 0.3, (scores, majority)
