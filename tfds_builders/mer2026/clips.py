"""The clip inputs of the MER2026 video tracks, shared by the MER-Cross, MER-FG and MER-Prefer
builders: one clip name -> its audio, text and video inputs.

Tracks 1-3 read the same clips of the same release, so what a clip's inputs are, how they are
checked and how they are stored lives here once; a builder adds only its CSVs, labels and splits.

Two input kinds, chosen by the config (`ClipConfig`):
* `features`: the MERTools feature folders for audio, text and video, stored per name as
  `(1, D)` (utterance level: the time mean) or `(max_frames, D)` (frame level, adjacent
  frames averaged as in MERTools, zero-padded at the end), each with `<role>_length`.
* `raw`: log-mel frames of up to `max_audio_s` centre-cropped seconds of the wav (10 ms hop,
  zero-padded at the end, with `audio_length`), `num_faces` OpenFace crops resized to
  `face_size` (RGB, with `faces_length`), and the subtitle as text and as zero-padded UTF-8
  bytes (`text_bytes`, `text_length`; cut on a character boundary at `max_text_bytes`).

An input is missing when its file is absent or empty (a feature with T = 0 frames, a wav with 0
samples, an OpenFace npy with T = 0) or, for raw text, when the subtitle row is absent or empty.
With on_missing='error' a missing file or an empty one is a ReleaseError naming it (an empty
subtitle is data, not an error). With on_missing='skip' the clip is still written: the missing
input is zeros with `<input>_length = 0`, so its mask is all false. Per split, the metadata
lists what each clip lacks and counts it (`ClipInputs.report`).

`ClipInputs.check` runs in a builder's `_split_generators`, before any example is written:
availability of every name's files (one error listing them all), empty inputs, feature dims,
and the content of every input that is cheap to hold. Features of the utterance level are read
in full there and held in memory (~10 KB per name). Frame-level features are read and checked
in full there too, then read again while writing (holding up to 32 frames of three features
for ~29k real names would take ~9 GB). Raw inputs are too large to hold (~300 KB per name): the
first pass checks every wav header and every OpenFace npy header and size; corruption beyond
the headers surfaces while writing, as a ReleaseError naming the file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from absl import logging
import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds

from tfds_builders import common, features
from tfds_builders.common import ReleaseError
from tfds_builders.mer2026 import demo as mer2026_demo
from tfds_builders.mer2026.demo import DEMO_MARKER
from tfds_builders.mer2026.release import (FACE_SHAPE, SAMPLE_RATE, Mer2026Release,
                                           check_feature_dims, feature_frames, index_features,
                                           read_feature, read_openface, read_wav)

ROLES = ("audio", "text", "video")
RAW_INPUTS = ("audio", "faces", "text")
FEATURE_DIRS = ("chinese-hubert-base-UTT", "chinese-macbert-large-UTT",
                "clip-vit-large-patch14-UTT")       # MERTools' best AVT trio (its Track-1 README)
FEATURE_DIMS = (768, 1024, 768)
LANGUAGES = {"chinese": "zh", "english": "en"}
# Why an input is missing (metadata['missing'][split][name][input]).
NO_FILE = "no file"
EMPTY_FILE = "empty file"            # a feature with T = 0, a wav with 0 samples, faces T = 0
NO_SUBTITLE = "no subtitle row"
EMPTY_SUBTITLE = "empty subtitle"    # data (MERTools reads NaN as ""), never an error
# Raw-kind release source -> the input it feeds.
_RAW_SOURCES = {"audio": "audio", "openface_face": "faces", "subtitle": "text"}
BYTES = tfds.features.Encoding.BYTES               # raw array bytes: no per-value proto cost
SHOW = 5                                            # names an error or a log line lists
_RAW_FIELDS = ("n_mels", "max_audio_s", "num_faces", "face_size", "text_language",
               "max_text_bytes")
_FEATURE_FIELDS = ("features_root", "feature_dirs", "feature_dims", "feature_level",
                   "max_frames")

# ---- the demo release: one serves tracks 1-3, so every video-track builder offers this one

DEMO_NAME = "mer2026"


def write_demo(root, demo_config):
    mer2026_demo.write_demo_release(root, seed=demo_config.seed, scale=demo_config.scale)


# ---- the config fields of the clip inputs

def _num(x: float) -> str:
    """A float for a config name: `8` for 8.0, `7p5` for 7.5 (exact: repr round-trips)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x).replace(".", "p").replace("-", "m")


