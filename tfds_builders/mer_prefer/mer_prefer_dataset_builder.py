"""TFDS builder for MER-Prefer (MER2026 track 3): which of two emotion descriptions of a clip
humans prefer.

Splits:
* `train`: every row of `track3_emoprefer.csv` (EmoPrefer, majority of three annotators) and
  `track3_emopreferv2.csv` (EmoPrefer-V2, one annotator), those of `sources`, in that order. One
  example per CSV row: a clip may be judged in several rows and in both files, each row is its
  own judged pair, so none is merged or dropped; ties (`same`) are kept as well (a training
  signal; the metric leaves them out). `preference` is the metric's encoding, a1=0, a2=1,
  same=2. `fold` in [0, num_folds) is dealt by clip *name* from a seeded shuffle, so all rows of
  a clip share a fold and no clip is on both sides of a train/validation split.
* `candidates`: every row of `track3_candidate.csv` in row order, `index` = row. Names repeat in
  the real file, so a row is keyed by its index, never by its name; `preference` and `fold` are
  -1, `source` is "".

Descriptions. `a1` and `a2` are stored verbatim as Text (the submission repeats them, and they
are there to read), and as zero-padded UTF-8 bytes `a1_bytes`/`a2_bytes` of
`max_description_bytes`, cut on a character boundary by the cutter the subtitles use
(`features.utf8_bytes`), with `a1_length`/`a2_length`. Every cut is counted in the metadata.

Clip inputs (features or raw kind, missing inputs, checks before writing): `clips.py`, as for
MER-Cross and MER-FG, with the English subtitle by default. Names repeat, so every input is
bookkept per distinct name: each name is checked once, its held utterance features are read
once and kept until its last example, and the missing-input report counts distinct clips per
split (`rows_missing` counts the examples).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from pathlib import Path
from typing import NamedTuple

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common, features, generation
from tfds_builders.common import ReleaseError
from tfds_builders.mer2026 import PREFERENCES, Mer2026Release, clips, csvs
# One fold deal for the video tracks (sorted names, seeded shuffle, dealt in turn).
from tfds_builders.mer2026.clips import assign_folds

SOURCES = ("emoprefer", "emopreferv2")
NO_FOLD = -1          # candidates: never in a validation fold
NO_PREFERENCE = -1    # candidates: unlabelled
DESCRIPTIONS = ("a1", "a2")
_CSV_KEYS = {"emoprefer": "track3_emoprefer", "emopreferv2": "track3_emopreferv2"}
_TAGS = {"emoprefer": "1", "emopreferv2": "2"}
_MIN_DESCRIPTION_BYTES = 4  # the widest UTF-8 character: a cut description is never empty


def config_name(c: "PreferConfig") -> str:
    """`<release>_<inputs>_ep<1|2|12>_k<folds>s<seed>_d<max_description_bytes>`, plus `_skip`
    with on_missing='skip' and `_r<release_id>`.

    `<inputs>` is the clip-input part of MER-Cross's names; `ep1`/`ep2`/`ep12` the train sources.
    """
    sources = "".join(_TAGS[s] for s in c.sources)
    name = (f"{c.release}_{clips.inputs_name(c)}_ep{sources}_k{c.num_folds}s{c.fold_seed}_"
            f"d{c.max_description_bytes}")
    name += "_skip" if c.on_missing == "skip" else ""
    return name + (f"_r{c.release_id}" if c.release_id else "")


# eq=False keeps BuilderConfig's identity equality and hashing.
@dataclasses.dataclass(kw_only=True, eq=False)
class PreferConfig(clips.ClipConfig):
    """MER-Prefer inputs, train sources, folds and description size; `name` is derived from
    them (leave it empty, use make_config)."""
    text_language: str = "english"  # the descriptions are English; so is the subtitle kept
    sources: tuple[str, ...] = SOURCES
    num_folds: int = 5
    fold_seed: int = 0
    max_description_bytes: int = 1024

    track = "MER-Prefer"

    def derived_name(self) -> str:
        return config_name(self)

    def __post_init__(self):
        self.sources = clips.ordered_sources(self.sources, SOURCES, "sources")
        self.num_folds, self.fold_seed = clips.fold_settings(self.num_folds, self.fold_seed)
        self.max_description_bytes = int(self.max_description_bytes)
        if self.max_description_bytes < _MIN_DESCRIPTION_BYTES:
            raise ValueError(f"max_description_bytes must be >= {_MIN_DESCRIPTION_BYTES} (one "
                             f"UTF-8 character of any width), found {self.max_description_bytes}")
        given = self.description
        super().__post_init__()
        if not given:
            self.description = (f"{self.description[:-1]}; train from {'+'.join(self.sources)}, "
                                f"{self.num_folds} folds by clip name (seed {self.fold_seed}), "
                                f"descriptions <= {self.max_description_bytes} bytes.")


make_config = common.ConfigRegistry(PreferConfig)


# ---- the rows

class Pair(NamedTuple):
    """One example's own fields: two descriptions of one clip, judged or to be judged."""
    name: str
    source: str        # "emoprefer", "emopreferv2", or "" for a candidate
    index: int         # 0-based data row in its CSV
    a1: str
    a2: str
    preference: int    # a1=0, a2=1, same=2 (csvs.PREFERENCES), or -1 for a candidate


