"""Reads and validates a MER-PS release root (`MER_PS_codabench_public_trainval/`).

Two passes, both before the builder writes anything:
  1. `check_release`: layout, side files, every .mat's variables and shapes (cheap header reads
     plus a structural walk that catches truncated files), labels in full, derived sampling rates.
  2. `load_subject`: signals in full, the fNIRS_reservations.csv plausibility check
     (`reservation_check`), then signals.py's preprocessing (the fNIRS channel rule, finiteness,
     baseline correction, EEG resampling, fNIRS binning, dropped-channel zeroing), the code the
     MER-PS submission runs on hidden subjects. The results stay in memory until the examples
     are written.
Layout and variables: the MER-PS dataset card and the official starting kit.
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib
import re
import statistics
import time

from absl import logging
import numpy as np

from tfds_builders.common import ReleaseError, check_kind
from tfds_builders.mer_ps import signals
from tfds_builders.mer_ps.signals import (FNIRS_CHANNELS, NUM_VIDEOS, SIGNAL_FILES, VIDEOS,
                                          mat_shapes, read_mat, video_var)

DEMO_MARKER = "MERJAX_DEMO_RELEASE"
# Side files the builder reads, with what it reads them for: each one must be present.
REQUIRED_SIDE_FILES = {
    "fNIRS_reservations.csv": "the per-subject fNIRS channel marks, checked against the signals",
    "Targeted_emotions.txt": "the videos' emotion codes, recorded in the dataset metadata",
}
# Side files of the release that the builder never reads: a missing one is logged, not fatal
# (they are absent from some copies, e.g. the public leaderboard evaluation data).
OPTIONAL_SIDE_FILES = ("README.md", "Metadata.csv", "SAM_score.csv", "PANAS_score.csv",
                       "fNIRS_coordinates.csv")
SIDE_FILES = tuple(REQUIRED_SIDE_FILES) + OPTIONAL_SIDE_FILES
LABEL_ROWS = ("valence", "arousal")
MANUAL_DIR_HINT = (
    "Pass it with --config.data.manual_dir=/path/to/MER_PS_codabench_public_trainval (the "
    "unzipped MER-PS-trainval release); without a manual_dir the build uses the generated demo "
    "release instead.")


@dataclasses.dataclass(frozen=True)
class Inventory:
    """What `check_release` established about a release; no signal data yet."""
    root: pathlib.Path
    kind: str                                   # 'demo' or 'real'
    subjects: tuple[str, ...]
    labels: dict[tuple[str, int], np.ndarray]   # (subject, video) -> [T, 2] float32, raw scale
    eeg_rate_hz: float                          # EEG samples per label second (derived)
    fnirs_rate_hz: float                        # fNIRS samples per label second (derived)
    fnirs_masks: dict[str, np.ndarray]          # subject -> [51] bool, fNIRS_reservations.csv's
                                                # marks (True = 1 = keep)
    targeted_emotions: tuple[int, ...] | None
    missing_side_files: tuple[str, ...] = ()    # optional side files not in the release

    def seconds(self, subject: str, video: int) -> int:
        return int(self.labels[(subject, video)].shape[0])


@dataclasses.dataclass(frozen=True)
class Trial:
    """One preprocessed (subject, video)."""
    eeg: np.ndarray     # [64, T * eeg_rate_hz] float32, baseline-corrected, resampled
    fnirs: np.ndarray   # [T, bins, len(types), 51] float32, baseline-corrected, bad channels 0
    labels: np.ndarray  # [T, 2] float32


@dataclasses.dataclass(frozen=True)
class SubjectData:
    name: str
    fnirs_mask: np.ndarray          # [51] bool
    trials: dict[int, Trial]        # video -> trial
    reservation_check: dict         # `reservation_check` of this subject's fNIRS files
    zeroed_nonfinite: int = 0       # NaN/Inf values in the bad channels, zeroed
    channel_rule: dict = dataclasses.field(default_factory=dict)  # reason -> dropped channels


# ----------------------------------------------------------------------------------------------
# Side files

def release_kind(root: pathlib.Path) -> str:
    return "demo" if (root / DEMO_MARKER).exists() else "real"


def read_reservations(path: pathlib.Path) -> dict[str, np.ndarray]:
    """`fNIRS_reservations.csv` -> subject -> [51] bool (1 in the file = channel kept)."""
    columns = [f"ch-{c}" for c in range(1, FNIRS_CHANNELS + 1)]
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ["sub_id"] + columns if c not in header]
        if missing:
            raise ReleaseError(f"{path}: header: expected columns sub_id, ch-1..ch-51, "
                               f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        masks = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            sub = row["sub_id"]
            if sub in masks:
                raise ReleaseError(f"{path}: line {line}: sub_id '{sub}' appears twice")
            values = []
            for c in columns:
                try:
                    v = float(row[c])
                except ValueError:
                    v = None
                if v not in (0.0, 1.0):
                    raise ReleaseError(f"{path}: line {line} (sub_id '{sub}'), column '{c}': "
                                       f"expected 0 or 1, found '{row[c]}'")
                values.append(v == 1.0)
            masks[sub] = np.array(values, bool)
    return masks


def read_targeted_emotions(path: pathlib.Path) -> tuple[int, ...] | None:
    """The 15 emotion codes (0-4) before the first ';', or None (warned) if not found.

    Only kept as metadata, so an unexpected format is not worth failing a build over.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    codes = [int(c) for c in re.findall(r"\d+", text.split(";")[0])][-NUM_VIDEOS:]
    if len(codes) != NUM_VIDEOS or not all(0 <= c <= 4 for c in codes):
        logging.warning("%s: expected 15 integers in 0-4 followed by ';', found %r; "
                        "targeted emotions not recorded", path, text[:80])
        return None
    return tuple(codes)


