"""Reads and validates a MER-PS release root (`MER_PS_codabench_public_trainval/`).

Two passes, both before the builder writes anything:
  1. `check_release`: layout, side files, every .mat's variables and shapes (cheap header reads
     plus a structural walk that catches truncated files), labels in full, derived sampling rates.
  2. `load_subject`: signals in full, the fNIRS_reservations.csv plausibility check
     (`reservation_check`), finiteness, baseline correction, EEG resampling, fNIRS binning,
     bad-channel zeroing. The results stay in memory until the examples are written.
Layout and variables: the MER-PS dataset card and the official starting kit.
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib
import re
import statistics
import struct
import time

from absl import logging
import numpy as np
import scipy.io

from tfds_builders import features
from tfds_builders.common import ReleaseError, check_kind

DEMO_MARKER = "MERJAX_DEMO_RELEASE"
# Side files the builder reads, with what it reads them for: each one must be present.
REQUIRED_SIDE_FILES = {
    "fNIRS_reservations.csv": "the per-subject fNIRS channel mask",
    "Targeted_emotions.txt": "the videos' emotion codes, recorded in the dataset metadata",
}
# Side files of the release that the builder never reads: a missing one is logged, not fatal
# (they are absent from some copies, e.g. the public leaderboard evaluation data).
OPTIONAL_SIDE_FILES = ("README.md", "Metadata.csv", "SAM_score.csv", "PANAS_score.csv",
                       "fNIRS_coordinates.csv")
SIDE_FILES = tuple(REQUIRED_SIDE_FILES) + OPTIONAL_SIDE_FILES
SIGNAL_FILES = ("EEG_baselines.mat", "EEG_videos.mat", "fNIRS_baselines.mat", "fNIRS_videos.mat")
FNIRS_TYPES = ("HbO", "HbR", "HbT", "Abs780", "Abs805", "Abs830")
NUM_VIDEOS = 15
VIDEOS = tuple(range(1, NUM_VIDEOS + 1))
EEG_CHANNELS = 64
FNIRS_CHANNELS = 51
BASELINE_S = 5
LABEL_ROWS = ("valence", "arousal")
# Baselines are "5 s" but fNIRS has ~238.1 samples in them; a few percent covers rounding while
# still catching a baseline cut at the wrong rate.
_BASELINE_TOLERANCE = 0.02
# A trial's fNIRS samples per label second may drift from the release's by this fraction.
_FNIRS_RATE_TOLERANCE = 0.01
MANUAL_DIR_HINT = (
    "Pass it with --config.data.manual_dir=/path/to/MER_PS_codabench_public_trainval (the "
    "unzipped MER-PS-trainval release); without a manual_dir the build uses the generated demo "
    "release instead.")


def video_var(video: int) -> str:
    return f"video_{video}"


@dataclasses.dataclass(frozen=True)
class Inventory:
    """What `check_release` established about a release; no signal data yet."""
    root: pathlib.Path
    kind: str                                   # 'demo' or 'real'
    subjects: tuple[str, ...]
    labels: dict[tuple[str, int], np.ndarray]   # (subject, video) -> [T, 2] float32, raw scale
    eeg_rate_hz: float                          # EEG samples per label second (derived)
    fnirs_rate_hz: float                        # fNIRS samples per label second (derived)
    fnirs_masks: dict[str, np.ndarray]          # subject -> [51] bool, True = channel kept
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


# ----------------------------------------------------------------------------------------------
# MATLAB files

def mat_version(path: pathlib.Path) -> int:
    """4, 5 or 73 (HDF5-based v7.3); ReleaseError for anything scipy cannot identify."""
    try:
        major, _ = scipy.io.matlab.matfile_version(str(path))
    except Exception as e:  # scipy raises IndexError/ValueError/TypeError for junk headers
        raise ReleaseError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from e
    return {0: 4, 1: 5, 2: 73}[major]


def _v5_walk_end(path: pathlib.Path) -> tuple[int, int]:
    """(end of the last top-level element as its tags claim, file size) of a v5 file.

    `whosmat` only reads variable headers, so a file cut inside its last variable still lists
    every variable; the tags' byte counts tell the truth.
    """
    with open(path, "rb") as f:
        head = f.read(128)
        size = f.seek(0, 2)
        order = "<" if head[126:128] == b"IM" else ">"
        pos = 128
        while pos + 8 <= size:
            f.seek(pos)
            mdtype, nbytes = struct.unpack(order + "II", f.read(8))
            # Small data element: type and size share the first word, data fits the tag.
            pos += 8 if mdtype >> 16 else 8 + nbytes
    return pos, size


def mat_shapes(path: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """Variable name -> shape (MATLAB order), without reading the data."""
    version = mat_version(path)
    try:
        if version == 73:
            import h5py  # only v7.3 files need it
            with h5py.File(path, "r") as f:
                # HDF5 stores MATLAB's column-major arrays with the axes reversed.
                return {k: tuple(reversed(v.shape)) for k, v in f.items()
                        if not k.startswith("#") and hasattr(v, "shape")}
        if version == 5:
            end, size = _v5_walk_end(path)
            if end > size:
                raise ReleaseError(
                    f"{path}: truncated MATLAB v5 file: its variables need {end} bytes, "
                    f"found {size}")
        return {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(str(path))}
    except ReleaseError:
        raise
    except Exception as e:
        raise ReleaseError(f"{path}: cannot read the MATLAB v{version} variable table "
                           f"({type(e).__name__}: {e})") from e


def read_mat(path: pathlib.Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Loads the named numeric variables (float64 or their stored numeric dtype)."""
    version = mat_version(path)
    try:
        if version == 73:
            import h5py
            with h5py.File(path, "r") as f:
                out = {n: np.asarray(f[n][()]).T for n in names if n in f}
        else:
            out = scipy.io.loadmat(str(path), variable_names=list(names))
    except Exception as e:
        raise ReleaseError(f"{path}: cannot load ({type(e).__name__}: {e})") from e
    result = {}
    for name in names:
        if name not in out:
            raise ReleaseError(f"{path}: variable '{name}' missing")
        arr = out[name]
        if not (isinstance(arr, np.ndarray) and np.issubdtype(arr.dtype, np.number)):
            raise ReleaseError(f"{path}: variable '{name}': expected a numeric array, "
                               f"found {type(arr).__name__} {getattr(arr, 'dtype', '')}")
        result[name] = arr
    return result


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
    paths = {name: root / "data" / subject / name for name in SIGNAL_FILES}
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


