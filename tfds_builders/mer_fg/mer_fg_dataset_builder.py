"""TFDS builder for MER-FG (MER2026 track 2): open-vocabulary emotion words per clip.

Splits:
* `train`: the rows of `track2_train_human.csv` (Human-OV) and
  `track2_train_mercaptionplus.csv` (MER-Caption+), those of `train_sources`. A name in both
  files is kept once, with its human words: the human row is the better annotation and
  MER-Caption+ is model-written. Each example carries its `source` and `fold`: human rows get a
  fold in [0, num_folds) from a seeded shuffle of their names (names are unique, so the folds
  are clip-disjoint); MER-Caption+ rows get fold -1, always train and never validation, because
  their labels were written by a model. The training side takes fold k's validation as the
  human rows with fold == k and trains on the rest.
* `candidates`: the names of `track1_track2_candidate.csv`, `index` = candidate order; no
  labels (`source` "", fold -1, `words` "", `labels` all zero).

Labels. Each openset cell is parsed with MERTools' `string_to_list`, then every word is
normalised as the metric normalises it before scoring: lower case, outer spaces off, word form
-> base word (`emotion_wheel.Wheel.canonical`, the L1 table). The label vocabulary is the sorted
set of base words over the train split; `labels` is a multi-hot uint8 vector over it and `words`
the row's parsed words, comma-joined, for inspection. A word outside the metric's 7,356 forms
("neutral", "on edge", ...) can never be scored, so it has no place in the vocabulary; it is
not dropped silently either: every occurrence is counted, the distinct ones are listed with
their counts in the metadata, and the most frequent are logged. A row left with no word at all
(an empty openset, or only such words) is kept and counted; the metric skips such a sample.

Why the vocabulary is a config field. Its size is a shape of the FeaturesDict, which TFDS
needs in `_info`, before `_split_generators` reads anything, and tasks read every shape from
the dataset's features. So `builder_config(...)` reads the train CSVs and the wheel once (a
second or so on the real release) and stores the vocabulary in the FgConfig; the config name
carries its size and a hash of it (and of the wheel folder), so another vocabulary never
reuses these records. `_split_generators` recomputes it from the files it builds from and
refuses a config whose vocabulary differs (a config made from another release or wheel).

Clip inputs (features or raw kind, missing inputs, checks before writing): `clips.py`, as for
MER-Cross; the text input is the English subtitle by default, as the MER-FG baselines use.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common, generation
from tfds_builders.common import ReleaseError
from tfds_builders.mer2026 import Mer2026Release, clips, emotion_wheel
from tfds_builders.mer2026.clips import assign_folds

SOURCES = ("human", "mercaptionplus")
NO_FOLD = -1           # MER-Caption+ rows and candidates: never in a validation fold
_CSV_KEYS = {"human": "track2_human", "mercaptionplus": "track2_mercaptionplus"}
_TAGS = {"human": "h", "mercaptionplus": "m"}
_TOP = 10              # out-of-vocabulary words named in the log


def config_name(c: "FgConfig") -> str:
    """`<release>_<inputs>_<h|m|hm>_k<folds>s<seed>_v<V>_<hash>`, plus `_skip` with
    on_missing='skip' and `_r<release_id>`.

    `<inputs>` is the clip-input part of MER-Cross's names; the hash (8 hex digits) covers the
    vocabulary and the emotion-wheel folder, which together decide every `labels` vector.
    """
    blob = json.dumps([list(c.vocabulary), c.emotion_wheel_dir])
    sources = "".join(_TAGS[s] for s in c.train_sources)
    name = (f"{c.release}_{clips.inputs_name(c)}_{sources}_k{c.num_folds}s{c.fold_seed}_"
            f"v{len(c.vocabulary)}_{hashlib.sha256(blob.encode()).hexdigest()[:8]}")
    name += "_skip" if c.on_missing == "skip" else ""
    return name + (f"_r{c.release_id}" if c.release_id else "")


# eq=False keeps BuilderConfig's identity equality and hashing.
@dataclasses.dataclass(kw_only=True, eq=False)
class FgConfig(clips.ClipConfig):
    """MER-FG inputs, train sources, folds and label vocabulary; `name` is derived from them.

    Make it with `builder_config` (which reads the vocabulary from the release) or
    `make_config(..., vocabulary=...)`. `emotion_wheel_dir` "" is the wheel carried with the
    code (`emotion_wheel.FOLDER`).
    """
    text_language: str = "english"  # the MER-FG baselines read the English subtitle
    train_sources: tuple[str, ...] = SOURCES
    num_folds: int = 5
    fold_seed: int = 0
    emotion_wheel_dir: str = ""
    vocabulary: tuple[str, ...] = dataclasses.field(default=(), repr=False)  # ~1k words

    track = "MER-FG"

    def derived_name(self) -> str:
        return config_name(self)

    def __post_init__(self):
        self.train_sources = clips.ordered_sources(self.train_sources, SOURCES, "train_sources")
        self.num_folds, self.fold_seed = clips.fold_settings(self.num_folds, self.fold_seed)
        self.emotion_wheel_dir = str(self.emotion_wheel_dir or "")
        self.vocabulary = tuple(str(w) for w in self.vocabulary)
        if list(self.vocabulary) != sorted(set(self.vocabulary)):
            raise ValueError("vocabulary must be sorted and without repeats (it indexes the "
                             "`labels` vector); use vocabulary_of()")
        given = self.description
        super().__post_init__()
        if not given:
            self.description = (f"{self.description[:-1]}; train from "
                                f"{'+'.join(self.train_sources)}, {self.num_folds} folds of "
                                f"the human rows (seed {self.fold_seed}), "
                                f"{len(self.vocabulary)} label words.")


make_config = common.ConfigRegistry(FgConfig)


# ---- the train rows and their words

class TrainRow(NamedTuple):
    name: str
    source: str                 # "human" or "mercaptionplus"
    index: int                  # 0-based data row in its source CSV
    words: tuple[str, ...]      # the openset cell as string_to_list parses it
    labels: tuple[str, ...]     # sorted distinct base words the metric can score
    outside: tuple[str, ...]    # normalised words outside the metric's forms, repeats kept


class TrainSet(NamedTuple):
    rows: tuple[TrainRow, ...]  # the human rows in CSV order, then the kept MER-Caption+ rows
    csv_rows: dict[str, int]    # data rows per source CSV read
    overlap: tuple[str, ...]    # names in both CSVs: their MER-Caption+ row gave way


def load_wheel(emotion_wheel_dir: str) -> emotion_wheel.Wheel:
    """The emotion wheel of the config ("" = the carried copy); ReleaseError naming a missing
    or malformed file."""
    return emotion_wheel.load(emotion_wheel_dir or None)


def read_train(rel: Mer2026Release, sources, wheel: emotion_wheel.Wheel) -> TrainSet:
    """The train rows of `sources`, each name once (the human row wins), with their words."""
    rows, csv_rows, overlap, seen = [], {}, [], set()
    for source in SOURCES:
        if source not in sources:
            continue
        parsed = rel.track2_train(source)  # header, field count and duplicate names checked
        csv_rows[source] = len(parsed)
        for index, row in enumerate(parsed):
            if row.name in seen:
                overlap.append(row.name)
                continue
            seen.add(row.name)
            bases = [wheel.canonical(w) for w in row.openset]
            rows.append(TrainRow(
                row.name, source, index, row.openset,
                tuple(sorted({b for b in bases if b is not None})),
                tuple(emotion_wheel.normalise(w) for w, b in zip(row.openset, bases)
                      if b is None)))
    return TrainSet(tuple(rows), csv_rows, tuple(overlap))


def vocabulary_of(rows) -> tuple[str, ...]:
    """The sorted base words of the train rows: the `labels` vector's order."""
    return tuple(sorted({w for r in rows for w in r.labels}))