def inputs_name(c: "ClipConfig") -> str:
    """The part of a config name that the inputs decide: `features_<utt|frame<N>>_<hash>` or
    `raw_mel<n>_a<seconds>s_f<faces>x<size>_<zh|en><max_text_bytes>`.

    The hash (8 hex digits) covers the feature folder names, their dims and `features_root`.
    """
    if c.input_kind == "features":
        blob = json.dumps([list(c.feature_dirs), list(c.feature_dims), c.features_root])
        level = "utt" if c.feature_level == "utt" else f"frame{c.max_frames}"
        return f"features_{level}_{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
    return (f"raw_mel{c.n_mels}_a{_num(c.max_audio_s)}s_f{c.num_faces}x{c.face_size}_"
            f"{LANGUAGES[c.text_language]}{c.max_text_bytes}")


def inputs_description(c: "ClipConfig") -> str:
    if c.input_kind == "features":
        return (f"{c.feature_level}-level MERTools features "
                + ", ".join(f"{r}={d} (D={k})" for r, d, k in
                            zip(ROLES, c.feature_dirs, c.feature_dims)))
    return (f"raw inputs: {c.n_mels}-band log-mel (<= {c.max_audio_s:g} s, centre-cropped), "
            f"{c.num_faces} faces at {c.face_size}px, {c.text_language} subtitle "
            f"(<= {c.max_text_bytes} bytes)")