# ----------------------------------------------------------------------------------------------
# Pass 1: up-front check

def _subject_paths(root: pathlib.Path, subject: str) -> dict[str, pathlib.Path]:
    paths = signals.subject_files(root, subject)
    paths["label"] = root / "annotations" / f"{subject}_label.mat"
    return paths


def _check_root(root, expected_kind: str) -> pathlib.Path:
    if expected_kind not in ("demo", "real"):
        raise ReleaseError(f"release kind must be 'demo' or 'real', found {expected_kind!r}")
    if root is None:
        raise ReleaseError(f"No manual_dir given for the MER-PS release. {MANUAL_DIR_HINT}")
    root = pathlib.Path(root).absolute()   # messages name full paths
    if not root.is_dir():
        raise ReleaseError(f"{root}: manual_dir does not exist or is not a directory. "
                           f"{MANUAL_DIR_HINT}")
    check_kind(root, release_kind(root), expected_kind, DEMO_MARKER)
    return root


def _check_labels(path, name, labels: np.ndarray) -> np.ndarray:
    """[2, T] integer-valued labels in [1, 255] -> [T, 2] float32."""
    signals.check_shape(path, name, labels.shape, (2, None))
    labels = np.asarray(labels, np.float64)
    bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 1) | (labels > 255)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise ReleaseError(f"{path}: variable '{name}' row {r} ({LABEL_ROWS[r]}) column {c}: "
                           f"expected a finite integer in [1, 255], found {float(labels[r, c])}")
    return labels.T.astype(np.float32)