def multi_hot(labels, position: dict[str, int]) -> np.ndarray:
    """uint8 [V]: 1 at the vocabulary position (`{word: index}`) of each label word."""
    out = np.zeros(len(position), np.uint8)
    out[[position[w] for w in labels]] = 1
    return out


# ---- what the training side uses (tfds_builders/common.py lists it)

DEMO_NAME = clips.DEMO_NAME  # one demo release serves tracks 1-3
write_demo = clips.write_demo
_OWN_FIELDS = ("train_sources", "num_folds", "fold_seed", "emotion_wheel_dir")


def builder_config(data, root, *, release: str, release_id: str) -> FgConfig:
    """`config.data` -> the BuilderConfig of this run, its vocabulary read from the release.

    Reads the clip-input keys MER-Cross reads, plus `train_sources`, `num_folds`, `fold_seed`
    and `emotion_wheel_dir` where `config.data` has them (else FgConfig's defaults). With no
    release (`root` None: shapes only) `data.vocabulary` must give the vocabulary.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(FgConfig)}
    own = {k: data[k] if k in data else defaults[k] for k in _OWN_FIELDS}
    own["train_sources"] = tuple(own["train_sources"])
    if root is None:
        if not data.get("vocabulary"):
            raise ValueError("config.data.vocabulary is needed when no release is read: the "
                             "label vocabulary is a shape of the MER-FG dataset")
        vocabulary = tuple(data.vocabulary)
    else:
        rel = Mer2026Release(root)
        train = read_train(rel, own["train_sources"], load_wheel(own["emotion_wheel_dir"]))
        vocabulary = vocabulary_of(train.rows)
        if not vocabulary:
            raise ReleaseError(
                f"{_csv_paths(rel, own['train_sources'])}: expected train rows with words the "
                f"metric can score, found none among {len(train.rows)} rows")
    return make_config(release=release, release_id=release_id, vocabulary=vocabulary,
                       **own, **clips.config_fields(data, root))


def release_sources(data, root):
    """The CSVs, media or feature folders and the emotion wheel a build reads."""
    rel = Mer2026Release(root)
    sources = tuple(data.train_sources) if "train_sources" in data else SOURCES
    csvs = [rel.csv_path(_CSV_KEYS[s]) for s in SOURCES if s in sources]
    wheel_dir = data.get("emotion_wheel_dir") or emotion_wheel.FOLDER
    return (csvs + [rel.csv_path("track1_track2_candidates"), rel.csv_path("subtitles")]
            + clips.input_sources(data, root) + [Path(wheel_dir).expanduser()])


def _csv_paths(rel: Mer2026Release, sources) -> str:
    return " and ".join(str(rel.csv_path(_CSV_KEYS[s])) for s in SOURCES if s in sources)


class Builder(generation.BeamReadyBuilder):
    """MER-FG (track 2): emotion words per clip as a multi-hot vector; train rows (with folds)
    and candidates."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: Human-OV + MER-Caption+ train rows (each name once, human "
                 "words win) with seeded folds of the human rows, and the 20,000 candidates; "
                 "labels multi-hot over the base words the metric scores; clip inputs as "
                 "MER-Cross 1.1.0 (features or raw, missing inputs masked and counted).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request access to the gated Hugging Face dataset MERChallenge/MER2026, download it and
    extract the archives (extract_mer2026_archives.sh) for the track2_train_human,
    track2_train_mercaptionplus and track1_track2 candidate subsets. Pass the release root
    (holding track2_train_human.csv, track2_train_mercaptionplus.csv,
    track1_track2_candidate.csv, subtitle_chieng.csv, audio/ and openface_face/; flat or nested
    per-subset layout), or the folder holding mer2026-dataset/, as manual_dir, e.g.
    --config.data.manual_dir=/path/to/mer2026-dataset.
    """ + clips.MANUAL_INPUTS

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        tensor = tfds.features.Tensor
        spec = {"name": tfds.features.Text(),
                "index": tensor(shape=(), dtype=np.int32),   # row in its CSV
                "source": tfds.features.Text(),              # human, mercaptionplus or ""
                "fold": tensor(shape=(), dtype=np.int32),    # [0, num_folds) or -1
                "words": tfds.features.Text(),               # the parsed words, for inspection
                "labels": tensor(shape=(len(c.vocabulary),), dtype=np.uint8,
                                 encoding=clips.BYTES)}
        return clips.dataset_info(self, spec)

    # ---- validation (everything here runs before the first example is written)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        manual_dir = common.manual_dir(dl_manager, "MER-FG", self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        rel = clips.open_release(c, manual_dir)
        wheel = load_wheel(c.emotion_wheel_dir)
        train = read_train(rel, c.train_sources, wheel)
        where = _csv_paths(rel, c.train_sources)
        self._check_vocabulary(vocabulary_of(train.rows), where)
        human = [r.name for r in train.rows if r.source == "human"]
        if "human" in c.train_sources and len(human) < c.num_folds:
            raise ReleaseError(f"{rel.csv_path('track2_human')}: expected at least num_folds="
                               f"{c.num_folds} rows to deal into folds, found {len(human)}")
        if not human:
            logging.warning("MER-FG: no human rows (train_sources=%s): every train row has fold "
                            "-1, so there is no validation fold", list(c.train_sources))
        folds = assign_folds(human, c.num_folds, c.fold_seed)
        candidates = rel.track1_track2_candidates()

        clip_inputs = clips.ClipInputs(c, rel, "MER-FG")
        clip_inputs.check([r.name for r in train.rows] + list(candidates))
        report = clip_inputs.report({"train": [r.name for r in train.rows],
                                     "candidates": list(candidates)})
        clip_inputs.require_input(report, "train", len(train.rows), where)
        self.info.metadata.update({
            "release": c.release,
            "release_id": c.release_id,
            "manual_dir": str(manual_dir),
            "release_root": str(rel.root),
            **clip_inputs.metadata(),
            "emotion_wheel": str(wheel.folder),
            "train_sources": list(c.train_sources),
            "num_folds": c.num_folds,
            "fold_seed": c.fold_seed,
            "csv_rows": {**train.csv_rows, "candidates": len(candidates)},
            "counts": {"train": len(train.rows), "candidates": len(candidates)},
            **report,
            **_label_metadata(train, c, folds, candidates),
        })
        return {"train": self._generate_examples(clip_inputs,
                                                 self._train_fields(train.rows, folds)),
                "candidates": self._generate_examples(clip_inputs,
                                                      self._candidate_fields(candidates))}

    def _check_vocabulary(self, found: tuple[str, ...], where: str) -> None:
        want = self.builder_config.vocabulary
        if found == want:
            return
        extra, lost = sorted(set(found) - set(want)), sorted(set(want) - set(found))
        raise ReleaseError(
            f"{where}: expected the {len(want)}-word label vocabulary of the config, found "
            f"{len(found)} words (not in the config: {extra[:clips.SHOW]}; not in the files: "
            f"{lost[:clips.SHOW]}); the config was made from other CSVs or another emotion "
            f"wheel: make it with builder_config() from this release")

    # ---- writing

    def _generate_examples(self, clip_inputs: clips.ClipInputs, rows):
        """`rows`: (name, the example's fields other than its inputs), in split order."""
        return generation.examples(self, rows, functools.partial(named_example, clip_inputs))

    def _train_fields(self, rows, folds):
        position = {w: i for i, w in enumerate(self.builder_config.vocabulary)}
        for row in rows:
            yield row.name, {"name": row.name, "index": np.int32(row.index),
                             "source": row.source,
                             "fold": np.int32(folds.get(row.name, NO_FOLD)),
                             "words": ", ".join(row.words),
                             "labels": multi_hot(row.labels, position)}

    def _candidate_fields(self, names):
        unlabelled = np.zeros(len(self.builder_config.vocabulary), np.uint8)
        for index, name in enumerate(names):
            yield name, {"name": name, "index": np.int32(index), "source": "",
                         "fold": np.int32(NO_FOLD), "words": "", "labels": unlabelled}


def named_example(clip_inputs: clips.ClipInputs, row):
    """The example of one (name, fields other than its inputs) row, keyed by the clip name."""
    name, fields = row
    yield name, {**fields, **clip_inputs.read(name)}


def _label_metadata(train: TrainSet, c: FgConfig, folds: dict, candidates) -> dict:
    """What the labels hold, per source: rows, word counts, rows without a word, the words
    the metric cannot score; logged where something is left out of the labels."""
    by_source = {s: [r for r in train.rows if r.source == s] for s in c.train_sources}
    word_counts = {s: dict.fromkeys(c.vocabulary, 0) for s in c.train_sources}
    outside = collections.Counter()
    for row in train.rows:
        for w in row.labels:
            word_counts[row.source][w] += 1
        outside.update(row.outside)
    no_word = {s: [r.name for r in rows if not r.labels] for s, rows in by_source.items()}
    outside_by_source = {s: sum(len(r.outside) for r in rows) for s, rows in by_source.items()}
    if outside:
        logging.warning("MER-FG train: %d word occurrences (%d distinct words) are outside the "
                        "metric's forms and left out of the labels; most frequent: %s",
                        sum(outside.values()), len(outside), outside.most_common(_TOP))
    for source, names in no_word.items():
        if names:
            logging.warning("MER-FG train: %d of %d %s rows have no word the metric scores "
                            "(kept with all-zero labels; the metric skips such samples); e.g. %s",
                            len(names), len(by_source[source]), source, clips.first(names))
    if train.overlap:
        logging.info("MER-FG train: %d names are in both train CSVs; their human words are "
                     "kept, e.g. %s", len(train.overlap), clips.first(train.overlap))
    in_candidates = sorted(set(r.name for r in train.rows) & set(candidates))
    # The most frequent word set among the rows that have one (ties: the smallest set in sorted
    # order): the baseline answer every model must beat, and the answer for a clip without input.
    sets = collections.Counter(r.labels for r in train.rows if r.labels)
    top_set = min(sets.items(), key=lambda kv: (-kv[1], kv[0]))[0] if sets else ()
    return {
        "most_frequent_set": list(top_set),
        "most_frequent_set_rows": sets.get(top_set, 0),
        "vocabulary": list(c.vocabulary),
        # train rows carrying each vocabulary word, per source (a row counts a word once)
        "word_counts": word_counts,
        "source_rows": {s: len(rows) for s, rows in by_source.items()},  # kept train rows
        "overlap": len(train.overlap),  # names in both CSVs, written once as human rows
        "fold_sizes": np.bincount(list(folds.values()), minlength=c.num_folds).tolist(),
        "empty_openset": {s: sum(not r.words for r in rows) for s, rows in by_source.items()},
        "no_word": {s: len(names) for s, names in no_word.items()},
        "no_word_examples": {s: names[:clips.SHOW] for s, names in no_word.items()},
        # words no metric form matches: never in `labels`, counted here
        "outside_vocabulary": {"occurrences": outside_by_source,
                               "words": dict(sorted(outside.items(),
                                                    key=lambda kv: (-kv[1], kv[0])))},
        "train_in_candidates": in_candidates,  # labelled train rows that are also candidates
    }
