"""MER-PS signal preprocessing: from the four .mat files of a subject to model inputs.

One home for what the TFDS builder (release.py) and the code submission (merjax/serving.py,
run by the challenge on hidden subjects) both do, so the model meets the same numbers in
training and at test: reading MATLAB files, the trials' sampling rates, the fNIRS channel rule,
baseline correction, EEG resampling, fNIRS binning, context windows and the sample ids.

numpy, scipy and the standard library only (tfds_builders/common.py and features.py are the
same): a MER-PS submission zip carries these files verbatim and runs where only jax, numpy and
scipy are installed. The hidden-test folder has `sample_ids.csv` and `data/<subject>/*.mat`, no
labels and no side files, so nothing here reads either.
"""
from __future__ import annotations

import csv
import logging
import pathlib
import re
import statistics
import struct

import numpy as np
import scipy.io

from tfds_builders import features
from tfds_builders.common import ReleaseError

SIGNAL_FILES = ("EEG_baselines.mat", "EEG_videos.mat", "fNIRS_baselines.mat", "fNIRS_videos.mat")
FNIRS_TYPES = ("HbO", "HbR", "HbT", "Abs780", "Abs805", "Abs830")
NUM_VIDEOS = 15
VIDEOS = tuple(range(1, NUM_VIDEOS + 1))
EEG_CHANNELS = 64
FNIRS_CHANNELS = 51
BASELINE_S = 5
# Baselines are "5 s" but fNIRS has ~238.1 samples in them; a few percent covers rounding while
# still catching a baseline cut at the wrong rate.
BASELINE_TOLERANCE = 0.02
# A trial's fNIRS samples per label second may drift from the release's by this fraction.
FNIRS_RATE_TOLERANCE = 0.01
# The fNIRS channel rule (`channel_rule`): a channel is flat below this fraction of the median
# channel's within-trial variance (a lost or saturated optode) ...
FLAT_FRACTION = 1e-6
# ... and an outlier above this multiple of it (10x the median standard deviation: motion, a
# detached optode, a saturating square wave; physiological channels differ by far less).
OUTLIER_FACTOR = 100.0
# `<subject>_V<video>_T<second>`: the challenge's sample id; subject names may hold underscores.
_ID = re.compile(r"^(?P<subject>.+)_V(?P<video>\d{2})_T(?P<second>\d{3,})$")

log = logging.getLogger(__name__)


def video_var(video: int) -> str:
    return f"video_{video}"


def sample_id(subject: str, video: int, second: int) -> str:
    """The challenge's id, e.g. `test_1_V01_T000` (0-based second)."""
    return f"{subject}_V{video:02d}_T{second:03d}"


def parse_sample_id(value: str) -> tuple[str, int, int] | None:
    """(subject, video, second) of a sample id, or None when it is not one."""
    m = _ID.match(value)
    return (m["subject"], int(m["video"]), int(m["second"])) if m else None


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


def subject_files(root: pathlib.Path, subject: str) -> dict[str, pathlib.Path]:
    """The four signal files of `subject` under `<root>/data/<subject>/`."""
    return {name: pathlib.Path(root) / "data" / subject / name for name in SIGNAL_FILES}