def check_release(root, subjects, *, expected_kind: str) -> Inventory:
    """Validates everything needed for `subjects` without loading the signals; see module doc.

    Raises ReleaseError on the first problem, naming the file (and variable, row, column).
    """
    root = _check_root(root, expected_kind)
    subjects = tuple(subjects)
    if len(set(subjects)) != len(subjects):
        raise ReleaseError(f"subjects requested more than once: {subjects}")
    for name, purpose in REQUIRED_SIDE_FILES.items():
        if not (root / name).is_file():
            raise ReleaseError(f"{root / name}: required side file missing (the builder reads "
                               f"it for {purpose})")
    missing_side = tuple(n for n in OPTIONAL_SIDE_FILES if not (root / n).is_file())
    if missing_side:
        logging.warning("MER-PS release at %s: side files not present: %s (the builder does not "
                        "read them; building without them)", root, ", ".join(missing_side))
    masks = read_reservations(root / "fNIRS_reservations.csv")
    emotions = read_targeted_emotions(root / "Targeted_emotions.txt")

    labels, trials, files = {}, {}, {}
    for subject in subjects:
        paths = _subject_paths(root, subject)
        if not (root / "data" / subject).is_dir():
            raise ReleaseError(f"{root / 'data' / subject}: subject folder missing for requested "
                               f"subject '{subject}'")
        for path in paths.values():
            if not path.is_file():
                raise ReleaseError(f"{path}: file missing for requested subject '{subject}'")
        if subject not in masks:
            raise ReleaseError(f"{root / 'fNIRS_reservations.csv'}: no row for requested subject "
                               f"'{subject}'; its bad fNIRS channels would be unknown")
        shapes = {}
        for key, path in paths.items():
            found = mat_shapes(path)
            missing = [video_var(v) for v in VIDEOS if video_var(v) not in found]
            if missing:
                raise ReleaseError(f"{path}: expected variables video_1..video_{NUM_VIDEOS}, "
                                   f"missing {missing}")
            shapes[key] = found
        raw = read_mat(paths["label"], tuple(video_var(v) for v in VIDEOS))
        files[subject] = paths
        for v in VIDEOS:
            labels[subject, v] = _check_labels(paths["label"], video_var(v), raw[video_var(v)])
            trials[subject, v] = (signals.signal_lengths(paths, shapes, v), len(labels[subject, v]))
    eeg_rate, fnirs_rate = signals.derive_rates(
        trials, files, {(s, v): files[s]["label"] for s, v in trials})
    lengths = {v: {len(labels[s, v]) for s in subjects} for v in VIDEOS}
    uneven = {v: sorted(n) for v, n in lengths.items() if len(n) > 1}
    if uneven:
        logging.warning("MER-PS: videos with different lengths across subjects (not aligned): %s",
                        uneven)
    logging.info("MER-PS %s release at %s: %d subjects checked, EEG %.2f and fNIRS %.2f samples "
                 "per label second", expected_kind, root, len(subjects), eeg_rate, fnirs_rate)
    return Inventory(root=root, kind=expected_kind, subjects=subjects, labels=labels,
                     eeg_rate_hz=float(eeg_rate), fnirs_rate_hz=float(fnirs_rate),
                     fnirs_masks={s: masks[s] for s in subjects}, targeted_emotions=emotions,
                     missing_side_files=missing_side)


# ----------------------------------------------------------------------------------------------
# Pass 2: load and preprocess

# The 0-marked channels "look cleaner" when their median variance is below the kept channels'
# by more than this factor: real bad channels are noisier than good ones, not quieter.
_CLEANER_FACTOR = 3.0