# eq=False keeps BuilderConfig's identity equality and hashing.
@dataclasses.dataclass(kw_only=True, eq=False)
class ClipConfig(tfds.core.BuilderConfig):
    """The clip-input fields of a video-track BuilderConfig; a track's config subclasses it.

    Fields of the other input kind do not change the records and are reset to their defaults
    (the subclass's defaults), so configs that build the same records are equal and share one
    name. Audio longer than `max_audio_s` is centre-cropped to it; shorter audio is zero-padded.
    A subclass checks its own fields in `__post_init__` before calling this one, and derives
    its name (`derived_name`) and description prefix (`track`).
    """
    name: str = ""
    input_kind: str = "features"
    release: str = "real"
    features_root: str = ""
    feature_dirs: tuple[str, str, str] = FEATURE_DIRS
    feature_dims: tuple[int, int, int] = FEATURE_DIMS
    feature_level: str = "utt"
    max_frames: int = 32
    n_mels: int = 80
    max_audio_s: float = 8.0
    num_faces: int = 8
    face_size: int = 48
    text_language: str = "chinese"
    max_text_bytes: int = 256
    on_missing: str = "error"
    release_id: str = ""  # fingerprint of the release files (tfds_builders.common)

    track = ""  # "MER-Cross", ...: the description's first words

    def derived_name(self) -> str:
        raise NotImplementedError

    def __post_init__(self):
        choices = {"input_kind": ("features", "raw"), "release": ("demo", "real"),
                   "feature_level": ("utt", "frame"), "text_language": tuple(LANGUAGES),
                   "on_missing": ("error", "skip")}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field} must be one of {list(allowed)}, "
                                 f"found {getattr(self, field)!r}")
        self.feature_dirs = tuple(str(d) for d in self.feature_dirs)
        self.feature_dims = tuple(int(d) for d in self.feature_dims)
        self.features_root = str(self.features_root or "")
        self.max_audio_s = float(self.max_audio_s)
        if len(self.feature_dirs) != 3 or len(self.feature_dims) != 3:
            raise ValueError(f"feature_dirs and feature_dims must hold 3 entries ({ROLES}), "
                             f"found {self.feature_dirs} and {self.feature_dims}")
        bad_dirs = [d for d in self.feature_dirs if not d or "/" in d or os.sep in d
                    or d in (".", "..")]
        if bad_dirs:
            raise ValueError(f"feature_dirs must be folder names under features_root, "
                             f"found {bad_dirs}")
        for field in ("max_frames", "n_mels", "num_faces", "face_size", "max_text_bytes"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be >= 1, found {getattr(self, field)}")
        if min(self.feature_dims) < 1 or not self.max_audio_s > 0:
            # Audio is stored at a fixed length (the model's input shape), so "the whole wav"
            # (max_audio_s=0) has no place here: set the longest audio to keep instead.
            raise ValueError(f"feature_dims must be positive and max_audio_s > 0 (seconds of "
                             f"audio kept, centre-cropped), found {self.feature_dims} and "
                             f"{self.max_audio_s}")
        defaults = {f.name: f.default for f in dataclasses.fields(type(self))}
        unused = _RAW_FIELDS if self.input_kind == "features" else _FEATURE_FIELDS
        if self.input_kind == "features" and self.feature_level == "utt":
            unused += ("max_frames",)
        for field in unused:
            setattr(self, field, defaults[field])
        derived = self.derived_name()
        if self.name and self.name != derived:
            raise ValueError(f"config name {self.name!r} does not match its fields ({derived!r});"
                             " leave name empty or use make_config()")
        self.name = derived
        if not self.description:
            self.description = f"{self.track} {self.release} release, {inputs_description(self)}."


def config_fields(data, root) -> dict:
    """`config.data` -> the ClipConfig fields of the inputs (release and release_id aside)."""
    fields = dict(input_kind=data.input_kind, on_missing=data.on_missing)
    if data.input_kind == "features":
        fields.update(features_root=data.features_root,
                      feature_dirs=tuple(data.features[r] for r in ROLES),
                      feature_dims=feature_dims(data, root), feature_level=data.feature_level,
                      max_frames=data.max_frames)
    else:
        fields.update(n_mels=data.n_mels, max_audio_s=data.max_audio_s,
                      num_faces=data.num_faces, face_size=data.face_size,
                      text_language=data.text_language, max_text_bytes=data.max_text_bytes)
    return fields


def features_base(features_root: str, manual_dir) -> Path:
    """`features_root`, else <manual_dir>/features, unless only <release root>/features exists
    (manual_dir may be the folder holding mer2026-dataset/)."""
    if features_root:
        return Path(features_root).expanduser()
    own = Path(manual_dir) / "features"
    nested = Mer2026Release(Path(manual_dir)).root / "features"
    return own if own.is_dir() or not nested.is_dir() else nested


def feature_dims(data, root, probe: int = 16) -> tuple[int, int, int]:
    """data.feature_dims, or the D of the configured MERTools folders read from `probe` files.

    The dims name the prepared dataset, so they are needed on every run; reading a few headers
    keeps start-up cheap, and the build checks every file against them.
    """
    if data.feature_dims:
        return tuple(int(x) for x in data.feature_dims)
    if root is None:
        raise ValueError("config.data.feature_dims is needed when no release is read "
                         "(e.g. configs/cross.py:bench)")
    dims = []
    for role in ROLES:
        folder = features_base(data.features_root, root) / data.features[role]
        names = sorted(index_features(folder))[:probe]
        dims.append(check_feature_dims(folder, names=names))
    return tuple(dims)


def input_sources(data, root) -> list[Path]:
    """The media or feature folders the inputs are read from (part of a release's identity)."""
    rel = Mer2026Release(Path(root))
    if data.input_kind == "features":
        base = features_base(data.features_root, root)
        return [base / data.features[r] for r in ROLES]
    return [rel.root / "audio", rel.root / "openface_face"]


# ---- shapes

def feature_steps(c: ClipConfig) -> int:
    """Stored steps of a feature input: 1 (utterance level) or max_frames (pooled frames)."""
    return 1 if c.feature_level == "utt" else c.max_frames


def inputs(c: ClipConfig) -> tuple[str, ...]:
    """The inputs a config stores, each with `<input>_length`: ROLES or RAW_INPUTS."""
    return ROLES if c.input_kind == "features" else RAW_INPUTS


def mel_frames(c: ClipConfig) -> int:
    """Log-mel frames of `max_audio_s` seconds (centred 10 ms frames: 1 + samples // hop)."""
    return 1 + int(round(c.max_audio_s * SAMPLE_RATE)) // (SAMPLE_RATE // 100)


def feature_spec(c: ClipConfig) -> dict:
    """The FeaturesDict entries of the clip inputs.

    Every array has a fixed shape (zero-padded at the end); `<input>_length` says how many
    leading steps are real (0: the input is missing), so the training side reads all shapes
    from here and builds its masks from the lengths.
    """
    tensor = tfds.features.Tensor
    spec = {}
    if c.input_kind == "features":
        for role, dim in zip(ROLES, c.feature_dims):
            spec[role] = tensor(shape=(feature_steps(c), dim), dtype=np.float32,
                                encoding=BYTES)
            spec[f"{role}_length"] = tensor(shape=(), dtype=np.int32)
    else:
        spec["audio"] = tensor(shape=(mel_frames(c), c.n_mels), dtype=np.float32,
                               encoding=BYTES)
        spec["audio_length"] = tensor(shape=(), dtype=np.int32)
        spec["faces"] = tensor(shape=(c.num_faces, c.face_size, c.face_size, 3),
                               dtype=np.uint8, encoding=BYTES)
        spec["faces_length"] = tensor(shape=(), dtype=np.int32)  # num_faces, or 0
        spec["text"] = tfds.features.Text()  # the subtitle, kept for inspection
        spec["text_bytes"] = tensor(shape=(c.max_text_bytes,), dtype=np.uint8)
        spec["text_length"] = tensor(shape=(), dtype=np.int32)
    return spec


def _pad_steps(x: np.ndarray, steps: int) -> tuple[np.ndarray, np.int32]:
    """`x` ([T <= steps, ...]) zero-padded at the end to `steps`, and T."""
    if len(x) > steps:
        raise ValueError(f"{len(x)} steps do not fit the {steps} the dataset declares")
    out = np.zeros((steps,) + x.shape[1:], np.float32)
    out[:len(x)] = x
    return out, np.int32(len(x))


# ---- the release and the headers read in the first pass

def open_release(c: ClipConfig, manual_dir: Path) -> Mer2026Release:
    """The release under `manual_dir`, checked to be of the config's kind (demo or real)."""
    features_root = (features_base(c.features_root, manual_dir)
                     if c.input_kind == "features" else None)
    rel = Mer2026Release(manual_dir, features_root=features_root, duplicates="identical")
    common.check_kind(rel.root, "demo" if rel.is_demo else "real", c.release, DEMO_MARKER)
    return rel


def _wav_header(path: Path) -> int:
    """Samples of a wav from its header; checks that it is 16 kHz mono."""
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        raise ReleaseError(f"{path}: expected a readable {SAMPLE_RATE} Hz mono wav, found a "
                           f"corrupt or unsupported file ({e})") from e
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise ReleaseError(f"{path}: expected {SAMPLE_RATE} Hz mono, found {info.samplerate} Hz "
                           f"with {info.channels} channel(s)")
    return int(info.frames)


def _face_frames(path: Path) -> int:
    """T of an OpenFace npy from its header; checks dtype, frame shape and the file size."""
    what = f"uint8 faces [T, {', '.join(map(str, FACE_SHAPE))}] (BGR) in .npy format"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise ReleaseError(f"{path}: expected {what}, found a corrupt or unreadable file "
                           f"({e})") from e
    if dtype != np.uint8 or len(shape) != 4 or tuple(shape[1:]) != FACE_SHAPE:
        raise ReleaseError(f"{path}: expected {what}, found dtype {dtype} shape {shape}")
    want = offset + int(np.prod(shape)) * dtype.itemsize
    size = os.path.getsize(path)
    if size < want:
        raise ReleaseError(f"{path}: expected {want} bytes for shape {shape}, found a truncated "
                           f"file of {size} bytes")
    return int(shape[0])


def _subtitle_text(subtitle, c: ClipConfig) -> str:
    """The stored text: the configured language, cut on a character boundary."""
    return features.truncate_utf8(getattr(subtitle, c.text_language), c.max_text_bytes)


def first(items, n=SHOW) -> str:
    """The first `n` items, comma-joined: what an error or log line shows of a long list."""
    return ", ".join(map(str, list(items)[:n]))


# The end of every clip track's MANUAL_DOWNLOAD_INSTRUCTIONS: where its inputs come from.
MANUAL_INPUTS = """input_kind='features' also needs MERTools feature folders <features_root>/<dir>/<name>.npy;
    features_root defaults to <manual_dir>/features (else <release root>/features).
    Configs with release='demo' expect the generated demo release instead
    (tfds_builders/mer2026/demo.py).
    """


def dataset_info(builder, spec):
    """The DatasetInfo of a clip track: its own fields + `feature_spec`, with the MERTools
    MER2026 homepage; each builder's `_info` returns this."""
    return builder.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({**spec, **feature_spec(builder.builder_config)}),
        homepage="https://github.com/zeroQiaoba/MERTools/tree/master/MER2026",
        metadata=tfds.core.MetadataDict())