def read_train(rel: Mer2026Release, sources) -> dict[str, tuple[Pair, ...]]:
    """{source: its rows in CSV order}: header, field count, names and preference values are
    checked by the CSV reader, empty descriptions here."""
    out = {}
    for source in SOURCES:
        if source in sources:
            parsed = rel.track3_train(source)
            check_descriptions(rel.csv_path(_CSV_KEYS[source]), parsed)
            out[source] = tuple(Pair(r.name, source, r.row_index, r.a1, r.a2, r.preference_index)
                                for r in parsed)
    return out


def read_candidates(rel: Mer2026Release) -> tuple[Pair, ...]:
    """The candidate rows in row order, repeated names kept."""
    parsed = rel.track3_candidates()
    check_descriptions(rel.csv_path("track3_candidates"), parsed)
    return tuple(Pair(r.name, "", r.row_index, r.a1, r.a2, NO_PREFERENCE) for r in parsed)


def check_descriptions(path: Path, rows) -> None:
    """A ReleaseError naming the first row (data row, line, column) with an empty a1 or a2,
    and how many more there are: a pair with one side missing cannot be compared."""
    empty = [(r.row_index + 1, col, getattr(r, col)) for r in rows for col in DESCRIPTIONS
             if not getattr(r, col).strip()]
    if not empty:
        return
    # Free text may span lines, so the physical line is looked up only on this error path.
    lines = {row: line for row, line, _ in csvs.iter_csv_rows(path, csvs.SCHEMAS[path.name])}
    (row, col, found), more = empty[0], empty[1:clips.SHOW]
    also = "; ".join(f"data row {r} (line {lines[r]}), column {c!r}" for r, c, _ in more)
    raise ReleaseError(
        f"{path}: data row {row} (line {lines[row]}), column {col!r}: expected a non-empty "
        f"emotion description (a pair needs both a1 and a2), found {found!r}"
        + (f"; {len(empty) - 1} more empty description(s): {also}" if more else ""))


def description_bytes(text: str, max_bytes: int) -> tuple[np.ndarray, np.int32]:
    """uint8 [max_bytes]: the UTF-8 bytes of `text` cut on a character boundary, zero-padded,
    and how many are real."""
    utf8 = features.utf8_bytes(text, max_bytes)
    return np.pad(utf8, (0, max_bytes - len(utf8))), np.int32(len(utf8))


def is_cut(text: str, max_bytes: int) -> bool:
    return len(text.encode("utf-8")) > max_bytes


# ---- what the training side uses (tfds_builders/common.py lists it)

DEMO_NAME = clips.DEMO_NAME  # one demo release serves tracks 1-3
write_demo = clips.write_demo
_OWN_FIELDS = ("sources", "num_folds", "fold_seed", "max_description_bytes")