def reservation_check(videos: dict[str, np.ndarray], baselines: dict[str, np.ndarray],
                      mask: np.ndarray) -> dict:
    """How the 0-marked fNIRS channels compare with the kept (1) ones, from the raw files.

    `fNIRS_reservations.csv`'s "1 = keep" is an inference (no source documents it); an
    inverted file would zero the good channels and feed the junk to the model without any
    error, so the signals are asked. Per channel: the HbO variance within each trial (the
    baseline-corrected signal has the same variance: the correction subtracts a per-channel
    constant), averaged over the trials; the NaN/Inf values in all six types of video and
    baseline; flat channels (variance below signals.FLAT_FRACTION of the median channel's). Per group
    (`marked` = 0, `kept` = 1): channel count, median variance of the channels that are not
    flat (None without any), non-finite values, channels holding any, flat channels.
    `suspect` is set when the marked channels look cleaner: their median variance is below the
    kept one / _CLEANER_FACTOR, or most kept channels hold non-finite values, or most are flat,
    and a larger share than of the marked ones ("most", so that a stray NaN in one good channel
    does not raise the alarm; an inverted file keeps the few bad channels, most of them junk).
    """
    per_trial, nonfinite = [], np.zeros(FNIRS_CHANNELS, np.int64)
    for name, x in videos.items():
        var, count = signals.within_trial_variance(x[0])
        per_trial.append(np.where(count > 1, var, np.nan))
        for arr in (x, baselines[name]):
            nonfinite += (~np.isfinite(arr)).sum(axis=(0, 2))
    per_trial = np.stack(per_trial)
    seen = np.isfinite(per_trial).any(axis=0)
    variance = np.full(FNIRS_CHANNELS, np.nan)
    variance[seen] = np.nanmean(per_trial[:, seen], axis=0)
    level = np.nanmedian(variance) if seen.any() else np.nan
    if np.isfinite(level) and level > 0:
        flat = seen & (variance <= signals.FLAT_FRACTION * level)
    else:                                   # no usable scale: only exactly constant is flat
        flat = seen & (variance == 0)

    def group(members: np.ndarray) -> dict:
        usable = members & seen & ~flat
        median = float(np.median(variance[usable])) if usable.any() else None
        return {"channels": int(members.sum()), "median_hbo_variance": median,
                "nonfinite_values": int(nonfinite[members].sum()),
                "nonfinite_channels": int((members & (nonfinite > 0)).sum()),
                "flat_channels": int((members & flat).sum())}

    marked, kept = group(~mask), group(mask)

    def mostly_kept(key: str) -> bool:   # shares, not counts: the kept group is ~15x larger
        share = kept[key] / kept["channels"]
        return share > 0.5 and share > marked[key] / marked["channels"]

    suspect = False
    if marked["channels"] and kept["channels"]:
        m, k = marked["median_hbo_variance"], kept["median_hbo_variance"]
        suspect = bool((m is not None and k is not None and m < k / _CLEANER_FACTOR)
                       or mostly_kept("nonfinite_channels") or mostly_kept("flat_channels"))
    return {"marked": marked, "kept": kept, "suspect": suspect}


def _describe_check(check: dict) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.3g}"
    m, k = check["marked"], check["kept"]
    return (f"{m['channels']} marked 0 vs {k['channels']} kept: median HbO variance "
            f"{fmt(m['median_hbo_variance'])} vs {fmt(k['median_hbo_variance'])}, non-finite "
            f"values {m['nonfinite_values']} vs {k['nonfinite_values']}, flat channels "
            f"{m['flat_channels']} vs {k['flat_channels']}")


