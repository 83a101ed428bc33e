"""TFDS builder for MER-Cross (MER2026 track 1): `train` (track1_train.csv) and `candidates`.

Two input kinds, chosen by the config:
* `features`: the MERTools feature folders for audio, text and video, stored per name as
  `(1, D)` (utterance level: the time mean) or `(T<=max_frames, D)` (frame level, adjacent
  frames averaged as in MERTools).
* `raw`: log-mel frames of the wav (10 ms hop), `num_faces` OpenFace crops resized to
  `face_size` (RGB), and the subtitle text.

All validation happens in `_split_generators`, before any example is written: release kind,
availability of every name's files (one error listing them all), feature dims, and the content
of every input that is cheap to hold. Features of the utterance level are read in full there and
held in memory (~10 KB per name). Frame-level features are read and checked in full there too,
then read again while writing (holding up to 32 frames of three features for ~29k real names
would take ~9 GB). Raw inputs are too large to hold (~300 KB per name): the first pass checks
every wav header and every OpenFace npy header and size; corruption beyond the headers surfaces
while writing, as a ReleaseError naming the file. The feature spec is the contract with the
training code.
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

from merjax import features
from tfds_builders.mer2026 import (FACE_SHAPE, SAMPLE_RATE, TRACK1_LABELS, Mer2026Release,
                                   ReleaseError, read_feature, read_openface, read_wav)
from tfds_builders.mer2026.demo import DEMO_MARKER

ROLES = ("audio", "text", "video")
FEATURE_DIRS = ("chinese-hubert-base-UTT", "chinese-macbert-large-UTT",
                "clip-vit-large-patch14-UTT")       # MERTools' best AVT trio (MER2026.md 2.6)
FEATURE_DIMS = (768, 1024, 768)
LANGUAGES = {"chinese": "zh", "english": "en"}
NO_FACES = "openface_face (no frames)"              # skip reason for an npy with T=0
_BYTES = tfds.features.Encoding.BYTES               # raw array bytes: no per-value proto cost
_SHOW = 5
_RAW_FIELDS = ("n_mels", "max_audio_s", "num_faces", "face_size", "text_language",
               "max_text_bytes")
_FEATURE_FIELDS = ("features_root", "feature_dirs", "feature_dims", "feature_level",
                   "max_frames")


def _num(x: float) -> str:
    """A float for a config name: `8` for 8.0, `7p5` for 7.5 (exact: repr round-trips)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x).replace(".", "p").replace("-", "m")


def config_name(c: "CrossConfig") -> str:
    """`<release>_features_<utt|frame<max_frames>>_<hash>` or
    `<release>_raw_mel<n>_a<seconds>s_f<faces>x<size>_<zh|en><max_text_bytes>`, plus `_skip`
    with on_missing='skip'.

    Every field that changes the records is in the name; the hash (8 hex digits) covers the
    feature folder names, their dims and `features_root`.
    """
    if c.input_kind == "features":
        blob = json.dumps([list(c.feature_dirs), list(c.feature_dims), c.features_root])
        level = "utt" if c.feature_level == "utt" else f"frame{c.max_frames}"
        name = (f"{c.release}_features_{level}_"
                f"{hashlib.sha256(blob.encode()).hexdigest()[:8]}")
    else:
        name = (f"{c.release}_raw_mel{c.n_mels}_a{_num(c.max_audio_s)}s_f{c.num_faces}x"
                f"{c.face_size}_{LANGUAGES[c.text_language]}{c.max_text_bytes}")
    return name + ("_skip" if c.on_missing == "skip" else "")