# ---- validation folds by clip (MER-FG's Human-OV rows, MER-Prefer's judged rows)

def ordered_sources(sources, known, field) -> tuple[str, ...]:
    """A config's train sources in the one order of `known` (so one set has one name);
    ValueError unless they are distinct entries of `known`, at least one."""
    sources = tuple(str(s) for s in sources)
    unknown = [s for s in sources if s not in known]
    if not sources or unknown or len(set(sources)) != len(sources):
        raise ValueError(f"{field} must be distinct entries of {list(known)}, at least one, "
                         f"found {list(sources)}")
    return tuple(s for s in known if s in sources)


def fold_settings(num_folds, fold_seed) -> tuple[int, int]:
    """(num_folds, fold_seed) as ints; ValueError unless num_folds >= 2 and fold_seed >= 0."""
    num_folds, fold_seed = int(num_folds), int(fold_seed)
    if num_folds < 2 or fold_seed < 0:
        raise ValueError(f"num_folds must be >= 2 and fold_seed >= 0, found {num_folds} and "
                         f"{fold_seed}")
    return num_folds, fold_seed


def assign_folds(names, num_folds: int, seed: int) -> dict[str, int]:
    """name -> fold in [0, num_folds): the sorted names shuffled with `seed`, dealt in turn.

    Sorting first makes a name's fold depend only on the set of names and the seed, not on the
    CSV's row order; dealing in turn makes fold sizes differ by at most one.
    """
    order = sorted(names)
    shuffled = np.random.default_rng(seed).permutation(len(order))
    return {order[j]: i % num_folds for i, j in enumerate(shuffled)}


