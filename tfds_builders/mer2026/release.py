"""Locate and read the shared MER2026 release (``mer2026-dataset/``) of tracks 1-3.

Media may sit in the flat extracted layout (``audio/<name>.wav``,
``openface_face/<name>/<name>.npy``) or in the nested per-subset folders that the HF
archives extract to (``audio/audio_track2_train_human/audio/<name>.wav``); any depth under the
modality folder is accepted. Each modality folder is walked once into a name -> path index, so
looking up 100k names costs one directory walk rather than 100k globs.

MERTools feature folders (``<features_root>/<feature_dir>/<name>.npy`` or ``<name>/`` of
per-frame npys) are read with ``allow_pickle=False`` throughout: the files come from outside.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf

from . import csvs
from tfds_builders.common import walk_files
from .csvs import ReleaseError
from .demo import DEMO_MARKER

__all__ = [
    "ReleaseError", "SAMPLE_RATE", "FACE_SHAPE", "MODALITIES", "Mer2026Release", "locate_release",
    "index_media", "index_features", "read_wav", "read_openface", "sample_faces", "read_feature",
    "check_feature_dims", "feature_frames",
]

SAMPLE_RATE = 16000  # MERTools feature extractors assert sr == 16000.
FACE_SHAPE = (112, 112, 3)  # OpenFace aligned crops as compressed by MERTools.
# Modality folder -> file suffix. openface files must also sit in a folder named like the file.
MODALITIES: dict[str, str] = {"audio": ".wav", "video": ".mp4", "openface_face": ".npy"}
# Pseudo-modality for find_missing: a row in subtitle_chieng.csv.
SUBTITLE = "subtitle"
_SHOW = 5  # how many names an error lists before giving only the count

_CSV_KEYS = {
    "subtitles": "subtitle_chieng.csv",
    "track1_train": "track1_train.csv",
    "track1_track2_candidates": "track1_track2_candidate.csv",
    "track2_human": "track2_train_human.csv",
    "track2_mercaptionplus": "track2_train_mercaptionplus.csv",
    "track3_emoprefer": "track3_emoprefer.csv",
    "track3_emopreferv2": "track3_emopreferv2.csv",
    "track3_candidates": "track3_candidate.csv",
}


# --------------------------------------------------------------------------------------------
# Locating and indexing


def locate_release(path) -> Path:
    """Return the release root: ``path`` itself, or ``path/mer2026-dataset`` when that holds it.

    A root is a folder containing at least one of the release CSVs or modality folders.
    """
    path = Path(path).expanduser()
    wanted = list(csvs.SCHEMAS) + list(MODALITIES)
    for cand in (path, path / "mer2026-dataset"):
        if cand.is_dir() and any((cand / w).exists() for w in wanted):
            return cand.resolve()
    raise ReleaseError(
        f"{path}: expected a MER2026 release root (or a folder holding mer2026-dataset/) "
        f"with any of {wanted}, found none")


def _same_bytes(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    digests = []
    for p in (a, b):
        h = hashlib.blake2b()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests.append(h.digest())
    return digests[0] == digests[1]


def index_media(folder, modality: str, *, duplicates: str = "error") -> dict[str, Path]:
    """Walk one modality folder once and return ``{name: file}``.

    ``duplicates='error'`` (default) raises when a name is found at two paths, naming both;
    ``'identical'`` accepts a second copy whose bytes equal the first (overlapping subset
    archives, e.g. names in both track-2 train files, may each carry the same clip).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    if duplicates not in ("error", "identical"):
        raise ValueError(f"duplicates must be 'error' or 'identical', got {duplicates!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(
            f"{folder}: expected the {modality} folder of the release, found no directory")
    suffix = MODALITIES[modality]
    index: dict[str, str] = {}
    for e in walk_files(folder):
        if not e.name.endswith(suffix):
            continue
        name = e.name[: -len(suffix)]
        # openface stores <name>/<name>.npy; other npys (none expected) must not shadow samples.
        if modality == "openface_face" and os.path.basename(os.path.dirname(e.path)) != name:
            continue
        if name in index and index[name] != e.path:
            if duplicates == "identical" and _same_bytes(index[name], e.path):
                continue
            raise ReleaseError(
                f"{folder}: expected each {modality} sample once, found {name!r} at two paths: "
                f"{index[name]} and {e.path}")
        index[name] = e.path
    return {k: Path(v) for k, v in index.items()}