def load_subject(inventory: Inventory, subject: str, *, eeg_rate_hz: int, fnirs_bins: int,
                 fnirs_types: tuple[int, ...], use_reservations: bool = False) -> SubjectData:
    """Loads and preprocesses one subject's 15 trials (see `Trial` for the layouts).

    The fNIRS channels kept are those of `signals.channel_rule`, the rule the code submission
    applies to hidden subjects; `use_reservations` also drops the channels that
    fNIRS_reservations.csv marks 0 (training data only: hidden subjects come without it).
    """
    start = time.perf_counter()
    paths = _subject_paths(inventory.root, subject)
    names = tuple(video_var(v) for v in VIDEOS)
    marks = inventory.fnirs_masks[subject]
    arrays = {f: read_mat(paths[f], names) for f in SIGNAL_FILES}
    fn_v, fn_b = arrays["fNIRS_videos.mat"], arrays["fNIRS_baselines.mat"]
    check = reservation_check(fn_v, fn_b, marks)
    logging.debug("MER-PS: %s fNIRS_reservations.csv check: %s", subject, _describe_check(check))
    if check["suspect"]:
        logging.warning(
            "MER-PS: %s: the fNIRS channels that %s marks 0 (bad) look cleaner than the ones "
            "marked 1 (kept): %s. With data.fnirs_reservations the builder drops channels marked "
            "0; if this release means the opposite, the 0/1 meaning is inverted (see the "
            "release's README.md)", subject, inventory.root / "fNIRS_reservations.csv",
            _describe_check(check))
    mask, dropped = signals.channel_rule(fn_v, fn_b, fnirs_types)
    if use_reservations:
        mask = mask & marks
    types = list(fnirs_types)
    junk = sum(int((~np.isfinite(x[n][types][:, ~mask])).sum()) for x in (fn_v, fn_b)
               for n in names)
    trials = {}
    for v in VIDEOS:
        eeg, fnirs = signals.preprocess_trial(
            paths, v, arrays, mask=mask, seconds=inventory.seconds(subject, v),
            source_eeg_rate=inventory.eeg_rate_hz, eeg_rate_hz=eeg_rate_hz,
            fnirs_bins=fnirs_bins, fnirs_types=fnirs_types)
        trials[v] = Trial(eeg=eeg, fnirs=fnirs, labels=inventory.labels[subject, v])
    # Debug level: 24 of these lines per build; `load_subjects` sums them up at INFO.
    logging.debug("MER-PS: %s loaded in %.1f s: %d trials, %d label seconds, %d bad fNIRS "
                  "channels %s zeroed (%d non-finite values in them); channel rule: %s", subject,
                  time.perf_counter() - start, len(trials),
                  sum(len(t.labels) for t in trials.values()), int((~mask).sum()),
                  np.flatnonzero(~mask).tolist(), junk, dropped)
    return SubjectData(name=subject, fnirs_mask=mask, trials=trials, reservation_check=check,
                       zeroed_nonfinite=junk, channel_rule=dropped)


def load_subjects(inventory: Inventory, **kwargs) -> dict[str, SubjectData]:
    """`load_subject` for every subject of the inventory, summed up in two INFO lines."""
    start = time.perf_counter()
    loaded = {s: load_subject(inventory, s, **kwargs) for s in inventory.subjects}
    data = loaded.values()
    logging.info(
        "MER-PS: loaded %d subjects in %.1f s: %d trials, %d label seconds, %d bad fNIRS channels "
        "zeroed (%d non-finite values in them)", len(loaded), time.perf_counter() - start,
        sum(len(d.trials) for d in data),
        sum(len(t.labels) for d in data for t in d.trials.values()),
        sum(int((~d.fnirs_mask).sum()) for d in data), sum(d.zeroed_nonfinite for d in data))
    checks = {s: d.reservation_check for s, d in loaded.items()}
    compared = [c for c in checks.values() if c["marked"]["channels"] and c["kept"]["channels"]]
    ratios = [c["marked"]["median_hbo_variance"] / c["kept"]["median_hbo_variance"]
              for c in compared
              if c["marked"]["median_hbo_variance"] is not None
              and c["kept"]["median_hbo_variance"]]

    def total(key: str) -> list[int]:
        return [sum(c[g][key] for c in checks.values()) for g in ("marked", "kept")]

    logging.info(
        "MER-PS: fNIRS_reservations.csv check (0 = marked bad, 1 = kept): %d of %d subjects have "
        "both kinds of channel, %d look inverted %s; median HbO variance marked/kept per "
        "subject: %s; non-finite values marked/kept %d/%d; flat channels marked/kept %d/%d "
        "(per subject: dataset metadata 'reservation_check')", len(compared), len(checks),
        sum(c["suspect"] for c in checks.values()),
        sorted(s for s, c in checks.items() if c["suspect"]),
        (f"min {min(ratios):.3g}, median {statistics.median(ratios):.3g}" if ratios else "n/a"),
        *total("nonfinite_values"), *total("flat_channels"))
    return loaded
