"""MER-PS (track 4): release reader/validator, demo release and the TFDS builder.

Expected values are recomputed here straight from the .mat/.csv files with scipy/numpy, not
through tfds_builders.features, so that the builder is checked against the layout, not against
itself.
"""
import csv
import hashlib
import pathlib
import shutil

import numpy as np
import pytest
import scipy.io
import scipy.signal

from merjax.data import prepare
from tfds_builders.mer_ps import demo
from tfds_builders.mer_ps import mer_ps_dataset_builder as mps
from tfds_builders.mer_ps import release, signals
from tfds_builders.mer_ps.release import ReleaseError

TRAIN, VALIDATION = ("test_1", "test_2"), ("test_3",)
SPLITS = {"train": TRAIN, "validation": VALIDATION}
VIDEOS = range(1, 16)


def _config(**fields):
    return mps.make_config(release="demo", train_subjects=TRAIN, validation_subjects=VALIDATION,
                           **fields)


def _build(root, data_dir, config=None):
    return prepare.build(mps.Builder, config or _config(), manual_dir=root, data_dir=data_dir,
                         num_shards=2)


def _records(builder, split):
    """sample_id (str) -> decoded example, plus the ids in stored order."""
    source = builder.as_data_source(split)
    examples = [source[i] for i in range(len(source))]
    return {ex["sample_id"].decode(): ex for ex in examples}, [ex["sample_id"] for ex in examples]


def _var(path, name):
    return scipy.io.loadmat(str(path))[name].astype(np.float64)


def _labels(root, subject, video):
    return _var(pathlib.Path(root) / "annotations" / f"{subject}_label.mat", f"video_{video}")


