"""The independent release generators (tests/independent) write what the project's readers
accept, and their labels are really carried by the signals / features.

The carried-label checks recompute each documented statistic straight from the files with
scipy/numpy (not through the generators or tfds_builders), so a generator whose signals did not
follow its documented mechanism would fail here, not in a model run.
"""
import csv

import numpy as np
import pytest
import scipy.io

from tests.independent import cross_release, ps_release
from tfds_builders.mer2026 import Mer2026Release
from tfds_builders.mer_ps import release as ps_reader

PS_TRAIN = tuple(f"test_{i}" for i in range(1, 5))
PS_VALIDATION = ("test_5", "test_6")
EEG_RATE = 128  # small files; still above twice the gamma band's top


def _mat(root, subject, name):
    return scipy.io.loadmat(str(root / "data" / subject / f"{name}.mat"))


def _kept(root, subject):
    with open(root / "fNIRS_reservations.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["sub_id"] == subject)
    return np.array([row[f"ch-{c}"] == "1" for c in range(1, 52)])


def _fnirs_statistic(root, subject, video, carrier, seconds):
    """Mean level of the kept group channels per label second, minus the baseline mean."""
    kind = ("HbO", "HbR").index(carrier.kind)
    var = f"video_{video}"
    x = _mat(root, subject, "fNIRS_videos")[var][kind]
    base = _mat(root, subject, "fNIRS_baselines")[var][kind].mean(axis=-1)
    group = [c for c in carrier.channels if _kept(root, subject)[c]]
    x = x[group] - base[group, None]
    b = np.round(np.arange(seconds + 1) * x.shape[-1] / seconds).astype(int)
    return carrier.sign * np.array([x[:, b[i]:b[i + 1]].mean() for i in range(seconds)])


def _band_power(x, rate, band):
    """Mean over rows of the power in [lo, hi) Hz of each whole-second window, [..., seconds]."""
    windows = x.reshape(x.shape[0], -1, rate)
    power = np.abs(np.fft.rfft(windows - windows.mean(-1, keepdims=True), axis=-1)) ** 2
    f = np.fft.rfftfreq(rate, 1.0 / rate)
    return power[..., (f >= band[0]) & (f < band[1])].sum(-1).mean(0)


def _eeg_statistic(root, subject, video, carrier, rate):
    """Log band power of the group per label second relative to its baseline seconds."""
    var = f"video_{video}"
    group = list(carrier.channels)
    video_power = _band_power(_mat(root, subject, "EEG_videos")[var][group], rate, carrier.band)
    base_power = _band_power(_mat(root, subject, "EEG_baselines")[var][group], rate,
                             carrier.band)
    return carrier.sign * np.log(video_power / base_power.mean())


def _statistic(root, subject, video, carrier, seconds):
    if carrier.modality == "fnirs":
        return _fnirs_statistic(root, subject, video, carrier, seconds)
    return _eeg_statistic(root, subject, video, carrier, EEG_RATE)


@pytest.fixture(scope="module", params=["hbo_theta", "gamma_hbr"])
def ps(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"ps_{request.param}")
    return ps_release.write_ps_release(
        root, seed=3, subjects=PS_TRAIN + PS_VALIDATION, seconds=(4, 6),
        eeg_samples_per_s=EEG_RATE, eeg_dtype=np.float32, mechanism=request.param, shared=0.4,
        eeg_unit=1e-6)


def test_ps_release_passes_as_real(ps):
    assert not (ps.root / ps_reader.DEMO_MARKER).exists()
    inv = ps_reader.check_release(ps.root, ps.subjects, expected_kind="real")
    assert inv.kind == "real" and inv.eeg_rate_hz == EEG_RATE
    assert abs(inv.fnirs_rate_hz - 47.62) < 0.2
    for s in ps.subjects:
        assert set(np.flatnonzero(~inv.fnirs_masks[s])) == set(ps.bad_channels[s])
        for v in range(1, 16):
            np.testing.assert_array_equal(inv.labels[s, v], ps.labels[s, v])
    # The second pass (finiteness of kept channels, baselines, binning) accepts it too.
    subject = ps_reader.load_subject(inv, PS_VALIDATION[0], eeg_rate_hz=64, fnirs_bins=4,
                                     fnirs_types=(0, 1, 2))
    assert subject.trials[1].fnirs.shape[1:] == (4, 3, 51)


def test_ps_labels_are_carried_by_the_documented_statistics(ps):
    """A 2-parameter fit on train subjects beats the (video, second) prior on held-out ones."""
    seconds = {v: len(ps.labels[PS_TRAIN[0], v]) for v in range(1, 16)}
    for t, target in enumerate(ps_release.TARGETS):
        carrier = ps.mechanism[target]

        def rows(subjects):
            stat = np.concatenate([_statistic(ps.root, s, v, carrier, seconds[v])
                                   for s in subjects for v in range(1, 16)])
            label = np.concatenate([ps.labels[s, v][:, t] for s in subjects
                                    for v in range(1, 16)])
            return stat, label

        x, y = rows(PS_TRAIN)
        slope, intercept = np.polyfit(x, y, 1)
        xv, yv = rows(PS_VALIDATION)
        fit_mae = np.abs(np.clip(np.rint(slope * xv + intercept), 1, 255) - yv).mean()
        prior = {v: np.mean([ps.labels[s, v][:, t] for s in PS_TRAIN], axis=0)
                 for v in range(1, 16)}
        prior_mae = np.mean(np.concatenate([np.abs(np.rint(prior[v]) - ps.labels[s, v][:, t])
                                            for s in PS_VALIDATION for v in range(1, 16)]))
        assert prior_mae > 15, (target, prior_mae)
        assert fit_mae < 0.4 * prior_mae, (target, fit_mae, prior_mae)


def test_ps_shared_one_makes_the_prior_exact(tmp_path):
    out = ps_release.write_ps_release(tmp_path, seed=1, subjects=("test_1", "test_2"),
                                      seconds=(2, 3), eeg_samples_per_s=100, shared=1.0)
    for v in range(1, 16):
        np.testing.assert_array_equal(out.labels["test_1", v], out.labels["test_2", v])


# ---------------------------------------------------------------------------------------------
# MER-Cross

CROSS_DIMS = (24, 40, 32)


def _waf(y, p, classes=6):
    """Weighted F1 over the classes present in y or p, supports from y (sklearn's average='weighted', as the track-1 scorer)."""
    score = 0.0
    for c in set(y) | set(p):
        tp = np.sum((y == c) & (p == c))
        support = np.sum(y == c)
        denom = support + np.sum(p == c)
        score += support / len(y) * (2 * tp / denom if denom else 0.0)
    return score


def _read(rel, names, folders):
    return np.stack([np.concatenate([rel.read_feature(f, n, level="utt") for f in folders])
                     for n in names])


@pytest.mark.parametrize("layout,level", [("flat", "utt"), ("nested", "frame"),
                                          ("flat", "frame_files")])
def test_cross_release_is_read_by_the_release_reader(tmp_path, layout, level):
    out = cross_release.write_cross_release(
        tmp_path / "release", seed=1, n_train=30, n_candidates=20, dims=CROSS_DIMS, offset=3.0,
        feature_level=level, layout=layout, truth_path=tmp_path / "truth.csv")
    rel = Mer2026Release(tmp_path / "release")
    assert rel.root == out.root.resolve() and not rel.is_demo
    assert {r.name: r.label for r in rel.track1_train()} == out.train
    assert rel.track1_track2_candidates() == tuple(out.candidates)
    assert set(rel.subtitles()) == set(out.train) | set(out.candidates)
    rel.features_root = out.features_root
    rel.check_available(list(out.train) + list(out.candidates), features=out.folders)
    assert [rel.check_feature_dims(f) for f in out.folders] == list(CROSS_DIMS)
    frames = rel.read_feature(out.folders[0], next(iter(out.train)), level="frame")
    assert (frames.shape[0] > 1) == (level != "utt")
    # The hidden truth sits outside the release and is not a release CSV.
    with open(tmp_path / "truth.csv", newline="") as f:
        assert {r["name"]: r["discrete"] for r in csv.DictReader(f)} == out.candidates


def test_cross_candidates_are_linearly_predictable(tmp_path):
    """Nearest class mean on standardised, concatenated features: well above chance."""
    out = cross_release.write_cross_release(
        tmp_path, seed=2, n_train=400, n_candidates=300, dims=CROSS_DIMS, separation=0.25,
        noise=1.0, offset=5.0, scale=(30.0, 0.1, 1.0), dim_scale_sd=0.5)
    rel = Mer2026Release(tmp_path)
    labels = list(cross_release.LABELS)
    x = _read(rel, list(out.train), out.folders)
    y = np.array([labels.index(v) for v in out.train.values()])
    xc = _read(rel, list(out.candidates), out.folders)
    yc = np.array([labels.index(v) for v in out.candidates.values()])
    mean, std = x.mean(0), x.std(0)
    x, xc = (x - mean) / std, (xc - mean) / std
    centres = np.stack([x[y == c].mean(0) for c in range(6)])
    pred = np.argmin(((xc[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    majority = _waf(yc, np.full_like(yc, np.bincount(y).argmax()))
    waf = _waf(yc, pred)
    print(f"nearest-class-mean candidate WAF {waf:.3f}, majority {majority:.3f}")
    assert majority < 0.2 and waf > 0.6, (waf, majority)
    assert waf < 0.95  # noisy enough that it is not trivially perfect
