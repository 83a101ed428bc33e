"""Signal helpers shared by the dataset builders, the input pipeline and export.

numpy/scipy only, so that the exported predictor can reuse exactly the code that prepared the
training data. Every function is pure: arrays in, new arrays out, time on the last axis unless
stated otherwise.
"""
from __future__ import annotations

import fractions

import numpy as np
import scipy.signal


def derive_rate(num_samples: int, num_seconds: int) -> float:
    """Samples per label second of one trial (`T_signal / T_label`).

    MER-PS ships EEG at 1000 samples per label second although its card says 200 Hz, so rates are
    always read off the arrays, never assumed.
    """
    if num_seconds <= 0:
        raise ValueError(f"num_seconds must be positive, got {num_seconds}")
    return float(num_samples) / float(num_seconds)


def baseline_correct(signal: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Subtracts the baseline's mean over time from the signal, separately per leading index.

    For EEG (`[channel, time]`) that is one mean per channel; for fNIRS (`[type, channel, time]`)
    one mean per type x channel. Computed in float64 so that large DC offsets do not eat the
    float32 mantissa of the small signal riding on them.
    """
    if signal.shape[:-1] != baseline.shape[:-1]:
        raise ValueError(
            f"signal {signal.shape} and baseline {baseline.shape} differ before the time axis")
    if baseline.shape[-1] == 0:
        raise ValueError("baseline has no samples")
    mean = np.asarray(baseline, np.float64).mean(axis=-1, keepdims=True)
    return np.asarray(signal, np.float64) - mean


def rational_ratio(src_hz: float, dst_hz: float, max_denominator: int = 1000) -> tuple[int, int]:
    """`(up, down)` with `up / down ~= dst_hz / src_hz`, small enough for a polyphase filter."""
    if src_hz <= 0 or dst_hz <= 0:
        raise ValueError(f"rates must be positive, got src={src_hz} dst={dst_hz}")
    ratio = (fractions.Fraction(dst_hz).limit_denominator(10**6)
             / fractions.Fraction(src_hz).limit_denominator(10**6))
    ratio = ratio.limit_denominator(max_denominator)
    return ratio.numerator, ratio.denominator


def resample(x: np.ndarray, src_hz: float, dst_hz: float,
             num_out: int | None = None) -> np.ndarray:
    """Resamples along the last axis with `scipy.signal.resample_poly` (float64 out).

    `num_out` fixes the output length (cropping the tail or zero-padding it), so that later
    fixed-size windows line up with label seconds even when the rate ratio is not exact.
    """
    up, down = rational_ratio(src_hz, dst_hz)
    x = np.asarray(x, np.float64)
    y = x.copy() if up == down else scipy.signal.resample_poly(x, up, down, axis=-1)
    if num_out is None or y.shape[-1] == num_out:
        return y
    if y.shape[-1] > num_out:
        return y[..., :num_out]
    pad = [(0, 0)] * (y.ndim - 1) + [(0, num_out - y.shape[-1])]
    return np.pad(y, pad)


def second_bounds(num_samples: int, num_seconds: int) -> np.ndarray:
    """Boundaries `b` (length T+1) so that second i is samples `[b[i], b[i+1])`.

    `b[i] = round(i * T_signal / T)`: fNIRS has ~47.62 samples per second, so windows alternate
    between 47 and 48 samples instead of drifting. numpy rounds halves to even, like Python.
    """
    if num_seconds <= 0:
        raise ValueError(f"num_seconds must be positive, got {num_seconds}")
    return np.round(np.arange(num_seconds + 1) * num_samples / num_seconds).astype(np.int64)


def bin_seconds(x: np.ndarray, num_seconds: int, bins: int) -> np.ndarray:
    """Averages each 1-s window of `x` (`[..., time]`) into `bins` equal parts.

    Returns `[num_seconds, bins, *x.shape[:-1]]`: time-major, the layout of the fNIRS feature.
    Parts follow `np.array_split`, so the first parts take the extra sample of an uneven window.
    """
    bounds = second_bounds(x.shape[-1], num_seconds)
    widths = np.diff(bounds)
    if widths.min() < bins:
        raise ValueError(
            f"a 1-s window has {widths.min()} samples, fewer than the {bins} bins asked for")
    out = np.empty((num_seconds, bins) + x.shape[:-1], np.float64)
    for i in range(num_seconds):
        window = x[..., bounds[i]:bounds[i + 1]]
        for j, part in enumerate(np.array_split(window, bins, axis=-1)):
            out[i, j] = part.mean(axis=-1)
    return out


def context_mask(second: int, context_s: int) -> np.ndarray:
    """`[context_s]` bool: which seconds of the context ending at `second` exist (index >= 0)."""
    first = second - context_s + 1
    return np.arange(first, second + 1) >= 0


def eeg_context(x: np.ndarray, second: int, context_s: int,
                samples_per_second: int) -> np.ndarray:
    """The `context_s` seconds of `x` (`[channel, time]`) that end at the end of `second`.

    Output `[channel, context_s * samples_per_second]`; seconds before the trial start are zeros
    at the front, so the current second always sits at the end of the window.
    """
    width = context_s * samples_per_second
    stop = (second + 1) * samples_per_second
    if stop > x.shape[-1]:
        raise ValueError(f"second {second} ends at sample {stop}, past the signal's {x.shape[-1]}")
    start = stop - width
    out = np.zeros(x.shape[:-1] + (width,), x.dtype)
    out[..., max(0, -start):] = x[..., max(0, start):stop]
    return out


def fnirs_context(binned: np.ndarray, second: int, context_s: int) -> np.ndarray:
    """Context window over per-second bins (`[T, bins, ...]` from `bin_seconds`).

    Output `[context_s * bins, ...]`, zero-padded at the front like `eeg_context`.
    """
    if second >= binned.shape[0]:
        raise ValueError(f"second {second} is past the trial's {binned.shape[0]} seconds")
    out = np.zeros((context_s,) + binned.shape[1:], binned.dtype)
    first = second - context_s + 1
    out[max(0, -first):] = binned[max(0, first):second + 1]
    return out.reshape((context_s * binned.shape[1],) + binned.shape[2:])


def first_nonfinite(x: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN/Inf in C order, or None when every value is finite."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), x.shape))


def label_prior(labels_by_video: dict[int, list[np.ndarray]]) -> dict:
    """Mean label tables from training labels only (video -> list of `[T, 2]`, one per subject).

    Returns a JSON-serialisable dict (string keys, Python floats) so it can travel in dataset
    metadata and into an export:
      `per_second[video][i]`: mean over the subjects whose trial has second i,
      `per_video[video]`: mean over all of that video's label seconds,
      `global`: mean over every label second.
    """
    per_second, per_video, everything = {}, {}, []
    for video, trials in sorted(labels_by_video.items()):
        if not trials:
            continue
        longest = max(len(t) for t in trials)
        sums, counts = np.zeros((longest, 2)), np.zeros((longest, 1))
        for t in trials:
            sums[:len(t)] += t
            counts[:len(t)] += 1
        per_second[str(video)] = (sums / counts).tolist()
        stacked = np.concatenate([np.asarray(t, np.float64) for t in trials])
        per_video[str(video)] = stacked.mean(axis=0).tolist()
        everything.append(stacked)
    if not everything:
        raise ValueError("label_prior needs at least one training trial")
    return {"per_second": per_second, "per_video": per_video,
            "global": np.concatenate(everything).mean(axis=0).tolist()}


def prior_at(prior: dict, video: int, second: int) -> np.ndarray:
    """`[2]` float32 prior for (video, second): per-second mean, else video mean, else global."""
    rows = prior["per_second"].get(str(video))
    if rows is not None and second < len(rows):
        return np.asarray(rows[second], np.float32)
    return np.asarray(prior["per_video"].get(str(video), prior["global"]), np.float32)