def check_shape(path, name, shape, expected: tuple) -> None:
    """`expected` holds ints or None (any positive length)."""
    ok = len(shape) == len(expected) and all(
        (e is None and s > 0) or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "[" + ", ".join("T" if e is None else str(e) for e in expected) + "]"
        raise ReleaseError(f"{path}: variable '{name}': expected shape {want}, "
                           f"found {list(shape)}")


def signal_lengths(files: dict[str, pathlib.Path], shapes: dict[str, dict], video: int) -> dict:
    """The time lengths of one trial's four arrays, each checked for its channel layout.

    `shapes`: file name -> `mat_shapes` of that file. Returns file name -> samples.
    """
    name = video_var(video)
    lengths = {}
    for key in SIGNAL_FILES:
        shape = shapes[key][name]
        layout = ((EEG_CHANNELS, None) if key.startswith("EEG")
                  else (len(FNIRS_TYPES), FNIRS_CHANNELS, None))
        check_shape(files[key], name, shape, layout)
        lengths[key] = int(shape[-1])
    return lengths


def _check_length(path, name, found: int, expected: float, tolerance: float, what: str) -> None:
    if abs(found - expected) > max(1.0, tolerance * expected):
        raise ReleaseError(
            f"{path}: variable '{name}': expected about {expected:.1f} time samples ({what}, "
            f"tolerance {tolerance:.0%}), found {found}")


def derive_rates(trials: dict, files: dict, seconds_from: dict) -> tuple[float, float]:
    """(EEG, fNIRS) samples per label second, from every trial's array lengths, checked.

    `trials`: (subject, video) -> (`signal_lengths`, label seconds); `files`: subject -> its
    `subject_files`; `seconds_from`: (subject, video) -> where its seconds come from (the label
    file, or sample_ids.csv), for the messages. The median trial sets the rate, so one odd trial
    is named rather than averaged in. The card says 200 Hz EEG; the files hold 1 kHz, so rates
    are always read off the arrays.
    """
    eeg_rate = statistics.median(n["EEG_videos.mat"] / s for n, s in trials.values())
    fnirs_rate = statistics.median(n["fNIRS_videos.mat"] / s for n, s in trials.values())
    for (subject, video), (n, seconds) in trials.items():
        paths, name = files[subject], video_var(video)
        if abs(n["EEG_videos.mat"] - eeg_rate * seconds) >= 1:
            raise ReleaseError(
                f"{paths['EEG_videos.mat']}: variable '{name}': {n['EEG_videos.mat']} EEG samples "
                f"for {seconds} label seconds in {seconds_from[subject, video]} gives "
                f"{n['EEG_videos.mat'] / seconds:.3f} samples per second; expected the release's "
                f"{eeg_rate:.3f} (the EEG rate must be consistent across the release)")
        _check_length(paths["fNIRS_videos.mat"], name, n["fNIRS_videos.mat"],
                      fnirs_rate * seconds, FNIRS_RATE_TOLERANCE,
                      f"{seconds} label seconds at {fnirs_rate:.2f}/s")
        _check_length(paths["EEG_baselines.mat"], name, n["EEG_baselines.mat"],
                      BASELINE_S * eeg_rate, BASELINE_TOLERANCE,
                      f"{BASELINE_S} s at {eeg_rate:.1f}/s")
        _check_length(paths["fNIRS_baselines.mat"], name, n["fNIRS_baselines.mat"],
                      BASELINE_S * fnirs_rate, BASELINE_TOLERANCE,
                      f"{BASELINE_S} s at {fnirs_rate:.2f}/s")
    return float(eeg_rate), float(fnirs_rate)


# ----------------------------------------------------------------------------------------------
# The fNIRS channel rule

def within_trial_variance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variance over the finite samples of each row, finite counts), over the last axis.

    A row without finite samples has variance NaN. Computed by hand rather than with
    np.nanvar, which warns on such rows.
    """
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    count = finite.sum(axis=-1)
    n = np.maximum(count, 1)
    mean = np.where(finite, x, 0.0).sum(axis=-1, keepdims=True) / n[..., None]
    with np.errstate(over="ignore", invalid="ignore"):   # junk may square to inf: noisy anyway
        var = np.where(finite, (x - mean) ** 2, 0.0).sum(axis=-1) / n
    return np.where(count > 0, var, np.nan), count


def channel_rule(videos: dict[str, np.ndarray], baselines: dict[str, np.ndarray],
                 types: tuple[int, ...]) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Which fNIRS channels of one subject the model reads: [51] bool (True = kept), and the
    0-based channels dropped per reason.

    Computed from the signals alone, over the subject's trials (`videos`, `baselines`: variable
    -> [6, 51, T]) and the fNIRS types the model reads, so that it runs identically when the
    training data is built and on hidden test subjects, which come without
    `fNIRS_reservations.csv`. A channel is dropped when, in any of those types, it holds a
    non-finite value (video or baseline), is flat (within-trial variance, averaged over the
    trials, at most FLAT_FRACTION of the median channel's) or is an outlier (above
    OUTLIER_FACTOR times it).
    """
    types = list(types)
    nonfinite = np.zeros(FNIRS_CHANNELS, bool)
    per_trial = []
    for name, x in videos.items():
        for arr in (x, baselines[name]):
            nonfinite |= ~np.isfinite(np.asarray(arr)[types]).all(axis=(0, 2))
        var, count = within_trial_variance(np.asarray(x)[types])       # [types, 51]
        per_trial.append(np.where(count > 1, var, np.nan))
    stacked = np.stack(per_trial)                                       # [trials, types, 51]
    finite = np.isfinite(stacked)
    seen = finite.any(axis=0)
    variance = np.where(finite, stacked, 0.0).sum(0) / np.maximum(finite.sum(0), 1)
    flat = np.zeros(FNIRS_CHANNELS, bool)
    outlier = np.zeros(FNIRS_CHANNELS, bool)
    for k in range(len(types)):
        usable = seen[k] & ~nonfinite
        level = float(np.median(variance[k, usable])) if usable.any() else 0.0
        if level > 0:
            flat |= usable & (variance[k] <= FLAT_FRACTION * level)
            outlier |= usable & (variance[k] > OUTLIER_FACTOR * level)
        else:                               # no usable scale: only exactly constant is flat
            flat |= usable & (variance[k] == 0)
    # Finite values whose variance overflows (junk of ~1e155 and up) are outliers too.
    outlier |= np.isinf(stacked).any(axis=(0, 1)) & ~nonfinite
    reasons = {"nonfinite": nonfinite, "flat": flat & ~nonfinite,
               "outlier": outlier & ~flat & ~nonfinite}
    kept = ~(nonfinite | flat | outlier)
    return kept, {k: np.flatnonzero(v).tolist() for k, v in reasons.items()}