def index_features(folder) -> dict[str, Path]:
    """Index a MERTools feature folder: ``<name>.npy`` files and ``<name>/`` frame folders.

    When both exist for one name the file wins, as in MERTools' ``func_read_one_feat``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder}: expected a feature folder, found no directory")
    files: dict[str, Path] = {}
    dirs: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_file() and e.name.endswith(".npy"):
                files[e.name[:-4]] = Path(e.path)
            elif e.is_dir():
                dirs[e.name] = Path(e.path)
    return {**dirs, **files}


# --------------------------------------------------------------------------------------------
# Media readers


def read_wav(path, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a wav as float32 mono ``[N]``; anything but ``sample_rate`` Hz mono is an error."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"{path}: expected a {sample_rate} Hz mono wav, found no file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        raise ReleaseError(f"{path}: expected a readable {sample_rate} Hz mono wav, found a "
                           f"corrupt or unsupported file ({e})") from e
    if sr != sample_rate or data.shape[1] != 1:
        raise ReleaseError(f"{path}: expected {sample_rate} Hz mono, found {sr} Hz with "
                           f"{data.shape[1]} channel(s)")
    return np.ascontiguousarray(data[:, 0])


def _load_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(str(path), allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise ReleaseError(f"{path}: expected {what} in .npy format, found a corrupt or "
                           f"unreadable file ({e})") from e


def sample_faces(num_frames: int, k: int) -> np.ndarray:
    """Pick ``k`` frame indices spread uniformly over ``num_frames`` (deterministic).

    The indices are the centres of ``k`` equal segments, so for ``num_frames < k`` frames
    repeat in order. ``num_frames`` may also be a frames array (its length is used).
    """
    t = num_frames if isinstance(num_frames, (int, np.integer)) else len(num_frames)
    if t <= 0:
        raise ValueError("sample_faces: expected at least one frame, found 0")
    if k <= 0:
        raise ValueError(f"sample_faces: expected k >= 1, found {k}")
    idx = np.floor((np.arange(k) + 0.5) * t / k).astype(np.int64)
    return np.minimum(idx, t - 1)


def read_openface(path, *, num_frames: int | None = None) -> np.ndarray:
    """Read an OpenFace npy as uint8 ``[T, 112, 112, 3]`` in RGB (the files are BGR).

    With ``num_frames`` only ``sample_faces(T, num_frames)`` frames are read (memory-mapped),
    giving ``[num_frames, 112, 112, 3]``; T may be 0 only when ``num_frames`` is None.
    """
    path = Path(path)
    what = f"uint8 faces [T, {', '.join(map(str, FACE_SHAPE))}] (BGR)"
    if not path.is_file():
        raise ReleaseError(f"{path}: expected {what}, found no file")
    arr = _load_npy(path, what, mmap=num_frames is not None)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != FACE_SHAPE:
        raise ReleaseError(f"{path}: expected {what}, found dtype {arr.dtype} shape {arr.shape}")
    if num_frames is not None:
        if arr.shape[0] == 0:
            raise ReleaseError(f"{path}: expected at least one face frame to sample, found T=0")
        arr = arr[sample_faces(arr.shape[0], num_frames)]
    return np.ascontiguousarray(arr[..., ::-1])  # BGR -> RGB, as MERTools' cv2.COLOR_BGR2RGB


def _as_features(arr: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.floating):
        raise ReleaseError(
            f"{path}: expected a floating-point feature array, found dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32).squeeze()
    if arr.ndim == 1:
        arr = arr[None, :]  # MERTools: a 1-D feature becomes one frame
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ReleaseError(f"{path}: expected feature shape (D,) or (T, D) after squeeze, "
                           f"found {arr.shape}")
    return arr


def _frame_files(folder: Path) -> list[Path]:
    # MERTools stacks os.listdir in plain sorted() order; keep that order, whatever the names.
    files = sorted(p for p in folder.iterdir() if p.suffix == ".npy" and not p.name.startswith("."))
    if not files:
        raise ReleaseError(f"{folder}: expected per-frame .npy files in this feature folder, "
                           f"found none")
    return files


def read_feature(path, *, level: str = "frame") -> np.ndarray:
    """Read one MERTools feature (a ``<name>.npy`` file or ``<name>/`` of per-frame npys).

    ``level='frame'`` gives float32 ``(T, D)`` (a ``(D,)`` file becomes ``(1, D)``);
    ``level='utt'`` gives ``(D,)``, the mean over time as in MERTools' ``feat_type='utt'``.
    """
    if level not in ("frame", "utt"):
        raise ValueError(f"level must be 'frame' or 'utt', got {level!r}")
    path = Path(path)
    if path.is_dir():
        frames = _frame_files(path)
        parts = [_as_features(_load_npy(p, "a feature array"), p) for p in frames]
        dims = {p.shape[1] for p in parts}
        if len(dims) != 1:
            raise ReleaseError(f"{path}: expected one feature dimension across its frame files, "
                               f"found {sorted(dims)}")
        arr = np.concatenate(parts, axis=0)
    elif path.is_file():
        arr = _as_features(_load_npy(path, "a feature array"), path)
    else:
        raise ReleaseError(
            f"{path}: expected a feature file <name>.npy or folder <name>/, found neither")
    return arr.mean(axis=0) if level == "utt" else arr


def _header(path: Path) -> np.ndarray:
    """The array of one npy, memory-mapped: its shape and dtype without reading the data."""
    return _load_npy(path, "a feature array", mmap=True)


def feature_frames(path) -> int:
    """Frames T of a feature entry from npy headers only; 0 means an empty feature.

    A file holds T frames of shape ``(T, D)`` (``(D,)`` is one frame); an array with no
    elements, e.g. ``(0, D)``, holds none. A ``<name>/`` folder holds the frames of its files,
    none when it has no frame file. MERTools would average an empty feature to NaN, so callers
    treat T = 0 as a missing input.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix == ".npy" and not p.name.startswith("."))
        return sum(feature_frames(p) for p in files)
    arr = _header(path)
    if arr.size == 0:
        return 0
    shape = tuple(s for s in arr.shape if s != 1)
    return 1 if len(shape) <= 1 else int(np.prod(shape[:-1]))