def _kept_channels(root, subject):
    with open(pathlib.Path(root) / "fNIRS_reservations.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["sub_id"] == subject)
    return np.array([row[f"ch-{c}"] == "1" for c in range(1, 52)])


def _resave(path, update=(), drop=()):
    arrays = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    arrays.update(dict(update))
    for name in drop:
        del arrays[name]
    scipy.io.savemat(str(path), arrays)


@pytest.fixture(scope="session")
def demo_250(tmp_path_factory):
    return demo.write_demo_release(tmp_path_factory.mktemp("demo250"), num_subjects=3,
                                   seconds=(2, 2), eeg_rate_hz=250)


@pytest.fixture(scope="session")
def demo_1000(tmp_path_factory):
    return demo.write_demo_release(tmp_path_factory.mktemp("demo1000"), seed=3, num_subjects=3,
                                   seconds=(2, 2), eeg_rate_hz=1000)


@pytest.fixture(scope="session")
def built_250(demo_250, tmp_path_factory):
    return _build(demo_250, tmp_path_factory.mktemp("tfds250"))


@pytest.fixture(scope="session")
def records_250(built_250):
    return {split: _records(built_250, split)[0] for split in SPLITS}


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    return demo.write_demo_release(tmp_path_factory.mktemp("small"), num_subjects=1,
                                   seconds=(2, 2), eeg_rate_hz=100)


@pytest.fixture
def broken(demo_small, tmp_path):
    """A private copy of the 1-subject release, for tests that damage it."""
    return pathlib.Path(shutil.copytree(demo_small, tmp_path / "release"))


def _check(root, subjects=("test_1",)):
    return release.check_release(root, subjects, expected_kind="demo")


# ------------------------------------------------------------------------------------------------
# Builder output

def test_examples_are_the_label_seconds_with_matching_ids(demo_250, built_250, records_250):
    for split, subjects in SPLITS.items():
        expected = {f"{s}_V{v:02d}_T{i:03d}": (s, v, i) for s in subjects for v in VIDEOS
                    for i in range(_labels(demo_250, s, v).shape[1])}
        assert built_250.info.splits[split].num_examples == len(expected) == 30 * len(subjects)
        assert set(records_250[split]) == set(expected)
        for sid, ex in records_250[split].items():
            assert (ex["subject"].decode(), ex["video"], ex["second"]) == expected[sid]
            np.testing.assert_array_equal(
                ex["label"], _labels(demo_250, *expected[sid][:2])[:, expected[sid][2]])
    assert mps.sample_id("test_1", 1, 0) == "test_1_V01_T000"


def test_eeg_window_is_baseline_corrected_resampled_and_front_padded(demo_250, records_250):
    folder = demo_250 / "data" / "test_3"
    raw, base = _var(folder / "EEG_videos.mat", "video_2"), _var(folder / "EEG_baselines.mat",
                                                                   "video_2")
    assert raw.shape == (64, 500)
    expected = scipy.signal.resample_poly(raw - base.mean(axis=1, keepdims=True), 64, 125, axis=1)
    assert expected.shape == (64, 256)                       # 2 s at 128 Hz
    first, second = (records_250["validation"][f"test_3_V02_T00{i}"] for i in (0, 1))
    assert first["eeg"].shape == (64, 256) and first["eeg"].dtype == np.float32
    np.testing.assert_array_equal(first["eeg"][:, :128], 0)          # second -1 does not exist
    np.testing.assert_allclose(first["eeg"][:, 128:], expected[:, :128], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(first["context_mask"], [False, True])
    np.testing.assert_allclose(second["eeg"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(second["context_mask"], [True, True])


def test_baseline_correction_removes_each_channels_baseline_mean(demo_250, records_250):
    folder = demo_250 / "data" / "test_1"
    raw, base = _var(folder / "EEG_videos.mat", "video_5"), _var(folder / "EEG_baselines.mat",
                                                                   "video_5")
    uncorrected = scipy.signal.resample_poly(raw, 64, 125, axis=1)
    stored = records_250["train"]["test_1_V05_T001"]["eeg"]
    removed = (uncorrected - stored)[:, 40:216]        # away from the filter's edge ringing
    np.testing.assert_allclose(removed, np.broadcast_to(base.mean(axis=1)[:, None], removed.shape),
                               rtol=1e-3, atol=0.05)
    assert np.median(np.abs(base.mean(axis=1))) > 10   # the demo's DC offsets make it matter


def test_fnirs_window_bins_seconds_and_zeroes_bad_channels(demo_250, records_250):
    folder = demo_250 / "data" / "test_3"
    raw, base = _var(folder / "fNIRS_videos.mat", "video_2"), _var(folder / "fNIRS_baselines.mat",
                                                                     "video_2")
    kept = _kept_channels(demo_250, "test_3")
    assert 2 <= (~kept).sum() <= 4 and kept[:20].all()
    assert np.abs(raw[:, ~kept]).max() > 1000          # the junk that must never reach a model
    z = (raw - base.mean(axis=2, keepdims=True))[[0, 1, 2]]
    z[:, ~kept] = 0
    bounds = np.round(np.arange(3) * raw.shape[2] / 2).astype(int)
    per_second = [np.stack([part.mean(axis=2) for part in
                            np.array_split(z[:, :, bounds[i]:bounds[i + 1]], 4, axis=2)])
                  for i in range(2)]                   # each [bins=4, types=3, 51]
    first, second = (records_250["validation"][f"test_3_V02_T00{i}"] for i in (0, 1))
    assert second["fnirs"].shape == (8, 3, 51) and second["fnirs"].dtype == np.float32
    np.testing.assert_allclose(second["fnirs"], np.concatenate(per_second), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(first["fnirs"][:4], 0)
    np.testing.assert_allclose(first["fnirs"][4:], per_second[0], rtol=1e-5, atol=1e-5)
    for ex in records_250["validation"].values():
        np.testing.assert_array_equal(ex["fnirs_mask"], kept)
        np.testing.assert_array_equal(ex["fnirs"][:, :, ~kept], 0)


def test_eeg_rate_is_derived_from_the_arrays(demo_1000, built_250, tmp_path):
    built_1000 = _build(demo_1000, tmp_path)
    assert built_250.info.metadata["source_eeg_rate_hz"] == 250.0
    assert built_1000.info.metadata["source_eeg_rate_hz"] == 1000.0
    folder = demo_1000 / "data" / "test_2"
    raw, base = _var(folder / "EEG_videos.mat", "video_9"), _var(folder / "EEG_baselines.mat",
                                                                   "video_9")
    assert raw.shape == (64, 2000) and base.shape == (64, 5000)
    expected = scipy.signal.resample_poly(raw - base.mean(axis=1, keepdims=True), 16, 125, axis=1)
    stored = _records(built_1000, "train")[0]["test_2_V09_T001"]["eeg"]
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-4)


def test_prior_leaves_the_training_subject_out(demo_250, built_250, records_250):
    labels = {(s, v): _labels(demo_250, s, v) for s in TRAIN + VALIDATION for v in VIDEOS}
    table = built_250.info.metadata["label_prior"]
    other = {"test_1": "test_2", "test_2": "test_1"}     # two training subjects: LOSO = the other
    leaky = 0
    for split in SPLITS:
        for ex in records_250[split].values():
            subject, v, i = ex["subject"].decode(), ex["video"], ex["second"]
            train_mean = np.mean([labels[s, v][:, i] for s in TRAIN], axis=0)
            np.testing.assert_allclose(table["per_second"][str(v)][i], train_mean)
            if split == "train":
                np.testing.assert_array_equal(ex["prior"], labels[other[subject], v][:, i])
            else:
                np.testing.assert_allclose(ex["prior"], train_mean, rtol=1e-6)
            all_mean = np.mean([labels[s, v][:, i] for s in TRAIN + VALIDATION], axis=0)
            leaky += not np.allclose(all_mean, train_mean)
    assert leaky > 50     # so the equality above really tells train-only from all subjects
    assert built_250.info.metadata["prior_rule"].startswith(
        "train examples: mean over the other training subjects (leave-one-subject-out)")


def _hand_labels(k, video, second):
    """Labels of subject test_k chosen so that every prior below is a short sum by hand."""
    return 10 * k + video + 50 * second, 10 + 15 * k * k + second


@pytest.fixture(scope="module")
def hand_release(tmp_path_factory):
    """4 subjects with the labels of `_hand_labels` (2 s per video)."""
    root = demo.write_demo_release(tmp_path_factory.mktemp("hand"), num_subjects=4,
                                   seconds=(2, 2), eeg_rate_hz=100)
    for k in range(1, 5):
        _resave(root / "annotations" / f"test_{k}_label.mat",
                {f"video_{v}": np.array([_hand_labels(k, v, i) for i in range(2)], float).T
                 for v in VIDEOS})
    return root


def test_prior_by_hand(hand_release, tmp_path):
    config = mps.make_config(release="demo", train_subjects=("test_1", "test_2", "test_3"),
                             validation_subjects=("test_4",))
    built = _build(hand_release, tmp_path, config)
    # valence 10k + v + 50i: the others' mean of 10k is 25, 20, 15 for k = 1, 2, 3 and 20 over
    # all three; arousal 10 + 15k^2 + i: others' 15k^2 are (60+135)/2, (15+135)/2, (15+60)/2
    # and (15+60+135)/3 = 70 over all three.
    expected = {"test_1": (25, 107.5), "test_2": (20, 85.0), "test_3": (15, 47.5),
                "test_4": (20, 80.0)}
    for split in SPLITS:
        records = _records(built, split)[0]
        assert len(records) == 30 * (3 if split == "train" else 1)
        for ex in records.values():
            val, aro = expected[ex["subject"].decode()]
            v, i = int(ex["video"]), int(ex["second"])
            np.testing.assert_array_equal(ex["prior"],
                                          np.float32([val + v + 50 * i, aro + i]))
    table = built.info.metadata["label_prior"]
    assert table["per_second"]["7"] == [[27.0, 80.0], [77.0, 81.0]]   # all training subjects
    assert table["global"] == [20 + 8 + 25, 80.5]


def test_prior_with_one_training_subject(hand_release, tmp_path, caplog):
    caplog.set_level("WARNING", logger="absl")
    config = mps.make_config(release="demo", train_subjects=("test_2",),
                             validation_subjects=("test_1",))
    built = _build(hand_release, tmp_path, config)
    for split in SPLITS:
        for ex in _records(built, split)[0].values():   # both: test_2's own labels
            np.testing.assert_array_equal(
                ex["prior"], np.float32(_hand_labels(2, int(ex["video"]), int(ex["second"]))))
    warnings = [r.getMessage() for r in caplog.records if "one training subject" in r.getMessage()]
    assert warnings == [
        "MER-PS: one training subject (test_2): the leave-one-subject-out prior is undefined, so "
        "its training examples get the prior of all training subjects, which is their own label "
        "(no residual left to learn). Use two or more training subjects"]
    assert built.info.metadata["prior_rule"].startswith(
        "train examples: the one training subject's own labels")


def test_validation_labels_do_not_reach_the_prior(demo_250, records_250, tmp_path):
    root = pathlib.Path(shutil.copytree(demo_250, tmp_path / "release"))
    label_file = root / "annotations" / "test_3_label.mat"
    _resave(label_file, {f"video_{v}": np.full((2, 2), 255.0) for v in VIDEOS})
    changed = {split: _records(_build(root, tmp_path / "tfds"), split)[0] for split in SPLITS}
    for split in SPLITS:
        for sid, ex in changed[split].items():
            np.testing.assert_array_equal(ex["prior"], records_250[split][sid]["prior"])
    assert all((ex["label"] == 255).all() for ex in changed["validation"].values())


def test_build_is_deterministic(demo_250, built_250, tmp_path):
    again = _build(demo_250, tmp_path)
    for split in SPLITS:
        (first, order1), (second, order2) = _records(built_250, split), _records(again, split)
        assert order1 == order2                       # same keys -> same shuffled order
        for sid, ex in first.items():
            for name, value in ex.items():
                np.testing.assert_array_equal(value, second[sid][name], err_msg=f"{sid}/{name}")


def test_metadata_records_the_release(demo_250, built_250):
    meta = built_250.info.metadata
    assert meta["release"] == "demo" and meta["manual_dir"] == str(demo_250)
    assert set(meta["bad_fnirs_channels"]) == set(TRAIN + VALIDATION)
    for subject, bad in meta["bad_fnirs_channels"].items():
        assert bad == np.flatnonzero(~_kept_channels(demo_250, subject)).tolist()
    assert meta["fnirs_types"] == ["HbO", "HbR", "HbT"] and len(meta["targeted_emotions"]) == 15


def test_prepare_reuses_a_prepared_dataset(demo_250, built_250):
    folder = pathlib.Path(str(built_250.data_path))
    stamps = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    again = _build(demo_250, folder.parents[2])
    assert pathlib.Path(str(again.data_path)) == folder
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == stamps
    assert again.info.splits["train"].num_examples == 60


def test_config_names_and_custom_instances(tmp_path):
    assert mps.make_config().name == "real_eeg128_ctx2_bins4_hbo-hbr-hbt_kit"
    assert mps.make_config(release="demo") is mps.Builder.BUILDER_CONFIGS[1]
    custom = _config(fnirs_types=(0, 3), context_s=3)
    assert custom.name.startswith("demo_eeg128_ctx3_bins4_hbo-abs780_split")
    assert len(custom.name.rsplit("split", 1)[1]) == 8
    swapped = mps.make_config(release="demo", train_subjects=VALIDATION, validation_subjects=TRAIN)
    assert swapped.name != _config().name
    builder = mps.Builder(config=custom, data_dir=tmp_path)   # an unregistered instance works
    assert builder.builder_config is custom
    assert builder.info.features["eeg"].shape == (64, 384)
    assert builder.info.features["fnirs"].shape == (12, 2, 51)
    with pytest.raises(ValueError, match=r"both train and validation.*'test_2'"):
        mps.make_config(train_subjects=TRAIN, validation_subjects=("test_2",))
    with pytest.raises(ValueError, match="does not match its fields"):
        mps.MerPsConfig(name="my_config")
    with pytest.raises(ValueError, match="fNIRS type index"):
        mps.make_config(fnirs_types=(6,))


# ------------------------------------------------------------------------------------------------
# Demo release

def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_bytes_depend_only_on_the_seed(tmp_path):
    kwargs = dict(num_subjects=1, seconds=(2, 2), eeg_rate_hz=100)
    a = _digests(demo.write_demo_release(tmp_path / "a", seed=5, **kwargs))
    b = _digests(demo.write_demo_release(tmp_path / "b", seed=5, **kwargs))
    c = _digests(demo.write_demo_release(tmp_path / "c", seed=6, **kwargs))
    assert a == b and len(a) == 13
    assert all(a[k] != c[k] for k in a if k.endswith(".mat"))
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "data").mkdir()
    with pytest.raises(ValueError, match="not a demo release"):
        demo.write_demo_release(tmp_path / "real")


def test_demo_labels_are_carried_by_the_signals(demo_250):
    folder = demo_250 / "data" / "test_1"
    eeg = scipy.io.loadmat(str(folder / "EEG_videos.mat"))
    fv, fb = (scipy.io.loadmat(str(folder / f))
              for f in ("fNIRS_videos.mat", "fNIRS_baselines.mat"))
    freqs = np.fft.rfftfreq(250, 1 / 250)
    rows = []
    for v in VIDEOS:
        name, labels = f"video_{v}", _labels(demo_250, "test_1", v)
        hb = fv[name] - fb[name].mean(axis=2, keepdims=True)
        bounds = np.round(np.arange(3) * hb.shape[2] / 2).astype(int)
        for i in range(labels.shape[1]):
            power = np.abs(np.fft.rfft(eeg[name][:, i * 250:(i + 1) * 250], axis=1)) ** 2
            alpha = np.log(power[0:8, (freqs >= 8) & (freqs <= 13)].mean())
            beta = np.log(power[8:16, (freqs >= 13) & (freqs <= 30)].mean())
            window = hb[:, :, bounds[i]:bounds[i + 1]]
            rows.append((labels[0, i], labels[1, i], alpha, beta, window[0, :10].mean(),
                         window[1, 10:20].mean()))
    valence, arousal, alpha, beta, hbo, hbr = np.array(rows).T
    assert np.corrcoef(alpha, valence)[0, 1] > 0.7
    assert np.corrcoef(beta, arousal)[0, 1] > 0.7
    assert np.corrcoef(hbo, valence)[0, 1] > 0.7
    assert np.corrcoef(hbr, arousal)[0, 1] < -0.7
    # Subjects differ from the shared video trajectory, so the prior alone cannot be perfect.
    deviation = [_labels(demo_250, "test_1", v) - _labels(demo_250, "test_2", v) for v in VIDEOS]
    assert np.std(deviation) > 10


# ------------------------------------------------------------------------------------------------
# Side files, the fNIRS_reservations.csv check, the load log

# Written out rather than taken from release.py, so that the contract is pinned here.
OPTIONAL = ("README.md", "Metadata.csv", "SAM_score.csv", "PANAS_score.csv",
            "fNIRS_coordinates.csv")


@pytest.mark.parametrize("missing", OPTIONAL + ("all",))
def test_optional_side_files_may_be_missing(demo_250, missing, tmp_path, caplog):
    caplog.set_level("WARNING", logger="absl")
    root = pathlib.Path(shutil.copytree(demo_250, tmp_path / "release"))
    gone = OPTIONAL if missing == "all" else (missing,)
    for name in gone:
        (root / name).unlink()
    built = _build(root, tmp_path / "tfds")
    assert built.info.splits["train"].num_examples == 60
    assert built.info.splits["validation"].num_examples == 30
    assert built.info.metadata["missing_side_files"] == list(gone)
    lines = [r.getMessage() for r in caplog.records if "side files not present" in r.getMessage()]
    assert lines == [f"MER-PS release at {root}: side files not present: {', '.join(gone)} (the "
                     "builder does not read them; building without them)"]


def test_a_complete_release_logs_no_missing_side_file(built_250):
    assert built_250.info.metadata["missing_side_files"] == []


@pytest.mark.parametrize("name,purpose", [
    ("fNIRS_reservations.csv", "the per-subject fNIRS channel marks, checked against the signals"),
    ("Targeted_emotions.txt", "the videos' emotion codes, recorded in the dataset metadata"),
])
def test_required_side_files(demo_250, name, purpose, tmp_path):
    root = pathlib.Path(shutil.copytree(demo_250, tmp_path / "release"))
    (root / name).unlink()
    with pytest.raises(ReleaseError) as err:
        _build(root, tmp_path / "tfds")
    assert str(err.value) == (f"{root / name}: required side file missing (the builder reads it "
                              f"for {purpose})")
    assert not (tmp_path / "tfds" / "mer_ps").exists()   # a failed build leaves nothing behind


@pytest.mark.parametrize("path", ["data/test_2/fNIRS_videos.mat", "annotations/test_3_label.mat"])
def test_required_signal_and_label_files(demo_250, path, tmp_path):
    root = pathlib.Path(shutil.copytree(demo_250, tmp_path / "release"))
    (root / path).unlink()
    subject = path.split("/")[1].removesuffix("_label.mat")
    with pytest.raises(ReleaseError) as err:
        _build(root, tmp_path / "tfds")
    assert str(err.value) == f"{root / path}: file missing for requested subject '{subject}'"


def _hbo_variance(root, subject):
    """[51] per channel: HbO variance within each trial's video segment, mean over trials."""
    videos = scipy.io.loadmat(str(root / "data" / subject / "fNIRS_videos.mat"))
    return np.mean([videos[f"video_{v}"][0].astype(np.float64).var(axis=1) for v in VIDEOS],
                   axis=0)


def test_reservation_check_of_a_sound_release(demo_250, built_250):
    checks = built_250.info.metadata["reservation_check"]
    assert set(checks) == set(TRAIN + VALIDATION)
    for subject, check in checks.items():
        kept, var = _kept_channels(demo_250, subject), _hbo_variance(demo_250, subject)
        assert (check["kept"]["channels"], check["marked"]["channels"]) == (
            kept.sum(), 51 - kept.sum())
        np.testing.assert_allclose(check["kept"]["median_hbo_variance"], np.median(var[kept]),
                                   rtol=1e-9)
        np.testing.assert_allclose(check["marked"]["median_hbo_variance"], np.median(var[~kept]),
                                   rtol=1e-9)
        assert check["marked"]["median_hbo_variance"] > 1e5 * check["kept"]["median_hbo_variance"]
        assert not check["suspect"]


def test_inverted_reservations_are_warned(demo_250, tmp_path, caplog):
    """0s on the clean channels and 1s on the demo's junk ones: the marked ones look cleaner."""
    caplog.set_level("WARNING", logger="absl")
    root = pathlib.Path(shutil.copytree(demo_250, tmp_path / "release"))
    path = root / "fNIRS_reservations.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:1] + [",".join([row.split(",")[0]] + [
        str(1 - int(c)) for c in row.split(",")[1:]]) for row in lines[1:]]) + "\n")
    built = _build(root, tmp_path / "tfds")       # the junk is finite: the build goes through
    for subject in TRAIN + VALIDATION:
        kept, var = _kept_channels(root, subject), _hbo_variance(root, subject)
        check = built.info.metadata["reservation_check"][subject]
        assert check["suspect"] and check["kept"]["channels"] == kept.sum() <= 4
        np.testing.assert_allclose(check["marked"]["median_hbo_variance"], np.median(var[~kept]),
                                   rtol=1e-9)
        assert check["marked"]["median_hbo_variance"] < check["kept"]["median_hbo_variance"] / 3
        warned = [r.getMessage() for r in caplog.records
                  if r.levelname == "WARNING" and r.getMessage().startswith(f"MER-PS: {subject}:")]
        assert len(warned) == 1
        assert warned[0].startswith(
            f"MER-PS: {subject}: the fNIRS channels that {path} marks 0 (bad) look cleaner than "
            f"the ones marked 1 (kept): {51 - kept.sum()} marked 0 vs {kept.sum()} kept: median "
            f"HbO variance {np.median(var[~kept]):.3g} vs {np.median(var[kept]):.3g}")
        assert "the 0/1 meaning is inverted" in warned[0]