def _check_shape(path, name, shape, expected: tuple) -> None:
    """`expected` holds ints or None (any positive length)."""
    ok = len(shape) == len(expected) and all(
        (e is None and s > 0) or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "[" + ", ".join("T" if e is None else str(e) for e in expected) + "]"
        raise ReleaseError(f"{path}: variable '{name}': expected shape {want}, "
                           f"found {list(shape)}")


def _check_labels(path, name, labels: np.ndarray) -> np.ndarray:
    """[2, T] integer-valued labels in [1, 255] -> [T, 2] float32."""
    _check_shape(path, name, labels.shape, (2, None))
    labels = np.asarray(labels, np.float64)
    bad = ~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 1) | (labels > 255)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise ReleaseError(f"{path}: variable '{name}' row {r} ({LABEL_ROWS[r]}) column {c}: "
                           f"expected a finite integer in [1, 255], found {float(labels[r, c])}")
    return labels.T.astype(np.float32)


def _check_length(path, name, found: int, expected: float, tolerance: float, what: str) -> None:
    if abs(found - expected) > max(1.0, tolerance * expected):
        raise ReleaseError(
            f"{path}: variable '{name}': expected about {expected:.1f} time samples ({what}, "
            f"tolerance {tolerance:.0%}), found {found}")


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

    labels, eeg_len, fnirs_len, shapes = {}, {}, {}, {}
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
        for key, path in paths.items():
            found = mat_shapes(path)
            missing = [video_var(v) for v in VIDEOS if video_var(v) not in found]
            if missing:
                raise ReleaseError(f"{path}: expected variables video_1..video_{NUM_VIDEOS}, "
                                   f"missing {missing}")
            shapes[subject, key] = found
        raw = read_mat(paths["label"], tuple(video_var(v) for v in VIDEOS))
        for v in VIDEOS:
            name = video_var(v)
            labels[subject, v] = _check_labels(paths["label"], name, raw[name])
            s = {k: shapes[subject, k][name] for k in SIGNAL_FILES}
            _check_shape(paths["EEG_videos.mat"], name, s["EEG_videos.mat"], (EEG_CHANNELS, None))
            _check_shape(paths["EEG_baselines.mat"], name, s["EEG_baselines.mat"],
                         (EEG_CHANNELS, None))
            for k in ("fNIRS_videos.mat", "fNIRS_baselines.mat"):
                _check_shape(paths[k], name, s[k], (len(FNIRS_TYPES), FNIRS_CHANNELS, None))
            eeg_len[subject, v] = s["EEG_videos.mat"][1]
            fnirs_len[subject, v] = s["fNIRS_videos.mat"][2]

    # The median trial sets the release's rate, so one odd trial is named rather than averaged in.
    eeg_rate = statistics.median(eeg_len[k] / len(labels[k]) for k in labels)
    fnirs_rate = statistics.median(fnirs_len[k] / len(labels[k]) for k in labels)
    for (subject, v), seconds in ((k, len(x)) for k, x in labels.items()):
        paths, name = _subject_paths(root, subject), video_var(v)
        if abs(eeg_len[subject, v] - eeg_rate * seconds) >= 1:
            raise ReleaseError(
                f"{paths['EEG_videos.mat']}: variable '{name}': {eeg_len[subject, v]} EEG samples "
                f"for {seconds} label seconds in {paths['label']} gives "
                f"{eeg_len[subject, v] / seconds:.3f} samples per second; expected the release's "
                f"{eeg_rate:.3f} (the EEG rate must be consistent across the release)")
        _check_length(paths["fNIRS_videos.mat"], name, fnirs_len[subject, v], fnirs_rate * seconds,
                      _FNIRS_RATE_TOLERANCE, f"{seconds} label seconds at {fnirs_rate:.2f}/s")
        _check_length(paths["EEG_baselines.mat"], name,
                      shapes[subject, "EEG_baselines.mat"][name][1], BASELINE_S * eeg_rate,
                      _BASELINE_TOLERANCE, f"{BASELINE_S} s at {eeg_rate:.1f}/s")
        _check_length(paths["fNIRS_baselines.mat"], name,
                      shapes[subject, "fNIRS_baselines.mat"][name][2], BASELINE_S * fnirs_rate,
                      _BASELINE_TOLERANCE, f"{BASELINE_S} s at {fnirs_rate:.2f}/s")
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