# ---- one build's inputs: checked once, then read name by name

class ClipInputs:
    """The clip inputs of one build: `check(names)` before any example is written, then
    `read(name)` per example; `report` and `metadata` give the missing-input bookkeeping."""

    def __init__(self, c: ClipConfig, rel: Mer2026Release, track: str):
        self.c, self.rel, self.track = c, rel, track
        self.lacking: dict[str, dict[str, str]] = {}  # {name: {input: why}}
        self._held: dict[str, dict] = {}

    def __getstate__(self):
        # A Beam build ships this reader to its workers inside the pipeline: the held arrays
        # (~10 KB a name, ~300 MB for the real release) stay behind, and a worker reads each
        # name's files instead, through the same _read_features and so to the same values.
        return {**self.__dict__, "_held": {}}

    def check(self, names) -> None:
        """Validates every input of `names` (see the module docstring); ReleaseError if bad."""
        names = list(dict.fromkeys(names))
        if self.c.input_kind == "features":
            self.lacking = self._lacking_features(names)
            self._held = self._check_features(names)
        else:
            self.lacking = self._lacking_raw(names)

    def read(self, name: str, keep: bool = False) -> dict:
        """The stored inputs of one name; a missing input is zeros with length 0.

        A held input (utterance features) is released on its read, unless `keep`: a builder
        whose rows repeat a name (MER-Prefer) keeps it until that name's last read.
        """
        lacks = self.lacking.get(name, {})
        if self.c.input_kind == "features":
            if name in self._held:
                return self._held[name] if keep else self._held.pop(name)
            return self._read_features(name, lacks)
        return self._raw_inputs(name, lacks)

    def report(self, rows: dict[str, list[str]]) -> dict:
        """{split: [name, ...]} -> the metadata entries that count missing inputs per split,
        logging one warning per split with missing inputs."""
        kinds = inputs(self.c)
        missing = {split: {n: self.lacking[n] for n in names if n in self.lacking}
                   for split, names in rows.items()}
        no_input = {split: [n for n, lacks in m.items() if len(lacks) == len(kinds)]
                    for split, m in missing.items()}
        num_missing = {split: {k: sum(k in lacks for lacks in m.values()) for k in kinds}
                       for split, m in missing.items()}
        for split, m in missing.items():
            if m:
                logging.warning(
                    "%s %s: %d of %d clips miss inputs (%s; no input at all: %d), kept "
                    "with those inputs zeroed and masked; e.g. %s", self.track, split, len(m),
                    len(rows[split]), ", ".join(f"{k} {n}" for k, n in num_missing[split].items()),
                    len(no_input[split]), dict(list(m.items())[:SHOW]))
        return {
            # {split: {name: {input: why}}} with why one of NO_FILE, EMPTY_FILE, NO_SUBTITLE,
            # EMPTY_SUBTITLE; the input is zeros with <input>_length 0 in the records.
            "missing": missing,
            "num_missing": num_missing,
            "no_input": no_input,  # clips whose every input is missing (every length 0)
            "num_no_input": {s: len(v) for s, v in no_input.items()},
        }

    def require_input(self, report: dict, split: str, total: int, where) -> None:
        """A split whose every clip misses every input has nothing to learn from: an error
        naming `where` (its CSVs), whatever on_missing says."""
        if len(report["no_input"][split]) == total:
            raise ReleaseError(f"{where}: every one of the {total} {split} clips misses every "
                               f"input, nothing to train on; e.g. "
                               f"{dict(list(report['missing'][split].items())[:SHOW])}")

    def metadata(self) -> dict:
        """The metadata entries that describe the stored inputs."""
        c, feats = self.c, self.c.input_kind == "features"
        return {
            "features_root": str(self.rel.features_root) if feats else None,
            "input_kind": c.input_kind,
            "feature_level": c.feature_level if feats else None,
            "feature_dirs": dict(zip(ROLES, c.feature_dirs)) if feats else None,
            "on_missing": c.on_missing,
            "inputs": list(inputs(c)),
            "audio": (None if feats else
                      {"sample_rate": SAMPLE_RATE, "n_fft": 400, "hop_length": SAMPLE_RATE // 100,
                       "n_mels": c.n_mels, "log_floor": 1e-6, "max_audio_s": c.max_audio_s,
                       "crop": "centre"}),
        }

    # ---- the first pass

    def _absent(self, names, modalities=(), features=()) -> dict[str, list[str]]:
        """{source: [names without a file]}; with on_missing='error' one ReleaseError lists
        them all."""
        rel = self.rel
        if self.c.on_missing == "error":
            rel.check_available(names, modalities, features)
            return {}
        absent = rel.find_missing(names, modalities, features)
        for source, gone in absent.items():
            if names and len(gone) == len(names):
                # Skipping is for clips that lack an input, not for a wrong path: a whole
                # modality missing would train a model that never sees it, silently.
                where = (rel.features_root / source[len("features/"):]
                         if source.startswith("features/") else
                         rel.csv_path("subtitles") if source == "subtitle" else
                         rel.media_dir(source))
                raise ReleaseError(
                    f"{where}: expected {source} for at least some of the {len(names)} names, "
                    f"found none (e.g. {first(gone)}); on_missing='skip' keeps clips that miss "
                    f"an input, but a source missing as a whole is a wrong path or an "
                    f"incomplete download")
        return absent

    def _lacking_features(self, names) -> dict[str, dict[str, str]]:
        """{name: {role: why}} of names whose feature is absent or empty (T = 0); with
        on_missing='error' either is a ReleaseError naming the files."""
        c, rel = self.c, self.rel
        absent = self._absent(names, features=c.feature_dirs)
        lacking: dict[str, dict[str, str]] = {}
        empty = []
        for role, fd in zip(ROLES, c.feature_dirs):
            for name in absent.get(f"features/{fd}", ()):
                lacking.setdefault(name, {})[role] = NO_FILE
            index = rel.feature_index(fd)
            for name in names:
                if name in index and feature_frames(index[name]) == 0:
                    lacking.setdefault(name, {})[role] = EMPTY_FILE
                    empty.append(index[name])
        if empty and c.on_missing == "error":
            raise ReleaseError(
                f"{rel.features_root}: expected every feature file to hold at least one frame, "
                f"found {len(empty)} empty one(s) (T = 0, which MERTools would average to NaN): "
                f"{first(empty)}. An empty feature is a missing input: re-extract it, or set "
                f"data.on_missing=skip to answer those clips from their other inputs")
        return lacking

    def _check_features(self, names) -> dict:
        """Checks dims and reads every feature file in full; returns the utt arrays to hold."""
        c, rel = self.c, self.rel
        logging.info("%s: checking and reading the %s-level features of %d names in %s",
                     self.track, c.feature_level, len(names), rel.features_root)
        for role, fd, want in zip(ROLES, c.feature_dirs, c.feature_dims):
            folder = rel.features_root / fd
            have = [n for n in names if role not in self.lacking.get(n, {})]
            if not have:
                raise ReleaseError(f"{folder}: expected a non-empty {role} feature for at least "
                                   f"some of the {len(names)} names, found none")
            got = rel.check_feature_dims(fd, have)  # every file against the folder's D
            if got != want:
                example = rel.feature_index(fd)[have[0]]
                raise ReleaseError(
                    f"{folder}: expected the {role} feature dim D={want} (config feature_dims), "
                    f"found D={got} in every file of the folder, e.g. {example}; set "
                    f"feature_dims to the folders' dims")
        held = {}
        for name in names:
            arrays = self._read_features(name, self.lacking.get(name, {}))
            if c.feature_level == "utt":
                held[name] = arrays
        return held

    def _read_features(self, name: str, lacks) -> dict[str, np.ndarray]:
        c = self.c
        out = {}
        for role, fd, want in zip(ROLES, c.feature_dirs, c.feature_dims):
            if role in lacks:  # zeros with length 0: the training side masks the stream out
                out[role] = np.zeros((feature_steps(c), want), np.float32)
                out[f"{role}_length"] = np.int32(0)
                continue
            path = self.rel.feature_index(fd)[name]
            x = read_feature(path, level="frame")  # (T, D) float32; ReleaseError if corrupt
            if x.shape[1] != want or len(x) == 0:
                raise ReleaseError(f"{path}: expected (T >= 1, D={want}) like the rest of {fd} "
                                   f"(its npy header said so), found shape {x.shape}")
            bad = features.first_nonfinite(x)
            if bad is not None:
                raise ReleaseError(f"{path}: expected finite feature values, found "
                                   f"{x[bad]} at frame {bad[0]}, dim {bad[1]}")
            if c.feature_level == "utt":
                x = x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
            else:
                x = features.pool_frames(x, c.max_frames)
            out[role], out[f"{role}_length"] = _pad_steps(x, feature_steps(c))
        return out

    def _lacking_raw(self, names) -> dict[str, dict[str, str]]:
        """{name: {input: why}} from the wav and OpenFace headers and the subtitles; with
        on_missing='error' an absent or empty file is a ReleaseError naming it (an empty
        subtitle is data: recorded, never an error)."""
        c, rel = self.c, self.rel
        absent = self._absent(names, modalities=tuple(_RAW_SOURCES))
        lacking: dict[str, dict[str, str]] = {}
        for source, key in _RAW_SOURCES.items():
            for name in absent.get(source, ()):
                lacking.setdefault(name, {})[key] = NO_SUBTITLE if source == "subtitle" else NO_FILE
        logging.info("%s: checking wav and OpenFace headers of %d names under %s",
                     self.track, len(names), rel.root)
        silent, faceless = [], []
        for name in names:
            lacks = lacking.get(name, {})
            if "audio" not in lacks and _wav_header(rel.media_path("audio", name)) == 0:
                silent.append(name)
            if "faces" not in lacks and _face_frames(rel.media_path("openface_face", name)) == 0:
                faceless.append(name)
            if "text" not in lacks and not _subtitle_text(rel.subtitles()[name], c):
                lacking.setdefault(name, {})["text"] = EMPTY_SUBTITLE
        if (silent or faceless) and c.on_missing == "error":
            problems = []
            if silent:
                problems.append(f"expected at least one sample per wav, found {len(silent)} of "
                                f"{len(names)} names with 0 samples; first: "
                                f"{first(rel.media_path('audio', n) for n in silent)}")
            if faceless:
                problems.append(f"expected at least one face frame per OpenFace npy, found "
                                f"{len(faceless)} of {len(names)} names with T=0; first: "
                                f"{first(rel.media_path('openface_face', n) for n in faceless)}")
            raise ReleaseError(f"{rel.root}: " + "; ".join(problems) + ". An empty file is a "
                               "missing input: replace it, or set data.on_missing=skip to answer "
                               "those clips from their other inputs")
        for group, key in ((silent, "audio"), (faceless, "faces")):
            for name in group:
                lacking.setdefault(name, {})[key] = EMPTY_FILE
        return lacking

    # ---- writing

    def _raw_inputs(self, name: str, lacks) -> dict:
        """The raw inputs of one clip; a missing one is zeros with length 0."""
        c, rel = self.c, self.rel
        if "audio" in lacks:
            audio, audio_length = np.zeros((mel_frames(c), c.n_mels), np.float32), np.int32(0)
        else:
            wave = read_wav(rel.media_path("audio", name))
            wave = features.centre_crop(wave, int(round(c.max_audio_s * SAMPLE_RATE)))
            mel = features.log_mel_spectrogram(wave, sample_rate=SAMPLE_RATE, n_mels=c.n_mels)
            audio, audio_length = _pad_steps(mel, mel_frames(c))
        if "faces" in lacks:
            faces = np.zeros((c.num_faces, c.face_size, c.face_size, 3), np.uint8)
        else:
            faces = read_openface(rel.media_path("openface_face", name), num_frames=c.num_faces)
            if c.face_size != FACE_SHAPE[0]:
                faces = features.resize_area(faces, c.face_size)
        text = "" if "text" in lacks else _subtitle_text(rel.subtitles()[name], c)
        utf8 = features.utf8_bytes(text)
        return {
            "audio": audio,
            "audio_length": audio_length,
            "faces": faces,
            "faces_length": np.int32(0 if "faces" in lacks else c.num_faces),
            "text": text,
            "text_bytes": np.pad(utf8, (0, c.max_text_bytes - len(utf8))),
            "text_length": np.int32(len(utf8)),
        }