def _fnirs_trials(rng, junk):
    """One subject's fNIRS files as `reservation_check` takes them: clean channels 0-45, the
    channels 46-50 filled by `junk(trial)` ([6, 5, T])."""
    videos, baselines = {}, {}
    for v in (1, 2):
        x = rng.normal(0.0, 1.0, (6, 51, 200))
        x[:, 46:] = junk(v)
        videos[f"video_{v}"], baselines[f"video_{v}"] = x, rng.normal(0.0, 1.0, (6, 51, 50))
    return videos, baselines


@pytest.mark.parametrize("junk,mark_junk,suspect", [
    ("noisy", True, False), ("noisy", False, True),
    ("flat", True, False), ("flat", False, True),      # flat is bad, never "clean"
    ("nan", True, False), ("nan", False, True),
    ("noisy_and_a_stray_nan", True, False),     # one NaN in a good channel is no alarm
])
def test_reservation_check_rules(junk, mark_junk, suspect):
    rng = np.random.default_rng(0)
    odd = np.arange(200) % 2 == 1
    fill = {"noisy": lambda v: rng.normal(0.0, 100.0, (6, 5, 200)),
            "flat": lambda v: np.full((6, 5, 200), 7.0 * v),
            "nan": lambda v: np.where(odd, np.nan, rng.normal(0.0, 1.0, (6, 5, 200)))}
    fill["noisy_and_a_stray_nan"] = fill["noisy"]
    videos, baselines = _fnirs_trials(rng, fill[junk])
    if junk == "noisy_and_a_stray_nan":
        videos["video_1"][3, 0, 17] = np.nan          # an absorbance sample of clean channel 0
    junk_channels = np.arange(51) >= 46
    kept = ~junk_channels if mark_junk else junk_channels   # mark_junk False: the inverted file
    check = release.reservation_check(videos, baselines, kept)
    assert check["suspect"] is suspect
    bad, clean = ((check["marked"], check["kept"]) if mark_junk
                  else (check["kept"], check["marked"]))
    assert (bad["channels"], clean["channels"]) == (5, 46)
    assert bad["nonfinite_values"] == (6 * 5 * 100 * 2 if junk == "nan" else 0)  # 2 trials
    assert bad["nonfinite_channels"] == (5 if junk == "nan" else 0)
    assert bad["flat_channels"] == (5 if junk == "flat" else 0)
    stray = int(junk == "noisy_and_a_stray_nan")
    assert (clean["nonfinite_values"], clean["nonfinite_channels"]) == (stray, stray)
    assert clean["flat_channels"] == 0
    assert 0.8 < clean["median_hbo_variance"] < 1.2
    if junk.startswith("noisy"):
        assert bad["median_hbo_variance"] > 5000
    elif junk == "flat":
        assert bad["median_hbo_variance"] is None     # no channel left that is not flat
    else:
        assert 0.7 < bad["median_hbo_variance"] < 1.3  # NaNs skipped, not propagated


