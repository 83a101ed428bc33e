"""Training learns what the inputs carry, on the demo releases and on releases written by
independent generators (tests/independent) that share neither the demo's rates, scales and
layout nor its label mechanism.

MER-PS must beat the per-(video, second) prior of the training subjects and its ridge reference
on held-out subjects; MER-Cross must answer held-out candidates well above the majority class
and at least as well as its logistic reference (within 0.02 WAF), scored by the same code as
`python -m merjax.score` against truth the release does not contain. Each run finishes in about
a minute on two CPU cores.
"""
import csv

import pytest

from configs import cross as cross_config
from configs import fg as fg_config
from configs import prefer as prefer_config
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


def _assert_ps_learns(scores):
    """Held-out (validation) subjects: clearly below the prior, below the ridge reference."""
    assert scores["val/mae"] < 0.85 * scores["val/prior_mae"], scores
    assert scores["val/mae"] < scores["val/ref_mae"], scores


def test_ps_beats_the_prior_and_the_reference_on_the_demo(tmp_path):
    _assert_ps_learns(train.run(_ps_config(tmp_path), str(tmp_path / "run")))


@pytest.mark.parametrize("mechanism", ["hbo_theta", "gamma_hbr"])
def test_ps_beats_the_prior_and_the_reference_on_independent_releases(tmp_path, mechanism):
    """Another EEG rate (250 Hz, float64 with large DC offsets), flat / noisy / square-wave bad
    channels, half of each label's variance shared across subjects; labels carried by the HbO
    level of 8 fNIRS channels and theta power in 8 EEG channels ("hbo_theta"), or by gamma
    power in 8 other EEG channels and the HbR level of 8 other fNIRS channels ("gamma_hbr")."""
    subjects = tuple(f"test_{i}" for i in range(1, 25))
    ps_release.write_ps_release(tmp_path / "release", seed=11, subjects=subjects,
                                mechanism=mechanism)
    _assert_ps_learns(train.run(_ps_config(tmp_path, tmp_path / "release"),
                                str(tmp_path / "run")))


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


INDEPENDENT_CROSS = {
    # Other dims (48/96/32), a shared offset and per-modality scales, the nested layout.
    "small_dims": dict(seed=5, n_train=400, dims=(48, 96, 32), separation=0.4, offset=2.0,
                       scale=(1.0, 3.0, 0.3), layout="nested"),
    # The real feature dims (768/1024/768), 240 train clips scattered widely around their class
    # means: more dims than clips, where the deep path alone memorises the train set.
    "wide_scatter": dict(seed=7, n_train=240, dims=(768, 1024, 768), separation=0.15,
                         offset=0.5, layout="flat"),
}


@pytest.mark.parametrize("release", sorted(INDEPENDENT_CROSS))
def test_cross_matches_the_logistic_reference_on_independent_candidates(tmp_path, release):
    """Labels carried by class means buried in isotropic noise: the candidates' WAF is well
    above the majority class and within 0.02 of the logistic read-out's (or above it)."""
    rel = cross_release.write_cross_release(
        tmp_path / "data", n_candidates=300, truth_path=tmp_path / "truth.csv",
        **INDEPENDENT_CROSS[release])
    waf = {}
    for name in ("fusion", "logistic"):
        config = _cross_config(tmp_path, tmp_path / "data", rel.folders)
        config.model.name = name
        train.run(config, str(tmp_path / name))
        waf[name] = score.score_cross(str(tmp_path / "truth.csv"),
                                      str(tmp_path / name / "answer.csv"))["waf"]
    majority = _majority_waf(tmp_path / "truth.csv", list(rel.train.values()))
    assert waf["fusion"] > majority + 0.3, (waf, majority)
    assert waf["fusion"] >= waf["logistic"] - 0.02, waf


def test_fg_beats_the_most_frequent_word_set_on_the_demo(tmp_path):
    """The demo's track-2 words follow the clips' signals: validation EW-F1 far above the
    answer every clip gets from the most frequent training word set."""
    c = fg_config.get_config()
    c.data.tfds_dir = str(tmp_path / "tfds")
    c.data.num_folds = 3
    c.total_steps, c.eval_every, c.checkpoint_every = 150, 50, 150
    scores = train.run(c, str(tmp_path / "run"))
    assert scores["cv/ew_f1"] > scores["cv/top_set_ew_f1"] + 0.3, scores
    assert scores["cv/ew_f1"] >= scores["cv/ref_ew_f1"] - 0.02, scores


def test_prefer_beats_always_a1_and_the_length_rule_on_the_demo(tmp_path):
    """MER-Prefer on the default demo (108 judged rows, a fifth of them ties): the preferred
    description is the one written for the clip's latent class, which only the clip's inputs
    carry, so text-only rules stay near chance. On the validation folds and on the held-out
    candidates (scored against the demo's truth) the model must clearly beat answering a1
    everywhere and answering the longer description. Three folds of 60 steps on one device
    (this checks learning, not sharding) keep it near a minute: each fold compiles afresh."""
    c = prefer_config.get_config()
    c.data.tfds_dir = str(tmp_path / "tfds")
    c.data.num_folds = 3
    c.mesh.devices = 1
    c.total_steps, c.eval_every, c.checkpoint_every, c.log_every = 60, 20, 60, 20
    scores = train.run(c, str(tmp_path / "run"))
    assert scores["cv/waf"] > max(scores["cv/a1_waf"], scores["cv/longer_waf"]) + 0.3, scores
    demo_root = next((tmp_path / "tfds" / "merjax_demo").glob("mer2026-*")) / "release"
    truth = demo_root / mer2026_demo.TRUTH_DIR / "track3_candidates.csv"
    with open(truth, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    gold = [("a1", "a2", "same").index(r["preference"]) for r in rows]
    longer = [1 if len(r["a2"].encode()) > len(r["a1"].encode()) else 0 for r in rows]
    baselines = [metrics.preference_scores(gold, pred)["waf"] for pred in ([0] * len(gold), longer)]
    answer = score.score_prefer(str(truth), str(tmp_path / "run" / "answer.zip"))
    assert answer["waf"] > max(baselines) + 0.3, (answer, baselines)