# ----------------------------------------------------------------------------------------------
# One trial, one example

def _require_finite(path, name, x: np.ndarray, what: str = "") -> None:
    bad = features.first_nonfinite(x)
    if bad is not None:
        raise ReleaseError(f"{path}: variable '{name}'{what}: expected finite values, found "
                           f"{x[bad]} at index {list(bad)}")


def preprocess_trial(files: dict[str, pathlib.Path], video: int, arrays: dict, *,
                     mask: np.ndarray, seconds: int, source_eeg_rate: float, eeg_rate_hz: int,
                     fnirs_bins: int, fnirs_types: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One trial -> (EEG [64, seconds * eeg_rate_hz], fNIRS [seconds, bins, types, 51]), float32.

    `arrays`: signal file name -> {variable: array}. EEG: baseline mean subtracted, resampled
    to `eeg_rate_hz`. fNIRS: the dropped channels (`mask` False) zeroed, then the baseline mean
    subtracted, then each second averaged into `fnirs_bins` bins.
    """
    name, types = video_var(video), list(fnirs_types)
    eeg_v, eeg_b = (arrays[k][name] for k in ("EEG_videos.mat", "EEG_baselines.mat"))
    _require_finite(files["EEG_videos.mat"], name, eeg_v)
    _require_finite(files["EEG_baselines.mat"], name, eeg_b)
    eeg = features.baseline_correct(eeg_v, eeg_b)
    eeg = features.resample(eeg, source_eeg_rate, eeg_rate_hz,
                            num_out=seconds * eeg_rate_hz).astype(np.float32)
    # Zeroed before the baseline step so that junk (even inf - inf) never turns into NaN.
    fv, fb = (np.where(mask[:, None], arrays[k][name][types], 0.0)
              for k in ("fNIRS_videos.mat", "fNIRS_baselines.mat"))
    fnirs = features.baseline_correct(fv, fb)
    try:
        binned = features.bin_seconds(fnirs, seconds, fnirs_bins)
    except ValueError as e:
        raise ReleaseError(f"{files['fNIRS_videos.mat']}: variable '{name}': {e}") from e
    return eeg, binned.astype(np.float32)


def example_inputs(eeg: np.ndarray, fnirs: np.ndarray, mask: np.ndarray, second: int, *,
                   context_s: int, eeg_rate_hz: int) -> dict[str, np.ndarray]:
    """The model inputs of one label second of a preprocessed trial (the prior aside)."""
    return {"eeg": features.eeg_context(eeg, second, context_s, eeg_rate_hz),
            "fnirs": features.fnirs_context(fnirs, second, context_s),
            "fnirs_mask": mask,
            "context_mask": features.context_mask(second, context_s)}


# ----------------------------------------------------------------------------------------------
# The hidden-test layout: sample_ids.csv + data/<subject>/*.mat, nothing else

def read_sample_ids(path: pathlib.Path) -> list[tuple[str, str, int, int]]:
    """`sample_ids.csv` -> [(id, subject, video, second)] in file order; every id checked."""
    rows, seen = [], {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if "sample_id" not in header:
                raise ReleaseError(f"{path}: header: expected a column 'sample_id', found "
                                   f"{header}")
            column = header.index("sample_id")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                value = row[column].strip() if column < len(row) else ""
                parsed = parse_sample_id(value)
                if parsed is None:
                    raise ReleaseError(f"{path}: line {line}: expected a sample id "
                                       f"<subject>_V<video, 2 digits>_T<second, 3 digits> "
                                       f"(e.g. test_1_V01_T000), found {value!r}")
                subject, video, second = parsed
                if video not in VIDEOS:
                    raise ReleaseError(f"{path}: line {line}: {value!r}: expected a video in "
                                       f"1..{NUM_VIDEOS}, found {video}")
                if value in seen:
                    raise ReleaseError(f"{path}: line {line}: sample id {value!r} already on "
                                       f"line {seen[value]}")
                seen[value] = line
                rows.append((value, subject, video, second))
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read the sample ids ({e})") from e
    if not rows:
        raise ReleaseError(f"{path}: no sample ids")
    return rows


def hidden_inventory(input_dir) -> tuple[list, dict, dict, float, float]:
    """Checks a hidden-test folder before any signal is loaded.

    Returns (the `read_sample_ids` rows, subject -> its `subject_files`, (subject, video) ->
    label seconds, EEG rate, fNIRS rate). A trial's length is one past the largest second its
    ids name, checked against its arrays' lengths with the same rules as a release's.
    """
    root = pathlib.Path(input_dir).absolute()
    ids_path = root / "sample_ids.csv"
    if not ids_path.is_file():
        raise ReleaseError(f"{ids_path}: missing; a MER-PS test folder holds sample_ids.csv "
                           f"and data/<subject>/{{{','.join(SIGNAL_FILES)}}}")
    rows = read_sample_ids(ids_path)
    seconds = {}
    for _, subject, video, second in rows:
        seconds[subject, video] = max(seconds.get((subject, video), 0), second + 1)
    files, trials = {}, {}
    for subject in sorted({s for s, _ in seconds}):
        files[subject] = subject_files(root, subject)
        for path in files[subject].values():
            if not path.is_file():
                raise ReleaseError(f"{path}: missing; {ids_path} names subject '{subject}'")
        shapes = {k: mat_shapes(p) for k, p in files[subject].items()}
        for video in sorted(v for s, v in seconds if s == subject):
            n = seconds[subject, video]
            for key, path in files[subject].items():
                if video_var(video) not in shapes[key]:
                    raise ReleaseError(f"{path}: variable '{video_var(video)}' missing; "
                                       f"{ids_path} names video {video} of '{subject}'")
            trials[subject, video] = (signal_lengths(files[subject], shapes, video), n)
    source = {k: ids_path for k in trials}
    eeg_rate, fnirs_rate = derive_rates(trials, files, source)
    return rows, files, seconds, eeg_rate, fnirs_rate


def hidden_trials(input_dir, *, eeg_rate_hz: int, context_s: int, fnirs_bins: int,
                  fnirs_types: tuple[int, ...]):
    """Yields, trial by trial, (ids, {input: [N, ...] array}, video, [N] seconds) for every id
    of `sample_ids.csv` (in file order within the trial), preprocessed as the builder
    preprocesses a release. One subject's signals and one trial's windows are in memory."""
    rows, files, seconds, eeg_rate, _ = hidden_inventory(input_dir)
    by_trial = {}  # (subject, video) -> [(id, second)] in file order
    for sample, subject, video, second in rows:
        by_trial.setdefault((subject, video), []).append((sample, second))
    for subject in sorted(files):
        videos = sorted(v for s, v in seconds if s == subject)
        names = tuple(video_var(v) for v in videos)
        arrays = {k: read_mat(p, names) for k, p in files[subject].items()}
        mask, dropped = channel_rule(arrays["fNIRS_videos.mat"], arrays["fNIRS_baselines.mat"],
                                     fnirs_types)
        if not mask.all():
            log.info("MER-PS: %s: fNIRS channels dropped by the channel rule: %s", subject,
                     {k: v for k, v in dropped.items() if v})
        for video in videos:
            eeg, fnirs = preprocess_trial(
                files[subject], video, arrays, mask=mask, seconds=seconds[subject, video],
                source_eeg_rate=eeg_rate, eeg_rate_hz=eeg_rate_hz, fnirs_bins=fnirs_bins,
                fnirs_types=fnirs_types)
            mine = by_trial[subject, video]
            windows = [example_inputs(eeg, fnirs, mask, t, context_s=context_s,
                                      eeg_rate_hz=eeg_rate_hz) for _, t in mine]
            yield ([i for i, _ in mine], {k: np.stack([w[k] for w in windows]) for k in windows[0]},
                   video, np.array([t for _, t in mine]))