@pytest.mark.parametrize("junk,reason", [("noisy", "outlier"), ("overflowing", "outlier"),
                                         ("flat", "flat"), ("nan", "nonfinite"),
                                         ("unused_type_nan", None)])
def test_channel_rule(junk, reason):
    """The fNIRS channels the model reads come from the signals alone (hidden subjects have no
    fNIRS_reservations.csv): junk of each kind in channels 46-50 drops exactly them; junk in a
    type the model does not read (Abs830) drops nothing."""
    rng = np.random.default_rng(1)
    odd = np.arange(200) % 2 == 1
    fill = {"noisy": lambda v: rng.normal(0.0, 30.0, (6, 5, 200)),   # 900x the variance
            "flat": lambda v: np.full((6, 5, 200), 7.0 * v),
            "nan": lambda v: np.where(odd, np.nan, rng.normal(0.0, 1.0, (6, 5, 200))),
            "overflowing": lambda v: np.where(odd, 1e200, -1e200)}  # its variance is inf
    fill["unused_type_nan"] = lambda v: np.concatenate(
        [rng.normal(0.0, 1.0, (5, 5, 200)), np.full((1, 5, 200), np.nan)])
    videos, baselines = _fnirs_trials(rng, fill[junk])
    kept, dropped = signals.channel_rule(videos, baselines, (0, 1, 2))
    junk_channels = [46, 47, 48, 49, 50]
    if reason is None:
        assert kept.all() and not any(dropped.values())
        return
    np.testing.assert_array_equal(np.flatnonzero(~kept), junk_channels)
    assert dropped == {k: (junk_channels if k == reason else []) for k in dropped}


