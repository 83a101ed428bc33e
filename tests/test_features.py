"""tfds_builders/features.py: the signal helpers shared by builders, pipeline and export."""
import numpy as np
import pytest
import scipy.signal

from tfds_builders import features


def test_derive_rate_is_samples_per_label_second():
    assert features.derive_rate(2000, 2) == 1000.0
    assert features.derive_rate(238, 5) == pytest.approx(47.6)
    with pytest.raises(ValueError, match="num_seconds"):
        features.derive_rate(10, 0)


def test_baseline_correct_subtracts_per_channel_and_per_type_channel_means():
    eeg = np.array([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0]])
    base = np.array([[0.0, 2.0], [4.0, 6.0]])                # means 1 and 5
    np.testing.assert_allclose(features.baseline_correct(eeg, base),
                               [[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    rng = np.random.default_rng(0)
    fnirs, fbase = rng.normal(size=(6, 51, 20)), rng.normal(3.0, 1.0, size=(6, 51, 8))
    out = features.baseline_correct(fnirs, fbase)
    np.testing.assert_allclose(out[4, 17], fnirs[4, 17] - fbase[4, 17].mean())
    assert out.dtype == np.float64
    with pytest.raises(ValueError, match="differ before the time axis"):
        features.baseline_correct(eeg, fbase)


def test_rational_ratio_covers_the_release_rates():
    assert features.rational_ratio(1000, 128) == (16, 125)
    assert features.rational_ratio(250, 128) == (64, 125)
    assert features.rational_ratio(200, 128) == (16, 25)
    assert features.rational_ratio(128, 128) == (1, 1)
    up, down = features.rational_ratio(47.62, 10)
    assert abs(up / down - 10 / 47.62) < 1e-4


def test_resample_keeps_a_sine_and_fixes_the_length():
    t = np.arange(2000) / 1000.0
    x = np.stack([np.sin(2 * np.pi * 10 * t), np.cos(2 * np.pi * 5 * t)])
    y = features.resample(x, 1000.0, 128, num_out=256)
    assert y.shape == (2, 256)
    t2 = np.arange(256) / 128.0
    inner = slice(20, 236)   # the polyphase filter rings at the edges
    np.testing.assert_allclose(y[0, inner], np.sin(2 * np.pi * 10 * t2)[inner], atol=0.02)
    np.testing.assert_allclose(y[:, :255], scipy.signal.resample_poly(x, 16, 125, axis=-1)[:, :255])
    assert features.resample(x, 1000.0, 128, num_out=300)[:, 256:].sum() == 0  # zero-padded tail
    np.testing.assert_array_equal(features.resample(x, 128, 128), x)


def test_second_bounds_round_half_to_even():
    # 190 fNIRS samples over 4 s: 47.5 per second; 47.5 -> 48 and 142.5 -> 142 (half to even).
    np.testing.assert_array_equal(features.second_bounds(190, 4), [0, 48, 95, 142, 190])
    b = features.second_bounds(286, 6)
    np.testing.assert_array_equal(b, [round(i * 286 / 6) for i in range(7)])


def test_bin_seconds_averages_array_split_parts():
    x = np.arange(2 * 10, dtype=np.float64).reshape(2, 10)  # 2 channels, 10 samples, 2 seconds
    out = features.bin_seconds(x, num_seconds=2, bins=2)
    assert out.shape == (2, 2, 2)                           # [second, bin, channel]
    # Second 0 = samples 0..4, split 3 + 2.
    np.testing.assert_allclose(out[0, :, 0], [1.0, 3.5])
    np.testing.assert_allclose(out[1, :, 1], [16.0, 18.5])
    with pytest.raises(ValueError, match="fewer than the 6 bins"):
        features.bin_seconds(x, num_seconds=2, bins=6)


def test_context_mask_marks_seconds_before_the_trial():
    np.testing.assert_array_equal(features.context_mask(0, 2), [False, True])
    np.testing.assert_array_equal(features.context_mask(1, 2), [True, True])
    np.testing.assert_array_equal(features.context_mask(1, 3), [False, True, True])


def test_eeg_context_zero_pads_the_front():
    x = np.arange(3 * 4, dtype=np.float32).reshape(1, 12) + 1   # 3 seconds at 4 samples/s
    np.testing.assert_array_equal(features.eeg_context(x, 0, 2, 4), [[0, 0, 0, 0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(features.eeg_context(x, 2, 2, 4), [[5, 6, 7, 8, 9, 10, 11, 12]])
    assert features.eeg_context(x, 1, 3, 4).dtype == np.float32
    with pytest.raises(ValueError, match="past the signal"):
        features.eeg_context(x, 3, 2, 4)


def test_fnirs_context_stacks_bins_time_major():
    binned = np.arange(3 * 2 * 1, dtype=np.float32).reshape(3, 2, 1) + 1   # [T=3, bins=2, 1]
    np.testing.assert_array_equal(features.fnirs_context(binned, 0, 2)[:, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(features.fnirs_context(binned, 2, 2)[:, 0], [3, 4, 5, 6])


def test_first_nonfinite_finds_the_first_in_c_order():
    x = np.zeros((2, 3))
    assert features.first_nonfinite(x) is None
    x[1, 0], x[1, 2] = np.inf, np.nan
    assert features.first_nonfinite(x) == (1, 0)


def test_label_prior_means_and_fallbacks():
    a = np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    b = np.array([[20.0, 30.0], [40.0, 50.0]])
    prior = features.label_prior({1: [a, b], 2: [np.array([[100.0, 200.0]])]})
    np.testing.assert_allclose(features.prior_at(prior, 1, 0), [15, 25])
    np.testing.assert_allclose(features.prior_at(prior, 1, 2), [50, 60])    # only `a` has it
    # Past every training trial: the video mean, then (unknown video) the global mean.
    np.testing.assert_allclose(features.prior_at(prior, 1, 7), [30, 40])
    np.testing.assert_allclose(features.prior_at(prior, 3, 0), [250 / 6, 400 / 6], rtol=1e-6)
    assert features.prior_at(prior, 1, 0).dtype == np.float32