def _require_finite(path, name, x: np.ndarray, what: str = "") -> None:
    bad = features.first_nonfinite(x)
    if bad is not None:
        raise ReleaseError(f"{path}: variable '{name}'{what}: expected finite values, found "
                           f"{x[bad]} at index {list(bad)}")


# A channel whose variance is below this fraction of the median channel's is flat (a lost or
# saturated signal): bad, not clean, so it is counted apart rather than lowering a median.
_FLAT_FRACTION = 1e-6
# The 0-marked channels "look cleaner" when their median variance is below the kept channels'
# by more than this factor: real bad channels are noisier than good ones, not quieter.
_CLEANER_FACTOR = 3.0


def _within_trial_variance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([channels] variance over the finite samples of each row, [channels] finite counts).

    A row without finite samples has variance NaN. Computed by hand rather than with
    np.nanvar, which warns on such rows.
    """
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    count = finite.sum(axis=-1)
    n = np.maximum(count, 1)
    mean = np.where(finite, x, 0.0).sum(axis=-1) / n
    with np.errstate(over="ignore", invalid="ignore"):   # junk may square to inf: noisy anyway
        var = np.where(finite, (x - mean[:, None]) ** 2, 0.0).sum(axis=-1) / n
    return np.where(count > 0, var, np.nan), count


def reservation_check(videos: dict[str, np.ndarray], baselines: dict[str, np.ndarray],
                      mask: np.ndarray) -> dict:
    """How the 0-marked fNIRS channels compare with the kept (1) ones, from the raw files.

    `fNIRS_reservations.csv`'s "1 = keep" is an inference (no source documents it); an
    inverted file would zero the good channels and feed the junk to the model without any
    error, so the signals are asked. Per channel: the HbO variance within each trial (the
    baseline-corrected signal has the same variance: the correction subtracts a per-channel
    constant), averaged over the trials; the NaN/Inf values in all six types of video and
    baseline; flat channels (variance below _FLAT_FRACTION of the median channel's). Per group
    (`marked` = 0, `kept` = 1): channel count, median variance of the channels that are not
    flat (None without any), non-finite values, channels holding any, flat channels.
    `suspect` is set when the marked channels look cleaner: their median variance is below the
    kept one / _CLEANER_FACTOR, or most kept channels hold non-finite values, or most are flat,
    and a larger share than of the marked ones ("most", so that a stray NaN in one good channel
    does not raise the alarm; an inverted file keeps the few bad channels, most of them junk).
    """
    per_trial, nonfinite = [], np.zeros(FNIRS_CHANNELS, np.int64)
    for name, x in videos.items():
        var, count = _within_trial_variance(x[0])
        per_trial.append(np.where(count > 1, var, np.nan))
        for arr in (x, baselines[name]):
            nonfinite += (~np.isfinite(arr)).sum(axis=(0, 2))
    per_trial = np.stack(per_trial)
    seen = np.isfinite(per_trial).any(axis=0)
    variance = np.full(FNIRS_CHANNELS, np.nan)
    variance[seen] = np.nanmean(per_trial[:, seen], axis=0)
    level = np.nanmedian(variance) if seen.any() else np.nan
    if np.isfinite(level) and level > 0:
        flat = seen & (variance <= _FLAT_FRACTION * level)
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
                 fnirs_types: tuple[int, ...]) -> SubjectData:
    """Loads and preprocesses one subject's 15 trials (see `Trial` for the layouts)."""
    start = time.perf_counter()
    paths = _subject_paths(inventory.root, subject)
    names = tuple(video_var(v) for v in VIDEOS)
    mask = inventory.fnirs_masks[subject]
    types = list(fnirs_types)
    trials, junk = {}, 0
    eeg_v, eeg_b, fn_v, fn_b = (read_mat(paths[f], names) for f in (
        "EEG_videos.mat", "EEG_baselines.mat", "fNIRS_videos.mat", "fNIRS_baselines.mat"))
    # Before the finiteness checks: if the mask is inverted, the warning comes before the error
    # that the junk in a "kept" channel then raises.
    check = reservation_check(fn_v, fn_b, mask)
    logging.debug("MER-PS: %s fNIRS_reservations.csv check: %s", subject, _describe_check(check))
    if check["suspect"]:
        logging.warning(
            "MER-PS: %s: the fNIRS channels that %s marks 0 (bad) look cleaner than the ones "
            "marked 1 (kept): %s. The builder keeps channels marked 1; if this release means the "
            "opposite, the 0/1 meaning is inverted and the model gets the bad channels (see the "
            "release's README.md)", subject, inventory.root / "fNIRS_reservations.csv",
            _describe_check(check))
    for v, name in zip(VIDEOS, names):
        seconds = inventory.seconds(subject, v)
        _require_finite(paths["EEG_videos.mat"], name, eeg_v[name])
        _require_finite(paths["EEG_baselines.mat"], name, eeg_b[name])
        eeg = features.baseline_correct(eeg_v[name], eeg_b[name])
        eeg = features.resample(eeg, inventory.eeg_rate_hz, eeg_rate_hz,
                                num_out=seconds * eeg_rate_hz).astype(np.float32)
        # Only used values must be finite: bad channels are zeroed anyway (junk is expected
        # there) and unselected types are dropped.
        used = np.zeros((len(FNIRS_TYPES), FNIRS_CHANNELS, 1), bool)
        used[types] = mask[:, None]
        for key in ("fNIRS_videos.mat", "fNIRS_baselines.mat"):
            x = (fn_v if key == "fNIRS_videos.mat" else fn_b)[name]
            _require_finite(paths[key], name, np.where(used, x, 0.0),
                            f" (types {types}, kept channels)")
            junk += int((~np.isfinite(x[types][:, ~mask])).sum())
        # Zeroed before the baseline step so that junk (even inf - inf) never turns into NaN.
        fv, fb = (np.where(mask[:, None], x[name][types], 0.0) for x in (fn_v, fn_b))
        fnirs = features.baseline_correct(fv, fb)
        try:
            binned = features.bin_seconds(fnirs, seconds, fnirs_bins)
        except ValueError as e:
            raise ReleaseError(f"{paths['fNIRS_videos.mat']}: variable '{name}': {e}") from e
        trials[v] = Trial(eeg=eeg, fnirs=binned.astype(np.float32),
                          labels=inventory.labels[subject, v])
    # Debug level: 24 of these lines per build; `load_subjects` sums them up at INFO.
    logging.debug("MER-PS: %s loaded in %.1f s: %d trials, %d label seconds, %d bad fNIRS "
                  "channels %s zeroed (%d non-finite values in them)", subject,
                  time.perf_counter() - start, len(trials),
                  sum(len(t.labels) for t in trials.values()), int((~mask).sum()),
                  np.flatnonzero(~mask).tolist(), junk)
    return SubjectData(name=subject, fnirs_mask=mask, trials=trials, reservation_check=check,
                       zeroed_nonfinite=junk)


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