# eq=False keeps BuilderConfig's identity equality and hashing.
@dataclasses.dataclass(kw_only=True, eq=False)
class CrossConfig(tfds.core.BuilderConfig):
    """MER-Cross inputs; `name` is derived from the fields (leave it empty, use make_config).

    Fields of the other input kind do not change the records and are reset to their defaults,
    so configs that build the same records are equal (and share one name).
    `max_audio_s=0` keeps the whole wav; longer audio is centre-cropped to `max_audio_s`.
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
        if min(self.feature_dims) < 1 or not self.max_audio_s >= 0:
            raise ValueError(f"feature_dims must be positive and max_audio_s >= 0, found "
                             f"{self.feature_dims} and {self.max_audio_s}")
        defaults = {f.name: f.default for f in dataclasses.fields(CrossConfig)}
        unused = _RAW_FIELDS if self.input_kind == "features" else _FEATURE_FIELDS
        if self.input_kind == "features" and self.feature_level == "utt":
            unused += ("max_frames",)
        for field in unused:
            setattr(self, field, defaults[field])
        derived = config_name(self)
        if self.name and self.name != derived:
            raise ValueError(f"config name {self.name!r} does not match its fields ({derived!r});"
                             " leave name empty or use make_config()")
        self.name = derived
        if not self.description:
            if self.input_kind == "features":
                what = (f"{self.feature_level}-level MERTools features "
                        + ", ".join(f"{r}={d} (D={k})" for r, d, k in
                                    zip(ROLES, self.feature_dirs, self.feature_dims)))
            else:
                what = (f"raw inputs: {self.n_mels}-band log-mel (<= {self.max_audio_s:g} s, "
                        f"centre-cropped), {self.num_faces} faces at {self.face_size}px, "
                        f"{self.text_language} subtitle (<= {self.max_text_bytes} bytes)")
            self.description = f"MER-Cross {self.release} release, {what}."


_CONFIGS: dict[str, CrossConfig] = {}


def make_config(**fields) -> CrossConfig:
    """The config for these fields; equal fields give the *same* instance.

    TFDS refuses a config instance that is not the registered one under the same name, so
    `make_config(release='demo')` must hand back the instance listed in BUILDER_CONFIGS.
    Treat the returned config as immutable.
    """
    config = CrossConfig(**fields)
    return _CONFIGS.setdefault(config.name, config)


def _check_kind(rel: Mer2026Release, expected: str) -> None:
    found = "demo" if rel.is_demo else "real"
    if found == expected:
        return
    if found == "demo":
        raise ReleaseError(
            f"{rel.root}: is a generated demo release (marker file {rel.root / DEMO_MARKER}) "
            f"but the config expects release='real'; a demo must never pass as the real data")
    raise ReleaseError(
        f"{rel.root}: expected a generated demo release (marker file {rel.root / DEMO_MARKER}), "
        f"found none: this looks like the real release but the config says release='demo'")


def _wav_header(path: Path) -> None:
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        raise ReleaseError(f"{path}: expected a readable {SAMPLE_RATE} Hz mono wav, found a "
                           f"corrupt or unsupported file ({e})") from e
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        raise ReleaseError(f"{path}: expected {SAMPLE_RATE} Hz mono, found {info.samplerate} Hz "
                           f"with {info.channels} channel(s)")


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


class Builder(tfds.core.GeneratorBasedBuilder):
    """MER-Cross (track 1): listener emotion, 6 classes; train rows and candidates."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: MERTools features (utt or pooled frames) or raw "
                              "log-mel + faces + subtitle; splits train and candidates."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request access to the gated Hugging Face dataset MERChallenge/MER2026, download it and
    extract the archives (extract_mer2026_archives.sh) for the track-1 train and the
    track1_track2 candidate subsets. Pass the release root (holding track1_train.csv,
    track1_track2_candidate.csv, subtitle_chieng.csv, audio/ and openface_face/; flat or nested
    per-subset layout), or the folder holding mer2026-dataset/, as manual_dir, e.g.
    --config.data.manual_dir=/path/to/mer2026-dataset.
    input_kind='features' also needs MERTools feature folders <features_root>/<dir>/<name>.npy;
    features_root defaults to <manual_dir>/features (else <release root>/features).
    Configs with release='demo' expect the generated demo release instead
    (tfds_builders/mer2026/demo.py).
    """
    BUILDER_CONFIGS = [make_config(), make_config(release="demo"),
                       make_config(input_kind="raw"), make_config(input_kind="raw", release="demo")]
    DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        tensor = tfds.features.Tensor
        spec = {"name": tfds.features.Text(),
                "label": tensor(shape=(), dtype=np.int32),
                "index": tensor(shape=(), dtype=np.int32)}
        if c.input_kind == "features":
            for role, dim in zip(ROLES, c.feature_dims):
                spec[role] = tensor(shape=(None, dim), dtype=np.float32, encoding=_BYTES)
        else:
            spec["audio"] = tensor(shape=(None, c.n_mels), dtype=np.float32, encoding=_BYTES)
            spec["faces"] = tensor(shape=(c.num_faces, c.face_size, c.face_size, 3),
                                   dtype=np.uint8, encoding=_BYTES)
            spec["text"] = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(spec),
            homepage="https://github.com/zeroQiaoba/MERTools/tree/master/MER2026",
            metadata=tfds.core.MetadataDict(),
        )

    # ---- validation (everything here runs before the first example is written)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        try:
            manual_dir = Path(dl_manager.manual_dir)
        except AssertionError as e:  # TFDS's way of saying the folder is missing or empty
            reason = str(e).splitlines()[0].split(" Create it")[0]
            raise ReleaseError(f"MER-Cross manual_dir unusable: {reason} "
                               f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}") from e
        features_root = None
        if c.input_kind == "features":
            features_root = Path(c.features_root).expanduser() if c.features_root else None
        rel = Mer2026Release(manual_dir, features_root=features_root, duplicates="identical")
        if c.input_kind == "features" and not c.features_root:
            # <manual_dir>/features, unless only <release root>/features exists (manual_dir
            # may be the folder holding mer2026-dataset/).
            own = manual_dir / "features"
            if own.is_dir() or not rel.features_root.is_dir():
                rel.features_root = own
        _check_kind(rel, c.release)
        rows = {"train": [(i, r.name, r.label_index) for i, r in enumerate(rel.track1_train())],
                "candidates": [(i, n, -1) for i, n in enumerate(rel.track1_track2_candidates())]}
        names = list(dict.fromkeys(n for split in rows.values() for _, n, _ in split))

        if c.input_kind == "features":
            missing = self._missing(rel, names, features=c.feature_dirs)
            present = [n for n in names if n not in missing]
            held = self._check_features(rel, present)
        else:
            missing = self._missing(rel, names, modalities=("audio", "openface_face", "subtitle"))
            present = [n for n in names if n not in missing]
            missing.update(self._check_raw(rel, present))
            held = {}

        skipped = {split: {n: missing[n] for _, n, _ in r if n in missing}
                   for split, r in rows.items()}
        for split, gone in skipped.items():
            if gone:
                logging.warning("MER-Cross %s: skipping %d of %d names with missing inputs "
                                "(on_missing='skip'), e.g. %s", split, len(gone),
                                len(rows[split]), dict(list(gone.items())[:_SHOW]))
            if len(gone) == len(rows[split]):
                raise ReleaseError(f"{rel.root}: every one of the {len(gone)} {split} names has "
                                   f"missing inputs, nothing to build; e.g. "
                                   f"{dict(list(gone.items())[:_SHOW])}")
        rows = {s: [r for r in r_ if r[1] not in missing] for s, r_ in rows.items()}
        self.info.metadata.update({
            "release": c.release,
            "manual_dir": str(manual_dir),
            "release_root": str(rel.root),
            "features_root": str(rel.features_root) if c.input_kind == "features" else None,
            "input_kind": c.input_kind,
            "feature_level": c.feature_level if c.input_kind == "features" else None,
            "feature_dirs": dict(zip(ROLES, c.feature_dirs)) if c.input_kind == "features"
            else None,
            "label_names": list(TRACK1_LABELS),
            "csv_rows": {s: len(r) + len(skipped[s]) for s, r in rows.items()},
            "counts": {s: len(r) for s, r in rows.items()},
            "skipped": skipped,
            "num_skipped": {s: len(v) for s, v in skipped.items()},
            "audio": (None if c.input_kind == "features" else
                      {"sample_rate": SAMPLE_RATE, "n_fft": 400, "hop_length": SAMPLE_RATE // 100,
                       "n_mels": c.n_mels, "log_floor": 1e-6, "max_audio_s": c.max_audio_s,
                       "crop": "centre"}),
        })
        return {split: self._generate_examples(rel, r, held) for split, r in rows.items()}

    def _missing(self, rel: Mer2026Release, names, modalities=(), features=()
                 ) -> dict[str, list[str]]:
        """{name: [sources it lacks]}; with on_missing='error' any missing name raises."""
        if self.builder_config.on_missing == "error":
            rel.check_available(names, modalities, features)
            return {}
        out: dict[str, list[str]] = {}
        for source, gone in rel.find_missing(names, modalities, features).items():
            for n in gone:
                out.setdefault(n, []).append(source)
        return out

    def _check_features(self, rel: Mer2026Release, names) -> dict:
        """Checks dims and reads every feature file in full; returns the utt arrays to hold."""
        c = self.builder_config
        if not names:
            return {}
        logging.info("MER-Cross: checking and reading the %s-level features of %d names in %s",
                     c.feature_level, len(names), rel.features_root)
        for role, fd, want in zip(ROLES, c.feature_dirs, c.feature_dims):
            folder = rel.features_root / fd
            got = rel.check_feature_dims(fd, names)  # every file against the folder's D
            if got != want:
                first = rel.feature_index(fd)[names[0]]
                raise ReleaseError(
                    f"{folder}: expected the {role} feature dim D={want} (config feature_dims), "
                    f"found D={got} in every file of the folder, e.g. {first}; set "
                    f"feature_dims to the folders' dims")
        held = {}
        for name in names:
            arrays = self._read_features(rel, name)
            if c.feature_level == "utt":
                held[name] = arrays
        return held

    def _read_features(self, rel: Mer2026Release, name: str) -> dict[str, np.ndarray]:
        c = self.builder_config
        out = {}
        for role, fd, want in zip(ROLES, c.feature_dirs, c.feature_dims):
            path = rel.feature_index(fd)[name]
            x = read_feature(path, level="frame")  # (T, D) float32; ReleaseError if corrupt
            if x.shape[1] != want:
                raise ReleaseError(f"{path}: expected D={want} like the rest of {fd}, found "
                                   f"shape {x.shape}")
            bad = features.first_nonfinite(x)
            if bad is not None:
                raise ReleaseError(f"{path}: expected finite feature values, found "
                                   f"{x[bad]} at frame {bad[0]}, dim {bad[1]}")
            if c.feature_level == "utt":
                out[role] = x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
            else:
                out[role] = features.pool_frames(x, c.max_frames)
        return out

    def _check_raw(self, rel: Mer2026Release, names) -> dict[str, list[str]]:
        """Header checks of every wav and OpenFace npy; returns names whose npy has no frames
        (an error listing them with on_missing='error')."""
        logging.info("MER-Cross: checking wav and OpenFace headers of %d names under %s",
                     len(names), rel.root)
        empty = []
        for name in names:
            _wav_header(rel.media_path("audio", name))
            if _face_frames(rel.media_path("openface_face", name)) == 0:
                empty.append(name)
        if empty and self.builder_config.on_missing == "error":
            paths = [str(rel.media_path("openface_face", n)) for n in empty[:_SHOW]]
            raise ReleaseError(f"{rel.root}: expected at least one face frame per OpenFace npy, "
                               f"found {len(empty)} of {len(names)} names with T=0; first: "
                               f"{', '.join(paths)}")
        return {n: [NO_FACES] for n in empty}

    # ---- writing

    def _generate_examples(self, rel: Mer2026Release, rows, held: dict):
        c = self.builder_config
        for index, name, label in rows:
            example = {"name": name, "label": np.int32(label), "index": np.int32(index)}
            if c.input_kind == "features":
                example.update(held.pop(name) if name in held
                               else self._read_features(rel, name))
            else:
                example.update(self._raw_inputs(rel, name))
            yield name, example

    def _raw_inputs(self, rel: Mer2026Release, name: str) -> dict:
        c = self.builder_config
        wave = read_wav(rel.media_path("audio", name))
        if c.max_audio_s > 0:
            wave = features.centre_crop(wave, int(round(c.max_audio_s * SAMPLE_RATE)))
        faces = read_openface(rel.media_path("openface_face", name), num_frames=c.num_faces)
        subtitle = rel.subtitles()[name]
        return {
            "audio": features.log_mel_spectrogram(wave, sample_rate=SAMPLE_RATE,
                                                  n_mels=c.n_mels),
            "faces": faces if c.face_size == FACE_SHAPE[0]
            else features.resize_area(faces, c.face_size),
            "text": features.truncate_utf8(getattr(subtitle, c.text_language),
                                           c.max_text_bytes),
        }
