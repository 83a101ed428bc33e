"""An independent MER-PS (track 4) release writer for tests and model experiments.

Written from the published MER-PS layout and from what tfds_builders/mer_ps/
release.py accepts, never from the project's demo writer, so the data does not share the models'
assumptions. No demo marker is written: the builder must take it for a real release.

Labels, per target (valence, arousal), in units of `label_sd` around 128:
    z[s, v, t] = sqrt(shared) * P[v, t] + sqrt(1 - shared) * S[s, v, t]
P is one slow curve per (video, second), the same for every subject: what the per-(video,
second) prior of the training subjects can know. S is each subject's own slow curve, which only
the signals tell. Both have unit variance, so `shared` is the prior's share of the label
variance. label = clip(round(128 + label_sd * z), 1, 255).

Carriers (MECHANISMS). With q = (label - 128) / label_sd - shift[s, target]:
  "hbo_theta" (default)
    valence: the mean HbO of the kept channels of FRONTAL_FNIRS over the label second, minus
      that trial's baseline mean, is fnirs_gain * q (times per-(trial, channel) weights in
      0.7-1.3 and the subject's channel gains), plus label-free systemic waves.
    arousal: MIDLINE_EEG carries one tone per (trial, channel) at a random frequency inside
      theta (4-8 Hz); its power over the label second is exp(eeg_gain * q) times its power in
      the trial's baseline, so log band power is linear in the label (plus the background).
  "gamma_hbr": valence in gamma (30-45 Hz) power of TEMPORAL_EEG, arousal in minus the HbR
      level of PARIETAL_FNIRS; same laws.
The carrier channels' other haemoglobin type moves against the drive, as in a haemodynamic
response (HbR by -0.3 x an HbO drive, HbO by -2 x an HbR drive); HbT = HbO + HbR.
shift[s] ~ N(0, subject_shift) is a per-subject calibration offset that no signal reveals: it
bounds what any subject-independent model can reach.
Everything else carries no label: for EEG a 1/f background, a common reference, alpha and beta
sources with random power, 50 Hz line noise, blinks, slow drifts, DC offsets and per-subject
channel gains; for fNIRS systemic waves (Mayer, respiration, cardiac), drifts, DC offsets and the
bad channels of fNIRS_reservations.csv, which hold junk (flat, huge noise or a square wave).
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np
import scipy.io

EEG_CHANNELS, FNIRS_CHANNELS, NUM_VIDEOS, BASELINE_S = 64, 51, 15, 5
LABEL_CENTRE = 128.0
BLINK_EEG = (0, 2, 3, 5)  # frontal channels that see eye blinks; no carrier uses them


@dataclasses.dataclass(frozen=True)
class Carrier:
    """How one target rides on the signals; `channels` are 0-based."""
    modality: str                            # "fnirs" or "eeg"
    channels: tuple[int, ...]
    kind: str                                # fNIRS: "HbO" or "HbR"; EEG: the band's name
    band: tuple[float, float] = (0.0, 0.0)   # EEG band in Hz
    sign: float = 1.0                        # +1: the statistic rises with the label


FRONTAL_FNIRS = (2, 5, 9, 14, 20, 26, 31, 37)
PARIETAL_FNIRS = (4, 11, 17, 24, 35, 42, 47, 50)
MIDLINE_EEG = (1, 7, 11, 17, 23, 30, 38, 46)
TEMPORAL_EEG = (8, 15, 26, 33, 41, 49, 55, 62)
MECHANISMS = {
    "hbo_theta": {"valence": Carrier("fnirs", FRONTAL_FNIRS, "HbO"),
                  "arousal": Carrier("eeg", MIDLINE_EEG, "theta", (4.0, 8.0))},
    "gamma_hbr": {"valence": Carrier("eeg", TEMPORAL_EEG, "gamma", (30.0, 45.0)),
                  "arousal": Carrier("fnirs", PARIETAL_FNIRS, "HbR", sign=-1.0)},
}
TARGETS = ("valence", "arousal")


@dataclasses.dataclass(frozen=True)
class PsRelease:
    """What was written, for tests: the truth a model should recover."""
    root: pathlib.Path
    subjects: tuple[str, ...]
    mechanism: dict           # target -> Carrier
    labels: dict              # (subject, video) -> int [T, 2] (valence, arousal)
    bad_channels: dict        # subject -> 0-based fNIRS channels marked 0
    shifts: dict              # subject -> [2] calibration offsets, label_sd units


def _slow_curve(rng, n, phi=0.9):
    """Unit-variance joystick-like trace: a level (var 0.36) plus an AR(1) wander (var 0.64)."""
    e = rng.normal(0.0, np.sqrt(1 - phi ** 2), n)
    x, prev = np.empty(n), rng.normal()
    for i in range(n):
        prev = phi * prev + e[i]
        x[i] = prev
    return rng.normal(0.0, 0.6) + 0.8 * x


def _pink(rng, rows, n, rate):
    """Rows of unit-variance noise with a 1/f power spectrum (flat below 1 Hz)."""
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spec = rng.normal(size=(rows, len(f))) + 1j * rng.normal(size=(rows, len(f)))
    x = np.fft.irfft(spec / np.sqrt(np.maximum(f, 1.0)), n)
    return x / x.std(axis=-1, keepdims=True)


def _band_noise(rng, rows, n, rate, lo, hi):
    """Unit-variance Gaussian noise confined to [lo, hi] Hz."""
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spec = (rng.normal(size=(rows, len(f))) + 1j * rng.normal(size=(rows, len(f)))) * (
        (f >= lo) & (f <= hi))
    x = np.fft.irfft(spec, n)
    return x / np.maximum(x.std(axis=-1, keepdims=True), 1e-12)


def _boxcar(x, width):
    """Moving average along time: softens per-second steps so they do not click."""
    if width < 2:
        return x
    k = np.ones(width) / width
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), -1, x)


def _second_bounds(n, seconds):
    """Sample bounds of each label second, rounded as the builder cuts them."""
    return np.round(np.arange(seconds + 1) * n / seconds).astype(int)


def _eeg_trial(rng, q, carriers, gains, dc, rate, noise, eeg_gain):
    """[64, (5 + T) * rate] EEG in µV, baseline first; q: target -> [T] carrier drive."""
    seconds = len(next(iter(q.values())))
    n = (BASELINE_S + seconds) * rate
    t = np.arange(n) / rate
    x = 10.0 * _pink(rng, EEG_CHANNELS, n, rate)                      # background
    x += 5.0 * _pink(rng, 1, n, rate)                                 # common reference
    # Alpha and beta sources whose power wanders at random: what the labels do NOT follow.
    for lo, hi in ((8.0, 13.0), (13.0, 30.0)):
        src = _band_noise(rng, 3, n, rate, lo, hi)
        env = np.exp(_boxcar(np.repeat(rng.normal(0, 0.5, (3, n // rate + 1)), rate,
                                       axis=1)[:, :n], rate // 5))
        x += rng.uniform(0, 6, (EEG_CHANNELS, 3)) @ (src * env)
    if rate > 120:
        x += 4.0 * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi))
    for c in BLINK_EEG:                                               # ~0.3 blinks per second
        for start in rng.choice(n - rate // 3, size=max(1, int(0.3 * n / rate)), replace=False):
            width = rate // 3
            x[c, start:start + width] += 80.0 * np.sin(np.pi * np.arange(width) / width)
    x *= noise
    for target, carrier in carriers.items():
        if carrier.modality != "eeg":
            continue
        lo, hi = carrier.band
        # Log amplitude per second: 0 in the baseline, eeg_gain * q / 2 during the video, so the
        # band power (amplitude squared) is exp(eeg_gain * q) times the baseline's.
        log_amp = np.concatenate([np.zeros(BASELINE_S), carrier.sign * eeg_gain * q[target] / 2])
        env = np.exp(_boxcar(np.repeat(log_amp, rate), rate // 10))
        for c in carrier.channels:
            # One tone per channel somewhere in the band: a single tone never beats, so the power
            # of any window follows the envelope whatever the estimator (window, length).
            freq = rng.uniform(lo + 1.0, hi - 1.0)
            osc = np.sqrt(2) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
            x[c] += 15.0 * rng.uniform(0.7, 1.3) * env * osc
    # Slow electrode drift, then per-subject channel gains and DC offsets.
    x += 20.0 * np.sin(2 * np.pi * rng.uniform(0.01, 0.05, (EEG_CHANNELS, 1)) * t
                       + rng.uniform(0, 2 * np.pi, (EEG_CHANNELS, 1)))
    return gains[:, None] * x + dc[:, None]


def _fnirs_trial(rng, q, carriers, gains, dc, rate, noise, fnirs_gain):
    """(baseline [6, 51, Tb], video [6, 51, Tv]) in the file's units before `fnirs_unit`."""
    seconds = len(next(iter(q.values())))
    nb, nv = int(round(BASELINE_S * rate)), int(round(seconds * rate))
    n = nb + nv
    t = np.arange(n) / rate
    systemic = sum(a * np.sin(2 * np.pi * rng.uniform(lo, hi) * t + rng.uniform(0, 2 * np.pi))
                   for a, lo, hi in ((0.3, 0.08, 0.12), (0.1, 0.2, 0.3), (0.15, 0.9, 1.3)))
    weight = rng.uniform(0.5, 1.0, (FNIRS_CHANNELS, 1))
    drift = 0.2 * np.sin(2 * np.pi * rng.uniform(0.005, 0.02, (FNIRS_CHANNELS, 1)) * t
                         + rng.uniform(0, 2 * np.pi, (FNIRS_CHANNELS, 1)))
    hbo = noise * (weight * systemic + drift + rng.normal(0, 0.1, (FNIRS_CHANNELS, n)))
    hbr = noise * (-0.3 * weight * systemic + 0.5 * drift
                   + rng.normal(0, 0.05, (FNIRS_CHANNELS, n)))
    bounds = _second_bounds(nv, seconds)
    for target, carrier in carriers.items():
        if carrier.modality != "fnirs":
            continue
        drive = np.zeros(n)
        for i in range(seconds):   # piecewise constant on the builder's own second windows
            drive[nb + bounds[i]:nb + bounds[i + 1]] = carrier.sign * fnirs_gain * q[target][i]
        for c in carrier.channels:
            d = rng.uniform(0.7, 1.3) * drive
            # Oxy and deoxy move against each other, as in a haemodynamic response.
            if carrier.kind == "HbO":
                hbo[c] += d
                hbr[c] -= 0.3 * d
            else:
                hbr[c] += d
                hbo[c] -= 2.0 * d
    hb = np.stack([hbo, hbr, hbo + hbr])
    # Optical densities at three wavelengths: mixtures of HbO and HbR on a positive level.
    ext = np.array([[0.7, 1.1], [0.9, 0.9], [1.0, 0.7]]) * 0.01
    absorb = np.einsum("wk,kct->wct", ext, np.stack([hbo, hbr]))
    out = np.concatenate([hb * gains[None, :, None], absorb]) + dc[:, :, None]
    return out[..., :nb], out[..., nb:]


