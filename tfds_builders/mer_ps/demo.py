"""Writes a seeded demo release with exactly the layout of the real MER-PS release.

The demo exists so that the whole chain (builder, pipeline, training, export) runs without the
gated data, and so that a model can be shown to learn: its labels are carried by the signals.
  * Labels: per (video, second) a video trajectory shared by all subjects plus a per-subject
    deviation (std ~25 on the 1-255 scale), rounded to integers; stored as float64 integer
    values (what MATLAB's default double would hold).
  * EEG: pink noise on all 64 channels; 8-13 Hz (alpha) amplitude in channels 0-7 follows
    valence, 13-30 Hz (beta) amplitude in channels 8-15 follows arousal, second by second.
  * fNIRS: HbO of channels 0-9 follows valence, HbR of channels 10-19 falls with arousal,
    HbT = HbO + HbR, Abs* are plausible noise.
  * Baselines carry the same background, drift and per-channel DC offsets but no emotion, so
    baseline correction removes the offsets. 2-4 bad fNIRS channels per subject (outside 0-19)
    hold large junk and are marked 0 in fNIRS_reservations.csv.
The same arguments give byte-identical files (the .mat header's timestamp is replaced).
"""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import scipy.io

from tfds_builders import features
from tfds_builders.mer_ps import release, signals

ALPHA_CHANNELS = tuple(range(0, 8))       # alpha power ~ valence
BETA_CHANNELS = tuple(range(8, 16))       # beta power ~ arousal
HBO_CHANNELS = tuple(range(0, 10))        # HbO ~ valence
HBR_CHANNELS = tuple(range(10, 20))       # HbR ~ -arousal
_BAD_CHANNEL_POOL = tuple(range(20, signals.FNIRS_CHANNELS))
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: merjax MER-PS demo generator"


def _smooth(rng, n, std, rho):
    """[2, n] stationary AR(1) path: smooth second to second, std `std` at every second."""
    out = np.empty((2, n))
    out[:, 0] = rng.normal(0.0, std, 2)
    for i in range(1, n):
        out[:, i] = rho * out[:, i - 1] + rng.normal(0.0, std * np.sqrt(1 - rho**2), 2)
    return out


def _labels(rng, lengths, num_subjects) -> list[list[np.ndarray]]:
    """[subject][video] -> [2, T] float64 integer values in [1, 255]."""
    shared = [rng.uniform(60, 195, size=(2, 1)) + _smooth(rng, n, 20.0, 0.95) for n in lengths]
    return [[np.clip(np.round(s + _smooth(rng, n, 25.0, 0.9)), 1, 255)
             for s, n in zip(shared, lengths)] for _ in range(num_subjects)]


def _shaped_noise(rng, shape, rate, band=None, pink=False) -> np.ndarray:
    """Unit-std noise along the last axis: pink (1/f power), or band-limited to `band` Hz."""
    spec = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    freqs = np.fft.rfftfreq(shape[-1], 1.0 / rate)
    if pink:
        spec /= np.sqrt(np.maximum(freqs, freqs[1]))
    if band is not None:
        spec *= (freqs >= band[0]) & (freqs <= band[1])
    x = np.fft.irfft(spec, n=shape[-1], axis=-1)
    return x / x.std(axis=-1, keepdims=True)


def _envelope(values01: np.ndarray, n: int) -> np.ndarray:
    """Per-second values held over the samples of each second (rounded boundaries)."""
    bounds = features.second_bounds(n, len(values01))
    return np.repeat(values01, np.diff(bounds))


def _eeg_trial(rng, labels01, n_base, n_vid, rate, gain):
    """(baseline [64, n_base], video [64, n_vid]) float32, contiguous in time."""
    n = n_base + n_vid
    x = 10.0 * _shaped_noise(rng, (signals.EEG_CHANNELS, n), rate, pink=True)
    t = np.arange(n) / rate
    x += rng.normal(0, 2.0, (signals.EEG_CHANNELS, 1)) * t / t[-1]          # slow drift
    x += rng.normal(0, 40.0, (signals.EEG_CHANNELS, 1))                     # DC offset
    for rows, band, row01 in ((ALPHA_CHANNELS, (8, 13), labels01[0]),
                              (BETA_CHANNELS, (13, 30), labels01[1])):
        amp = 12.0 * (0.1 + _envelope(row01, n_vid))
        x[list(rows), n_base:] += amp * _shaped_noise(rng, (len(rows), n_vid), rate, band=band)
    x *= gain
    return x[:, :n_base].astype(np.float32), x[:, n_base:].astype(np.float32)


def _fnirs_trial(rng, labels01, n_base, n_vid, bad):
    """(baseline, video), each [6, 51, n] float32; HbT is built from HbO + HbR."""
    n = n_base + n_vid
    shape = (len(signals.FNIRS_TYPES), signals.FNIRS_CHANNELS)
    x = 0.3 * rng.standard_normal(shape + (n,))
    x += rng.normal(0, 0.3, shape + (1,)) * np.linspace(0, 1, n)          # slow drift
    x += rng.normal(0, 2.0, shape + (1,))                                  # DC offset
    x[3:] += 0.5                                                            # absorbances > 0
    x[0, list(HBO_CHANNELS), n_base:] += 1.5 * _envelope(labels01[0], n_vid)
    x[1, list(HBR_CHANNELS), n_base:] -= 0.8 * _envelope(labels01[1], n_vid)
    x[2] = x[0] + x[1]
    junk = (shape[0], len(bad), n)
    x[:, bad] = rng.normal(0, 500.0, junk) + 5000.0 * (rng.random(junk) < 0.02)
    return x[..., :n_base].astype(np.float32), x[..., n_base:].astype(np.float32)