def test_channel_rule_is_the_mask_and_reservations_add_to_it(broken):
    """A NaN in a channel the reservations keep: the rule drops it (counted), where the build
    used to stop; `use_reservations` also drops the channels marked 0."""
    path = broken / "data" / "test_1" / "fNIRS_videos.mat"
    marks = _kept_channels(broken, "test_1")
    good = int(np.flatnonzero(marks)[3])
    x = _var(path, "video_9")
    x[0, good, 40] = -np.inf
    _resave(path, {"video_9": x})
    inventory = _check(broken)
    rule = release.load_subject(inventory, "test_1", eeg_rate_hz=50, fnirs_bins=4,
                                fnirs_types=(0, 1, 2))
    assert rule.channel_rule["nonfinite"] == [good]
    assert not rule.fnirs_mask[good] and np.isfinite(rule.trials[9].fnirs).all()
    np.testing.assert_array_equal(rule.trials[9].fnirs[..., good], 0)
    both = release.load_subject(inventory, "test_1", eeg_rate_hz=50, fnirs_bins=4,
                                fnirs_types=(0, 1, 2), use_reservations=True)
    np.testing.assert_array_equal(both.fnirs_mask, rule.fnirs_mask & marks)
    assert both.zeroed_nonfinite == 1


def test_load_log_is_one_info_summary(demo_250, caplog):
    caplog.set_level("DEBUG", logger="absl")
    inventory = _check(demo_250, TRAIN + VALIDATION)
    caplog.clear()
    release.load_subjects(inventory, eeg_rate_hz=64, fnirs_bins=2, fnirs_types=(0,))
    per_subject = [r for r in caplog.records if " loaded in " in r.getMessage()]
    assert sorted(r.getMessage().split()[1] for r in per_subject) == sorted(TRAIN + VALIDATION)
    assert {r.levelname for r in per_subject} == {"DEBUG"}
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert len(info) == 2
    bad = sum(int((~_kept_channels(demo_250, s)).sum()) for s in TRAIN + VALIDATION)
    load, check = info
    assert load.startswith("MER-PS: loaded 3 subjects in ")
    assert load.endswith(f" s: 45 trials, 90 label seconds, {bad} bad fNIRS channels zeroed "
                         "(0 non-finite values in them)")
    assert check.startswith("MER-PS: fNIRS_reservations.csv check (0 = marked bad, 1 = kept): "
                            "3 of 3 subjects have both kinds of channel, 0 look inverted []")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# ------------------------------------------------------------------------------------------------