def _feature_dim(path: Path) -> int | None:
    """D of one feature entry, reading only npy headers; None for an empty one (no frames)."""
    if feature_frames(path) == 0:
        return None
    files = _frame_files(path) if path.is_dir() else [path]
    file, arr = next((f, a) for f, a in ((f, _header(f)) for f in files) if a.size)
    shape = tuple(s for s in arr.shape if s != 1)
    if not np.issubdtype(arr.dtype, np.floating) or len(shape) not in (1, 2):
        raise ReleaseError(f"{file}: expected a floating-point (D,) or (T, D) array, "
                           f"found dtype {arr.dtype} shape {arr.shape}")
    return shape[-1]


def check_feature_dims(folder, names: Iterable[str] | None = None) -> int:
    """Check every entry of a feature folder (or just ``names``) has one D and return it.

    The folder's D is the most common one, so the error names the outlier files, not the
    first file read. Empty entries (no frames, see ``feature_frames``) are left out.
    """
    folder = Path(folder)
    index = index_features(folder)
    if names is not None:
        missing = [n for n in names if n not in index]
        if missing:
            raise ReleaseError(f"{folder}: expected features for every requested name, found "
                               f"{len(missing)} missing, e.g. {missing[:_SHOW]}")
        index = {n: index[n] for n in names}
    if not index:
        raise ReleaseError(f"{folder}: expected feature files, found an empty folder")
    # Empty entries (T = 0) have no D to compare: they are missing inputs, which the caller
    # reports (feature_frames); the folder's D comes from the others.
    dims = {n: d for n, d in ((n, _feature_dim(p)) for n, p in sorted(index.items()))
            if d is not None}
    if not dims:
        raise ReleaseError(f"{folder}: expected feature files with at least one frame, found "
                           f"only empty ones ({len(index)}, e.g. {next(iter(index.values()))})")
    values, counts = np.unique(list(dims.values()), return_counts=True)
    d = int(values[np.argmax(counts)])
    bad = [(n, k) for n, k in dims.items() if k != d]
    if bad:
        shown = "; ".join(f"{index[n]} has D={k}" for n, k in bad[:_SHOW])
        raise ReleaseError(f"{folder}: expected every feature file to have the folder's D={d} "
                           f"({int(counts.max())} of {len(dims)} files), found {len(bad)} "
                           f"outlier(s): {shown}")
    return d