def _savemat(path: pathlib.Path, arrays: dict) -> None:
    buf = io.BytesIO()
    scipy.io.savemat(buf, arrays, format="5", do_compression=False)
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116)    # drop the timestamp so equal seeds give equal bytes
    path.write_bytes(bytes(data))


def _write_csv(path: pathlib.Path, header, rows) -> None:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _side_files(root, rng, subjects, labels, bad):
    _write_csv(root / "fNIRS_reservations.csv",
               ["sub_id"] + [f"ch-{c}" for c in range(1, signals.FNIRS_CHANNELS + 1)],
               [[s] + [0 if c in bad[i] else 1 for c in range(signals.FNIRS_CHANNELS)]
                for i, s in enumerate(subjects)])
    sam_header, sam_rows = ["sub_id"], []
    for k in signals.VIDEOS:
        sam_header += [f"Video_{k}_{q}" for q in ("Valence", "Arousal", "Dominance", "Familiarity")]
    for i, s in enumerate(subjects):
        row = [s]
        for trial in labels[i]:
            va = [int(1 + np.round(8 * (trial[r].mean() - 1) / 254)) for r in (0, 1)]
            row += va + [int(v) for v in rng.integers(1, 10, size=2)]
        sam_rows.append(row)
    _write_csv(root / "SAM_score.csv", sam_header, sam_rows)
    _write_csv(root / "Metadata.csv", ["sub_id", "gender", "age"],
               [[s, "FM"[int(rng.integers(2))], int(rng.integers(19, 31))] for s in subjects])
    _write_csv(root / "PANAS_score.csv", ["sub_id", "PA_pre", "NA_pre", "PA_post", "NA_post"],
               [[s] + [int(v) for v in rng.integers(10, 51, size=4)] for s in subjects])
    _write_csv(root / "fNIRS_coordinates.csv", ["Channel", "Source", "Detector", "X", "Y", "Z"],
               [[c + 1, c // 3 + 1, c % 17 + 1] + [f"{v:.2f}" for v in rng.normal(0, 60, 3)]
                for c in range(signals.FNIRS_CHANNELS)])
    codes = rng.integers(0, 5, size=signals.NUM_VIDEOS)
    (root / "Targeted_emotions.txt").write_text(",".join(str(c) for c in codes) + ";\n")


def write_demo_release(root, *, seed: int = 0, num_subjects: int = 24,
                       seconds: tuple[int, int] = (4, 6), eeg_rate_hz: float = 200,
                       fnirs_rate_hz: float = 47.62) -> pathlib.Path:
    """Writes the demo release into `root` (created if needed) and returns its path.

    `seconds` is the inclusive range of video lengths; each video has one length shared by all
    subjects, like the time-aligned real videos. Refuses to write into a non-empty folder that
    is not already a demo release, so a real release can never be overwritten.
    """
    root = pathlib.Path(root)
    if root.exists() and any(root.iterdir()) and not (root / release.DEMO_MARKER).exists():
        raise ValueError(f"{root}: not empty and not a demo release; refusing to write into it")
    rng = np.random.default_rng(seed)
    subjects = [f"test_{i}" for i in range(1, num_subjects + 1)]
    lengths = [int(n) for n in rng.integers(seconds[0], seconds[1] + 1, size=signals.NUM_VIDEOS)]
    labels = _labels(rng, lengths, num_subjects)
    bad = [sorted(int(c) for c in rng.choice(_BAD_CHANNEL_POOL, int(rng.integers(2, 5)), False))
           for _ in subjects]
    eeg_base, fnirs_base = round(signals.BASELINE_S * eeg_rate_hz), round(
        signals.BASELINE_S * fnirs_rate_hz)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i, subject in enumerate(subjects):
        gain = rng.uniform(0.8, 1.2)
        out = {k: {} for k in signals.SIGNAL_FILES}
        for v, (n, lab) in enumerate(zip(lengths, labels[i]), start=1):
            lab01 = (lab - 1.0) / 254.0
            name = signals.video_var(v)
            out["EEG_baselines.mat"][name], out["EEG_videos.mat"][name] = _eeg_trial(
                rng, lab01, eeg_base, round(n * eeg_rate_hz), eeg_rate_hz, gain)
            out["fNIRS_baselines.mat"][name], out["fNIRS_videos.mat"][name] = _fnirs_trial(
                rng, lab01, fnirs_base, round(n * fnirs_rate_hz), bad[i])
        folder = root / "data" / subject
        folder.mkdir(parents=True, exist_ok=True)
        for fname, arrays in out.items():
            _savemat(folder / fname, arrays)
        _savemat(root / "annotations" / f"{subject}_label.mat",
                 {signals.video_var(v): lab for v, lab in enumerate(labels[i], start=1)})
    _side_files(root, rng, subjects, labels, bad)
    params = dict(seed=seed, num_subjects=num_subjects, seconds=list(seconds),
                  eeg_rate_hz=eeg_rate_hz, fnirs_rate_hz=fnirs_rate_hz)
    (root / release.DEMO_MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
    (root / "README.md").write_text(
        "# MER-PS demo release (generated, NOT real data)\n\n"
        "Written by `tfds_builders.mer_ps.demo.write_demo_release` with "
        f"`{json.dumps(params, sort_keys=True)}`.\nSame layout as "
        "MER_PS_codabench_public_trainval/; labels are synthetic and carried by the signals "
        f"(see demo.py). The marker file `{release.DEMO_MARKER}` keeps it from ever passing as "
        "the real release.\n")
    return root