# Bad input: each error names the file (and variable/row/column), what was expected and found

def test_missing_manual_dir(tmp_path, demo_250):
    with pytest.raises(ReleaseError, match="--config.data.manual_dir=.*demo release"):
        _check(None)
    missing = tmp_path / "nowhere"
    with pytest.raises(ReleaseError) as err:
        _build(missing, tmp_path / "tfds")
    assert str(missing) in str(err.value) and "--config.data.manual_dir=" in str(err.value)
    assert not (tmp_path / "tfds" / "mer_ps").exists() or not any(
        (tmp_path / "tfds" / "mer_ps").rglob("*.array_record*"))


def test_release_kind_mismatch(demo_250, broken, tmp_path):
    with pytest.raises(ReleaseError, match="demo release .*expects release='real'"):
        _build(demo_250, tmp_path, mps.make_config(train_subjects=TRAIN,
                                                   validation_subjects=VALIDATION))
    (broken / release.DEMO_MARKER).unlink()
    with pytest.raises(ReleaseError, match="found none.*release='demo'"):
        _check(broken)


def test_missing_subject_folder_and_reservation_row(broken):
    with pytest.raises(ReleaseError, match=f"{broken / 'data' / 'test_2'}: subject folder missing"):
        _check(broken, ("test_1", "test_2"))
    reservations = broken / "fNIRS_reservations.csv"
    reservations.write_text(reservations.read_text().splitlines()[0] + "\n")
    with pytest.raises(ReleaseError, match=f"{reservations}: no row for requested subject"):
        _check(broken)