# --------------------------------------------------------------------------------------------
# The release


class Mer2026Release:
    """Read access to one release root: CSVs, media indexes, media and feature files.

    ``features_root`` defaults to ``<root>/features`` (MERTools writes its features under a
    separate processing folder; pass that instead when it lives elsewhere). Parsed CSVs and
    indexes are cached on the instance: the release is read-only.
    """

    def __init__(self, root, *, features_root=None, duplicates: str = "error"):
        if duplicates not in ("error", "identical"):
            raise ValueError(f"duplicates must be 'error' or 'identical', got {duplicates!r}")
        self.root = locate_release(root)
        self.features_root = (Path(features_root) if features_root is not None
                              else self.root / "features")
        self.duplicates = duplicates
        self._cache: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"Mer2026Release({str(self.root)!r})"

    @property
    def is_demo(self) -> bool:
        """True for a release written by ``demo.write_demo_release`` (it has the marker file)."""
        return (self.root / DEMO_MARKER).is_file()

    def _cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # ---- CSVs
    def csv_path(self, key: str) -> Path:
        """Path of a release CSV by key (``subtitles``, ``track1_train``, ... see _CSV_KEYS)."""
        return self.root / _CSV_KEYS[key]

    def subtitles(self) -> dict[str, csvs.Subtitle]:
        """``{name: Subtitle}`` of ``subtitle_chieng.csv`` (empty text is ``""``)."""
        return self._cached("subtitles", lambda: csvs.read_subtitles(self.csv_path("subtitles")))

    def track1_train(self) -> tuple[csvs.Track1Row, ...]:
        """Rows of ``track1_train.csv``."""
        return self._cached("t1", lambda: csvs.read_track1_labels(self.csv_path("track1_train")))

    def track1_track2_candidates(self) -> tuple[str, ...]:
        """Names of ``track1_track2_candidate.csv`` in file order (submission order)."""
        path = self.csv_path("track1_track2_candidates")
        return self._cached("cand", lambda: csvs.read_names(path))

    def track2_train(self, source: str = "human") -> tuple[csvs.Track2Row, ...]:
        """Rows of ``track2_train_human.csv`` (``source='human'``) or ``..._mercaptionplus.csv``."""
        key = {"human": "track2_human", "mercaptionplus": "track2_mercaptionplus"}[source]
        return self._cached(key, lambda: csvs.read_track2_openset(self.csv_path(key)))

    def track3_train(self, version: str = "emoprefer") -> tuple[csvs.PreferenceRow, ...]:
        """Rows of ``track3_emoprefer.csv`` or ``track3_emopreferv2.csv`` (``version``)."""
        key = {"emoprefer": "track3_emoprefer", "emopreferv2": "track3_emopreferv2"}[version]
        return self._cached(key, lambda: csvs.read_track3_preferences(self.csv_path(key)))

    def track3_candidates(self) -> tuple[csvs.Track3CandidateRow, ...]:
        """Rows of ``track3_candidate.csv`` by row index; repeated names are kept."""
        path = self.csv_path("track3_candidates")
        return self._cached("t3c", lambda: csvs.read_track3_candidates(path))

    # ---- media
    def media_dir(self, modality: str) -> Path:
        return self.root / modality

    def media_index(self, modality: str) -> dict[str, Path]:
        """``{name: path}`` for ``audio``, ``video`` or ``openface_face`` (walked once, cached)."""
        return self._cached(("media", modality), lambda: index_media(
            self.media_dir(modality), modality, duplicates=self.duplicates))

    def media_path(self, modality: str, name: str) -> Path:
        index = self.media_index(modality)
        if name not in index:
            raise ReleaseError(f"{self.media_dir(modality)}: expected <name>{MODALITIES[modality]} "
                               f"for {name!r} at any depth under this folder, found none")
        return index[name]

    def read_audio(self, name: str) -> np.ndarray:
        """float32 mono 16 kHz waveform of ``name``."""
        return read_wav(self.media_path("audio", name))

    def read_faces(self, name: str, num_frames: int | None = None) -> np.ndarray:
        """RGB uint8 faces ``[T, 112, 112, 3]`` of ``name`` (or ``num_frames`` sampled ones)."""
        return read_openface(self.media_path("openface_face", name), num_frames=num_frames)

    # ---- features
    def feature_index(self, feature_dir: str) -> dict[str, Path]:
        folder = self.features_root / feature_dir
        return self._cached(("feat", feature_dir), lambda: index_features(folder))

    def read_feature(self, feature_dir: str, name: str, *, level: str = "frame") -> np.ndarray:
        """Feature ``feature_dir`` of ``name`` as ``(T, D)`` or, with ``level='utt'``, ``(D,)``."""
        index = self.feature_index(feature_dir)
        if name not in index:
            raise ReleaseError(f"{self.features_root / feature_dir}: expected {name}.npy or "
                               f"{name}/, found neither")
        return read_feature(index[name], level=level)

    def check_feature_dims(self, feature_dir: str, names: Iterable[str] | None = None) -> int:
        """Folder-level D check of ``feature_dir``; returns D."""
        return check_feature_dims(self.features_root / feature_dir, names)

    # ---- availability
    def find_missing(self, names: Iterable[str], modalities: Sequence[str] = (),
                     features: Sequence[str] = ()) -> dict[str, list[str]]:
        """For each requested source, the names (in input order, deduplicated) lacking a file.

        ``modalities`` may hold ``audio``, ``video``, ``openface_face`` and ``subtitle`` (a row
        in ``subtitle_chieng.csv``; an empty text is fine). A missing folder makes every name
        missing for that source. Keys: the modality, or ``features/<feature_dir>``.
        """
        names = list(dict.fromkeys(names))
        out: dict[str, list[str]] = {}
        for m in modalities:
            if m == SUBTITLE:
                have = self.subtitles() if self.csv_path("subtitles").is_file() else {}
            elif m in MODALITIES:
                have = self.media_index(m) if self.media_dir(m).is_dir() else {}
            else:
                raise ValueError(
                    f"unknown modality {m!r}; expected one of {[*MODALITIES, SUBTITLE]}")
            out[m] = [n for n in names if n not in have]
        for fd in features:
            have = self.feature_index(fd) if (self.features_root / fd).is_dir() else {}
            out[f"features/{fd}"] = [n for n in names if n not in have]
        return out

    def _searched(self, key: str) -> str:
        if key == SUBTITLE:
            p, how = self.csv_path("subtitles"), "rows of"
        elif key.startswith("features/"):
            p, how = self.features_root / key[len("features/"):], "<name>.npy or <name>/ in"
        else:
            p, how = self.media_dir(key), f"<name>{MODALITIES[key]} at any depth under"
        exists = p.exists()
        return f"{how} {p}" + ("" if exists else " (which does not exist)")

    def check_available(self, names: Iterable[str], modalities: Sequence[str] = (),
                        features: Sequence[str] = ()) -> None:
        """Raise one ReleaseError listing every source with missing names (count + first few)."""
        names = list(dict.fromkeys(names))
        missing = {k: v for k, v in self.find_missing(names, modalities, features).items() if v}
        if not missing:
            return
        lines = [f"{k}: {len(v)} of {len(names)} names missing, searched {self._searched(k)}; "
                 f"first: {', '.join(v[:_SHOW])}" for k, v in missing.items()]
        total = len(set().union(*missing.values()))
        raise ReleaseError(f"{self.root}: expected every requested name to have its files, found "
                           f"{total} name(s) with something missing:\n  " + "\n  ".join(lines))
