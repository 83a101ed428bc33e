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


# ------------------------------------------------------------------------------------------------
# MER2026 track 1 (MER-Cross): audio log-mel, feature-sequence pooling, face resizing, text bytes.

def centre_crop(x: np.ndarray, max_len: int, axis: int = 0) -> np.ndarray:
    """The middle `max_len` entries of `x` along `axis` (unchanged when not longer).

    An odd surplus drops one more entry at the end than at the start.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    n = x.shape[axis]
    if n <= max_len:
        return x
    start = (n - max_len) // 2
    return np.take(x, np.arange(start, start + max_len), axis=axis)


_MEL_BANKS: dict[tuple, np.ndarray] = {}


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """`[n_mels, n_fft // 2 + 1]` float32 Slaney mel filters (librosa's defaults), cached.

    Only `librosa.filters.mel` is used: it runs no numba code, so it avoids librosa's ~13 s
    first-call JIT that `librosa.feature.melspectrogram` pays in a fresh environment. The
    returned array is shared and read-only.
    """
    key = (int(sample_rate), int(n_fft), int(n_mels), float(fmin),
           None if fmax is None else float(fmax))
    if key not in _MEL_BANKS:
        import librosa  # lazy: the exported predictor and most callers never need it
        bank = librosa.filters.mel(sr=key[0], n_fft=key[1], n_mels=key[2], fmin=key[3],
                                   fmax=key[4]).astype(np.float32)
        bank.setflags(write=False)
        _MEL_BANKS[key] = bank
    return _MEL_BANKS[key]


def log_mel_spectrogram(wave: np.ndarray, *, sample_rate: int = 16000, n_mels: int = 80,
                        n_fft: int = 400, hop_length: int | None = None, fmin: float = 0.0,
                        fmax: float | None = None, floor: float = 1e-6) -> np.ndarray:
    """`[T, n_mels]` float32 `log(mel power + floor)` of a mono wave, time first.

    Frames as `librosa.stft(center=True, pad_mode='constant')`: the wave is zero-padded by
    `n_fft // 2` on both sides, windows are periodic Hann of `n_fft` samples (25 ms at 16 kHz)
    every `hop_length` samples (default 10 ms), so `T = 1 + len(wave) // hop_length` (an empty
    wave gives one silent frame). Power spectrum times `mel_filterbank`, natural log; no
    normalisation (that belongs to the input pipeline).
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono wave [N], got shape {wave.shape}")
    hop = sample_rate // 100 if hop_length is None else int(hop_length)
    if hop < 1 or n_fft < 2:
        raise ValueError(f"need hop_length >= 1 and n_fft >= 2, got {hop} and {n_fft}")
    padded = np.pad(wave, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    spectrum = np.fft.rfft(frames * window, n=n_fft, axis=-1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = power.astype(np.float32) @ mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).T
    return np.log(mel + np.float32(floor)).astype(np.float32)


def pool_frames(x: np.ndarray, max_frames: int) -> np.ndarray:
    """Adjacent-frame averaging of `[T, ...]` down to at most `max_frames` frames (float32).

    MERTools' `feature_scale_compress` with `scale = ceil(T / max_frames)`: groups of `scale`
    adjacent frames are averaged, aligned to the *end* of the sequence, giving
    `ceil(T / scale) <= max_frames` frames. MERTools front-pads zeros to fill the first group
    and averages them in; here the short first group is averaged over its real frames only, so
    no output frame is diluted. `T <= max_frames` is returned unchanged (as float32).
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    x = np.asarray(x)
    t = x.shape[0]
    if t <= max_frames:
        return x.astype(np.float32)
    scale = -(-t // max_frames)
    n = -(-t // scale)
    first = t - (n - 1) * scale                       # 1..scale frames in the first group
    x64 = x.astype(np.float64)
    head = x64[:first].mean(axis=0, keepdims=True)
    rest = x64[first:].reshape((n - 1, scale) + x.shape[1:]).mean(axis=1)
    return np.concatenate([head, rest]).astype(np.float32)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]`: the fraction of output cell i covered by input pixel j (rows sum to 1)."""
    edges = np.arange(n_out + 1, dtype=np.float64) * n_in / n_out
    pixel = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel)
    return np.clip(overlap, 0.0, None) * (n_out / n_in)


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """Resize `[..., H, W, C]` images to `[..., size, size, C]` by area averaging (plain numpy).

    Each output pixel is the mean of the input area it covers (fractional pixels weighted by
    overlap), like OpenCV's INTER_AREA when shrinking; the image mean is preserved. Integer
    input is rounded half-to-even and clipped to its dtype; float input gives float32.
    """
    images = np.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"expected [..., H, W, C] images, got shape {images.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    h, w = images.shape[-3:-1]
    wy = _area_weights(h, size).astype(np.float32)
    wx = _area_weights(w, size).astype(np.float32)
    out = np.einsum("yh,...hwc->...ywc", wy, images.astype(np.float32), optimize=True)
    out = np.einsum("xw,...ywc->...yxc", wx, out, optimize=True)
    if np.issubdtype(images.dtype, np.integer):
        info = np.iinfo(images.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(images.dtype)
    return out.astype(np.float32)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding has at most `max_bytes` bytes.

    Cuts on a character boundary: a multi-byte character that would straddle the limit is
    dropped whole.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")


def utf8_bytes(text, max_bytes: int | None = None) -> np.ndarray:
    """`[n]` uint8 UTF-8 bytes of `text` (a str, or bytes as TFDS `Text` decodes), cut on a
    character boundary to at most `max_bytes` when given."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    if max_bytes is not None:
        text = truncate_utf8(text, max_bytes)
    return np.frombuffer(text.encode("utf-8"), np.uint8).copy()