def test_truncated_mat(broken):
    path = broken / "data" / "test_1" / "EEG_videos.mat"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    # scipy's header scan still lists all 15 variables: only the tag walk notices.
    assert len(scipy.io.whosmat(str(path))) == 15
    with pytest.raises(ReleaseError) as err:
        _check(broken)
    assert str(err.value) == (f"{path}: truncated MATLAB v5 file: its variables need {len(data)} "
                              f"bytes, found {len(data) - 100}")
    path.write_bytes(data[:60])
    with pytest.raises(ReleaseError, match=f"{path}: not a readable MATLAB file"):
        _check(broken)


def test_missing_video_variable(broken):
    path = broken / "data" / "test_1" / "fNIRS_baselines.mat"
    _resave(path, drop=["video_7"])
    with pytest.raises(ReleaseError) as err:
        _check(broken)
    assert str(err.value) == (f"{path}: expected variables video_1..video_15, "
                              "missing ['video_7']")


def test_wrong_array_shape(broken):
    path = broken / "data" / "test_1" / "EEG_videos.mat"
    _resave(path, {"video_3": np.zeros((63, 200), np.float32)})
    with pytest.raises(ReleaseError) as err:
        _check(broken)
    assert str(err.value) == f"{path}: variable 'video_3': expected shape [64, T], found [63, 200]"