def _junk(rng, kind, shape, scale):
    """A bad channel's content: flat, huge noise, or a saturating square wave, never NaN."""
    if kind == "flat":
        return np.full(shape, rng.uniform(-1, 1) * scale)
    if kind == "huge":
        return rng.normal(0, 50 * scale, shape)
    period = int(rng.integers(5, 40))
    square = np.where((np.arange(shape[-1]) // period) % 2 == 0, 1.0, -1.0)
    return 200 * scale * np.broadcast_to(square, shape) + rng.normal(0, scale, shape)


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _side_files(root, rng, subjects, labels, bad):
    (root / "README.md").write_text(
        "# MER-PS trainval (independently generated test fixture)\n\n"
        "Synthetic EEG (64 ch) and fNIRS (51 ch, 6 types) per subject and video, with 5 s "
        "baselines, and per-second valence/arousal annotations on a 1-255 scale.\n")
    _write_csv(root / "Metadata.csv", ["sub_id", "gender", "age", "health"],
               [[s, rng.choice(["F", "M"]), int(rng.integers(18, 30)), "healthy"]
                for s in subjects])
    sam_cols = [f"Video_{v}_{k}" for v in range(1, NUM_VIDEOS + 1)
                for k in ("Valence", "Arousal", "Dominance", "Familiarity")]
    sam_rows = []
    for s in subjects:
        row = [s]
        for v in range(1, NUM_VIDEOS + 1):
            mean = labels[s, v].mean(axis=0)   # the post-trial rating follows the trace, 1-9
            row += [int(round(1 + 8 * (m - 1) / 254)) for m in mean]
            row += [int(rng.integers(1, 10)), int(rng.integers(1, 10))]
        sam_rows.append(row)
    _write_csv(root / "SAM_score.csv", ["sub_id"] + sam_cols, sam_rows)
    _write_csv(root / "PANAS_score.csv", ["sub_id", "PA_before", "NA_before", "PA_after",
                                          "NA_after"],
               [[s] + rng.integers(10, 50, 4).tolist() for s in subjects])
    codes = rng.integers(0, 5, NUM_VIDEOS)
    (root / "Targeted_emotions.txt").write_text(
        "Targeted emotion of each video, in order:\n" + ",".join(map(str, codes)) + ";\n")
    _write_csv(root / "fNIRS_coordinates.csv", ["Channel", "Source", "Detector", "X", "Y", "Z"],
               [[c + 1, c // 3 + 1, c % 17 + 1] + np.round(rng.normal(0, 60, 3), 2).tolist()
                for c in range(FNIRS_CHANNELS)])
    _write_csv(root / "fNIRS_reservations.csv",
               ["sub_id"] + [f"ch-{c}" for c in range(1, FNIRS_CHANNELS + 1)],
               [[s] + [0 if c in bad[s] else 1 for c in range(FNIRS_CHANNELS)]
                for s in subjects])


def write_ps_release(root, *, seed=0, subjects=tuple(f"test_{i}" for i in range(1, 7)),
                     seconds=(4, 6), eeg_samples_per_s=250, eeg_dtype=np.float64,
                     fnirs_samples_per_s=47.62, mechanism="hbo_theta", shared=0.5,
                     label_sd=40.0, noise=1.0, eeg_gain=0.7, fnirs_gain=1.0, subject_shift=0.0,
                     eeg_unit=1.0, eeg_dc=1e4, fnirs_unit=1.0, fnirs_dc=10.0,
                     channel_gain_sd=0.1, bad_channels=(2, 5)) -> PsRelease:
    """Writes the release under `root` (created) and returns its truth; see the module doc.

    seconds: (lo, hi) label seconds per video, drawn once per video (videos are time-aligned).
    eeg_unit: 1 writes µV, 1e-6 volts; eeg_dc: sd of the per-channel DC offsets in µV.
    fnirs_unit scales the haemoglobin types (not the optical densities); fnirs_dc: sd of their
    per-(type, channel) DC offsets. channel_gain_sd: sd of log per-subject channel gains.
    bad_channels: (lo, hi) fNIRS channels per subject marked 0, at least one in each fNIRS
    carrier group so that ignoring the mask hurts.
    """
    root = pathlib.Path(root)
    carriers = MECHANISMS[mechanism] if isinstance(mechanism, str) else dict(mechanism)
    if not 0.0 <= shared <= 1.0:
        raise ValueError(f"shared must be in [0, 1], found {shared}")
    if int(eeg_samples_per_s) != eeg_samples_per_s or eeg_samples_per_s < 60:
        raise ValueError(f"eeg_samples_per_s must be an integer >= 60, found {eeg_samples_per_s}")
    for c in carriers.values():
        if c.modality == "eeg" and c.band[1] + 1 >= eeg_samples_per_s / 2:
            raise ValueError(f"band {c.band} does not fit under Nyquist at {eeg_samples_per_s}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seconds[0], seconds[1] + 1, NUM_VIDEOS)
    common = {v: np.stack([_slow_curve(rng, n) for _ in TARGETS], 1)
              for v, n in zip(range(1, NUM_VIDEOS + 1), lengths)}
    fnirs_groups = [c.channels for c in carriers.values() if c.modality == "fnirs"]

    labels, bad, shifts = {}, {}, {}
    for k, subject in enumerate(subjects):
        srng = np.random.default_rng([seed, k + 1])
        shifts[subject] = srng.normal(0.0, subject_shift, 2)
        picks = {int(srng.choice(g)) for g in fnirs_groups}
        n_bad = max(len(picks), int(srng.integers(bad_channels[0], bad_channels[1] + 1)))
        rest = srng.permutation([c for c in range(FNIRS_CHANNELS) if c not in picks])
        bad[subject] = sorted(picks | {int(c) for c in rest[:n_bad - len(picks)]})
        eeg_gains = np.exp(srng.normal(0, channel_gain_sd, EEG_CHANNELS))
        eeg_offsets = srng.normal(0, eeg_dc, EEG_CHANNELS)
        f_gains = np.exp(srng.normal(0, channel_gain_sd, FNIRS_CHANNELS))
        f_offsets = np.concatenate([srng.normal(0, fnirs_dc, (3, FNIRS_CHANNELS)),
                                    srng.uniform(0.5, 2.0, (3, FNIRS_CHANNELS))])
        files = {name: {} for name in ("EEG_baselines", "EEG_videos", "fNIRS_baselines",
                                       "fNIRS_videos", "label")}
        for v in range(1, NUM_VIDEOS + 1):
            own = np.stack([_slow_curve(srng, lengths[v - 1]) for _ in TARGETS], 1)
            z = np.sqrt(shared) * common[v] + np.sqrt(1 - shared) * own
            lab = np.clip(np.rint(LABEL_CENTRE + label_sd * z), 1, 255)
            labels[subject, v] = lab.astype(np.int64)
            # The signals see the stored integer label, minus this subject's calibration shift.
            q = {t: (lab[:, i] - LABEL_CENTRE) / label_sd - shifts[subject][i]
                 for i, t in enumerate(TARGETS)}
            eeg = _eeg_trial(srng, q, carriers, eeg_gains, eeg_offsets, int(eeg_samples_per_s),
                             noise, eeg_gain) * eeg_unit
            base_f, video_f = _fnirs_trial(srng, q, carriers, f_gains, f_offsets,
                                           fnirs_samples_per_s, noise, fnirs_gain)
            for c, kind in zip(bad[subject], ("flat", "huge", "square") * FNIRS_CHANNELS):
                for arr in (base_f, video_f):
                    arr[:, c] = _junk(srng, kind, arr[:, c].shape, max(fnirs_dc, 1.0))
            base_f[:3] *= fnirs_unit
            video_f[:3] *= fnirs_unit
            name = f"video_{v}"
            split = BASELINE_S * int(eeg_samples_per_s)
            files["EEG_baselines"][name] = eeg[:, :split].astype(eeg_dtype)
            files["EEG_videos"][name] = eeg[:, split:].astype(eeg_dtype)
            files["fNIRS_baselines"][name] = base_f
            files["fNIRS_videos"][name] = video_f
            files["label"][name] = lab.T.astype(np.float64)   # [2, T], MATLAB's double
        (root / "data" / subject).mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        for name, arrays in files.items():
            path = (root / "annotations" / f"{subject}_label.mat" if name == "label"
                    else root / "data" / subject / f"{name}.mat")
            scipy.io.savemat(str(path), arrays, format="5", do_compression=False)
    _side_files(root, rng, tuple(subjects), labels, bad)
    return PsRelease(root=root, subjects=tuple(subjects), mechanism=carriers, labels=labels,
                     bad_channels=bad, shifts=shifts)