def builder_config(data, root, *, release: str, release_id: str) -> PreferConfig:
    """`config.data` -> the BuilderConfig of this run.

    Reads the clip-input keys MER-Cross reads, plus `sources`, `num_folds`, `fold_seed` and
    `max_description_bytes` where `config.data` has them (else PreferConfig's defaults).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(PreferConfig)}
    own = {k: data[k] if k in data else defaults[k] for k in _OWN_FIELDS}
    own["sources"] = tuple(own["sources"])
    return make_config(release=release, release_id=release_id, **own,
                       **clips.config_fields(data, root))


def release_sources(data, root):
    """The CSVs and the media or feature folders a build reads: what identifies the release."""
    rel = Mer2026Release(root)
    sources = tuple(data.sources) if "sources" in data else SOURCES
    return ([rel.csv_path(_CSV_KEYS[s]) for s in SOURCES if s in sources]
            + [rel.csv_path("track3_candidates"), rel.csv_path("subtitles")]
            + clips.input_sources(data, root))


def _csv_paths(rel: Mer2026Release, sources) -> str:
    return " and ".join(str(rel.csv_path(_CSV_KEYS[s])) for s in SOURCES if s in sources)


class Builder(generation.BeamReadyBuilder):
    """MER-Prefer (track 3): the preferred description of a clip; judged rows (with folds by
    clip) and candidate rows."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: EmoPrefer + EmoPrefer-V2 rows (every row, ties kept) with "
                 "seeded folds by clip name, and every candidate row in order (repeated names "
                 "kept, keyed by row); a1/a2 as text and as UTF-8 bytes cut on a character "
                 "boundary; clip inputs as MER-Cross 1.1.0 (features or raw, missing inputs "
                 "masked and counted).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request access to the gated Hugging Face dataset MERChallenge/MER2026, download it and
    extract the archives (extract_mer2026_archives.sh) for the track-3 subsets. Pass the release
    root (holding track3_emoprefer.csv, track3_emopreferv2.csv, track3_candidate.csv,
    subtitle_chieng.csv, audio/ and openface_face/; flat or nested per-subset layout), or the
    folder holding mer2026-dataset/, as manual_dir, e.g.
    --config.data.manual_dir=/path/to/mer2026-dataset.
    """ + clips.MANUAL_INPUTS
    BUILDER_CONFIGS = [make_config(), make_config(release="demo"),
                       make_config(input_kind="raw"), make_config(input_kind="raw", release="demo")]
    DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        tensor = tfds.features.Tensor
        spec = {"name": tfds.features.Text(),
                "index": tensor(shape=(), dtype=np.int32),       # row in its CSV
                "source": tfds.features.Text(),                  # emoprefer, emopreferv2 or ""
                "preference": tensor(shape=(), dtype=np.int32),  # a1=0, a2=1, same=2; or -1
                "fold": tensor(shape=(), dtype=np.int32)}        # [0, num_folds) or -1
        for col in DESCRIPTIONS:
            spec[col] = tfds.features.Text()  # verbatim, for inspection and the submission
            spec[f"{col}_bytes"] = tensor(shape=(c.max_description_bytes,), dtype=np.uint8,
                                          encoding=clips.BYTES)
            spec[f"{col}_length"] = tensor(shape=(), dtype=np.int32)
        return clips.dataset_info(self, spec)

    # ---- validation (everything here runs before the first example is written)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        manual_dir = common.manual_dir(dl_manager, "MER-Prefer", self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        rel = clips.open_release(c, manual_dir)
        by_source = read_train(rel, c.sources)
        train = tuple(p for rows in by_source.values() for p in rows)
        candidates = read_candidates(rel)
        where = _csv_paths(rel, c.sources)
        clip_names = {"train": list(dict.fromkeys(p.name for p in train)),
                      "candidates": list(dict.fromkeys(p.name for p in candidates))}
        if len(clip_names["train"]) < c.num_folds:
            raise ReleaseError(f"{where}: expected at least num_folds={c.num_folds} distinct "
                               f"clips to deal into folds, found {len(clip_names['train'])}")
        folds = assign_folds(clip_names["train"], c.num_folds, c.fold_seed)

        clip_inputs = clips.ClipInputs(c, rel, "MER-Prefer")
        clip_inputs.check(clip_names["train"] + clip_names["candidates"])
        report = clip_inputs.report(clip_names)  # per distinct clip: inputs are per name
        clip_inputs.require_input(report, "train", len(clip_names["train"]), where)
        rows = {"train": train, "candidates": candidates}
        self.info.metadata.update({
            "release": c.release,
            "release_id": c.release_id,
            "manual_dir": str(manual_dir),
            "release_root": str(rel.root),
            **clip_inputs.metadata(),
            "sources": list(c.sources),
            "num_folds": c.num_folds,
            "fold_seed": c.fold_seed,
            "max_description_bytes": c.max_description_bytes,
            "csv_rows": {**{s: len(r) for s, r in by_source.items()},
                         "candidates": len(candidates)},
            "counts": {s: len(r) for s, r in rows.items()},  # examples written: every row
            **report,
            **_rows_missing(report, rows),
            **_pair_metadata(by_source, candidates, folds, c),
        })
        # Reads left per name over both splits: a held input is released on its name's last.
        reads = collections.Counter(p.name for r in rows.values() for p in r)
        return {split: self._generate_examples(clip_inputs, r, folds, reads)
                for split, r in rows.items()}

    # ---- writing

    def _generate_examples(self, clip_inputs: clips.ClipInputs, pairs, folds, reads):
        return generation.examples(self, pairs, functools.partial(
            pair_example, clip_inputs, self.builder_config.max_description_bytes, folds, reads))


def pair_example(clip_inputs: clips.ClipInputs, size: int, folds: dict, reads, pair: Pair):
    """The example of one CSV row (pair), keyed by its CSV and index (names repeat).

    `reads`: reads left per name over both splits; a held input is released on its name's
    last read (a Beam worker holds none, see ClipInputs.__getstate__).
    """
    reads[pair.name] -= 1
    example = {"name": pair.name, "index": np.int32(pair.index), "source": pair.source,
               "preference": np.int32(pair.preference),
               "fold": np.int32(folds[pair.name] if pair.source else NO_FOLD)}
    for col in DESCRIPTIONS:
        text = getattr(pair, col)
        example[col] = text
        example[f"{col}_bytes"], example[f"{col}_length"] = description_bytes(text, size)
    example.update(clip_inputs.read(pair.name, keep=reads[pair.name] > 0))
    yield f"{pair.source or 'candidates'}/{pair.index}", example

def _rows_missing(report: dict, rows: dict) -> dict:
    """The examples (rows) whose clip misses some input, or every input, per split: the
    report counts distinct clips, and a repeated name is several examples."""
    out = {"rows_missing": {}, "rows_no_input": {}}
    for split, pairs in rows.items():
        lacking, blind = set(report["missing"][split]), set(report["no_input"][split])
        out["rows_missing"][split] = sum(p.name in lacking for p in pairs)
        out["rows_no_input"][split] = sum(p.name in blind for p in pairs)
    return out


def _pair_metadata(by_source: dict, candidates, folds: dict, c: PreferConfig) -> dict:
    """What the pairs hold: preferences per source, folds, repeated names, cut descriptions;
    logged where something is worth a look."""
    train = [p for rows in by_source.values() for p in rows]
    rows_per_name = collections.Counter(p.name for p in train)
    repeated = collections.Counter(p.name for p in candidates)
    duplicates = [n for n, k in repeated.items() if k > 1]
    splits = {"train": train, "candidates": candidates}
    cut = {s: sum(is_cut(getattr(p, col), c.max_description_bytes)
                  for p in pairs for col in DESCRIPTIONS) for s, pairs in splits.items()}
    longest = {s: max((len(getattr(p, col).encode("utf-8")) for p in pairs for col in DESCRIPTIONS),
                      default=0) for s, pairs in splits.items()}
    for split, n in cut.items():
        if n:
            logging.warning("MER-Prefer %s: %d of %d descriptions are longer than "
                            "max_description_bytes=%d and cut in a1_bytes/a2_bytes (the longest "
                            "has %d bytes; a1/a2 keep the full text)", split, n,
                            2 * len(splits[split]), c.max_description_bytes, longest[split])
    if duplicates:
        logging.info("MER-Prefer candidates: %d names repeat (%d rows more than names), each row "
                     "kept; e.g. %s", len(duplicates), len(candidates) - len(repeated),
                     clips.first(duplicates))
    in_candidates = sorted(set(rows_per_name) & set(repeated))
    if in_candidates:
        logging.warning("MER-Prefer: %d train clips are also candidates, e.g. %s",
                        len(in_candidates), clips.first(in_candidates))
    fold_of = [folds[p.name] for p in train]
    return {
        "preference_names": list(PREFERENCES),  # the index of each preference value
        "preference_counts": {s: {v: sum(p.preference == i for p in rows)
                                  for i, v in enumerate(PREFERENCES)}
                              for s, rows in by_source.items()},
        "fold_sizes": np.bincount(fold_of, minlength=c.num_folds).tolist(),   # train rows
        "fold_clips": np.bincount(list(folds.values()), minlength=c.num_folds).tolist(),
        "train_clips": len(rows_per_name),
        "repeated_train_names": sum(k > 1 for k in rows_per_name.values()),  # in 2+ rows
        "candidate_clips": len(repeated),
        "duplicate_candidate_names": len(duplicates),  # names in 2+ candidate rows
        "duplicate_candidate_rows": len(candidates) - len(repeated),  # rows beyond the first
        "duplicate_candidate_examples": duplicates[:clips.SHOW],
        "cut_descriptions": cut,           # descriptions (a1 and a2 each) cut in <col>_bytes
        "longest_description_bytes": longest,
        "train_in_candidates": in_candidates,  # judged clips that are also candidates
    }