def test_inconsistent_eeg_rate(broken):
    path = broken / "data" / "test_1" / "EEG_videos.mat"
    _resave(path, {"video_2": np.zeros((64, 300), np.float32)})     # 150 instead of 100 per s
    with pytest.raises(ReleaseError, match=f"{path}: variable 'video_2': 300 EEG samples for 2 "
                                           r"label seconds .* expected the release's 100.000"):
        _check(broken)


@pytest.mark.parametrize("file,name,index,value,found", [
    ("EEG_videos.mat", "video_4", (5, 17), np.nan, "nan at index [5, 17]"),
    ("EEG_baselines.mat", "video_1", (0, 3), np.inf, "inf at index [0, 3]"),
])
def test_nan_and_inf_in_signals(broken, file, name, index, value, found):
    path = broken / "data" / "test_1" / file
    x = _var(path, name).astype(np.float32)
    x[index] = value
    _resave(path, {name: x})
    inventory = _check(broken)    # shapes are fine; the loading pass reads the values
    with pytest.raises(ReleaseError) as err:
        release.load_subject(inventory, "test_1", eeg_rate_hz=50, fnirs_bins=4,
                             fnirs_types=(0, 1, 2))
    assert str(err.value).startswith(f"{path}: variable '{name}'")
    assert f"expected finite values, found {found}" in str(err.value)


def test_nonfinite_junk_in_a_bad_channel_is_zeroed(broken):
    path = broken / "data" / "test_1" / "fNIRS_videos.mat"
    bad = int(np.flatnonzero(~_kept_channels(broken, "test_1"))[0])
    x = _var(path, "video_1")
    x[:, bad] = np.nan
    _resave(path, {"video_1": x})
    loaded = release.load_subject(_check(broken), "test_1", eeg_rate_hz=50, fnirs_bins=4,
                                  fnirs_types=(0, 1, 2))
    assert np.isfinite(loaded.trials[1].fnirs).all()
    np.testing.assert_array_equal(loaded.trials[1].fnirs[..., bad], 0)
    check = loaded.reservation_check     # 6 types x the trial's samples, all in a marked channel
    assert (check["marked"]["nonfinite_values"], check["kept"]["nonfinite_values"]) == (
        6 * x.shape[2], 0)
    assert not check["suspect"]


@pytest.mark.parametrize("value,row,found", [(256.0, 1, "256.0"), (0.0, 0, "0.0"),
                                             (3.5, 1, "3.5")])
def test_label_outside_range_or_not_integer(broken, value, row, found):
    path = broken / "annotations" / "test_1_label.mat"
    labels = _var(path, "video_5")
    labels[row, 1] = value
    _resave(path, {"video_5": labels})
    with pytest.raises(ReleaseError) as err:
        _check(broken)
    assert str(err.value) == (
        f"{path}: variable 'video_5' row {row} ({('valence', 'arousal')[row]}) column 1: "
        f"expected a finite integer in [1, 255], found {found}")


def test_errors_stop_the_build_before_anything_is_written(demo_250, tmp_path):
    root = pathlib.Path(shutil.copytree(demo_250, tmp_path / "release"))
    path = root / "data" / "test_3" / "EEG_videos.mat"       # a validation subject, loaded last
    x = _var(path, "video_15")
    x[0, 0] = np.nan
    _resave(path, {"video_15": x})
    with pytest.raises(ReleaseError, match="video_15"):
        _build(root, tmp_path / "tfds")
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_matlab_v73_files_are_read_transposed(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "v73.mat"
    data = np.arange(64 * 10, dtype=np.float64).reshape(64, 10)
    with h5py.File(path, "w", userblock_size=512) as f:
        f["video_1"] = data.T                    # MATLAB writes column-major
    with open(path, "r+b") as f:                 # the header MATLAB puts in the user block
        f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")
    assert signals.mat_version(path) == 73
    assert signals.mat_shapes(path) == {"video_1": (64, 10)}
    np.testing.assert_array_equal(signals.read_mat(path, ("video_1",))["video_1"], data)
