"""TFDS builder for MER-Cross (MER2026 track 1): `train` (track1_train.csv) and `candidates`.

The clip inputs (features or raw kind, what makes an input missing, the checks before anything
is written, the missing-input metadata) are those of every video track and live in
`tfds_builders.mer2026.clips`; this module adds what is track-1's own: its CSVs, the 6-class
label, the majority label and the two splits.

Every CSV row becomes one example. With on_missing='skip' a clip missing every input has every
length 0 (the training side answers it with the majority class).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common, generation
from tfds_builders.mer2026 import TRACK1_LABELS, Mer2026Release, clips
# Re-exported: the names callers of this module (and its tests) know the inputs by.
from tfds_builders.mer2026.clips import (EMPTY_FILE, EMPTY_SUBTITLE, FEATURE_DIMS,  # noqa: F401
                                         FEATURE_DIRS, NO_FILE, NO_SUBTITLE, ROLES)


def config_name(c: "CrossConfig") -> str:
    """`<release>_features_<utt|frame<max_frames>>_<hash>` or
    `<release>_raw_mel<n>_a<seconds>s_f<faces>x<size>_<zh|en><max_text_bytes>`, plus `_skip`
    with on_missing='skip'.

    Every field that changes the records is in the name; the hash (8 hex digits) covers the
    feature folder names, their dims and `features_root`.
    """
    name = f"{c.release}_{clips.inputs_name(c)}"
    name += "_skip" if c.on_missing == "skip" else ""
    return name + (f"_r{c.release_id}" if c.release_id else "")


# eq=False keeps BuilderConfig's identity equality and hashing.
@dataclasses.dataclass(kw_only=True, eq=False)
class CrossConfig(clips.ClipConfig):
    """MER-Cross inputs; `name` is derived from the fields (leave it empty, use make_config).

    Its fields are the clip-input fields of `clips.ClipConfig` (the Chinese subtitle is the
    default text, as in MERTools' track-1 baseline).
    """
    track = "MER-Cross"

    def derived_name(self) -> str:
        return config_name(self)


make_config = common.ConfigRegistry(CrossConfig)

# ---- what the training side uses (tfds_builders/common.py lists it)

DEMO_NAME = clips.DEMO_NAME  # one demo release serves tracks 1-3
write_demo = clips.write_demo


def builder_config(data, root, *, release: str, release_id: str) -> CrossConfig:
    """`config.data` -> the BuilderConfig of this run."""
    return make_config(release=release, release_id=release_id,
                       **clips.config_fields(data, root))


def release_sources(data, root):
    """The CSVs and the media or feature folders a build reads: what identifies the release."""
    rel = Mer2026Release(root)
    return [rel.root / name for name in ("track1_train.csv", "track1_track2_candidate.csv",
                                         "subtitle_chieng.csv")] + clips.input_sources(data, root)


class Builder(generation.BeamReadyBuilder):
    """MER-Cross (track 1): listener emotion, 6 classes; train rows and candidates."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: MERTools features (utt or pooled frames) or raw log-mel + "
                 "faces + subtitle; splits train and candidates.",
        "1.1.0": "Fixed shapes with <input>_length (and faces_length). Every CSV row is written: "
                 "with on_missing='skip' a missing input is zeros with length 0, and the "
                 "metadata counts missing inputs per split. An empty feature file (T = 0), wav "
                 "or OpenFace npy is a missing input.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request access to the gated Hugging Face dataset MERChallenge/MER2026, download it and
    extract the archives (extract_mer2026_archives.sh) for the track-1 train and the
    track1_track2 candidate subsets. Pass the release root (holding track1_train.csv,
    track1_track2_candidate.csv, subtitle_chieng.csv, audio/ and openface_face/; flat or nested
    per-subset layout), or the folder holding mer2026-dataset/, as manual_dir, e.g.
    --config.data.manual_dir=/path/to/mer2026-dataset.
    """ + clips.MANUAL_INPUTS
    BUILDER_CONFIGS = [make_config(), make_config(release="demo"),
                       make_config(input_kind="raw"), make_config(input_kind="raw", release="demo")]
    DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

    def _info(self) -> tfds.core.DatasetInfo:
        tensor = tfds.features.Tensor
        spec = {"name": tfds.features.Text(),
                "label": tensor(shape=(), dtype=np.int32),
                "index": tensor(shape=(), dtype=np.int32)}
        return clips.dataset_info(self, spec)

    # ---- validation (everything here runs before the first example is written)

    def _split_generators(self, dl_manager):
        c = self.builder_config
        manual_dir = common.manual_dir(dl_manager, "MER-Cross", self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        rel = clips.open_release(c, manual_dir)
        train = rel.track1_train()
        rows = {"train": [(i, r.name, r.label_index) for i, r in enumerate(train)],
                "candidates": [(i, n, -1) for i, n in enumerate(rel.track1_track2_candidates())]}
        clip_inputs = clips.ClipInputs(c, rel, "MER-Cross")
        clip_inputs.check(n for split in rows.values() for _, n, _ in split)
        report = clip_inputs.report({s: [n for _, n, _ in r] for s, r in rows.items()})
        clip_inputs.require_input(report, "train", len(rows["train"]),
                                  rel.csv_path("track1_train"))
        label_counts = np.bincount([r.label_index for r in train], minlength=len(TRACK1_LABELS))
        self.info.metadata.update({
            "release": c.release,
            "release_id": c.release_id,
            "manual_dir": str(manual_dir),
            "release_root": str(rel.root),
            **clip_inputs.metadata(),
            "label_names": list(TRACK1_LABELS),
            "csv_rows": {s: len(r) for s, r in rows.items()},
            "counts": {s: len(r) for s, r in rows.items()},  # examples written: every row
            **report,
            # Every train row's label, so the training side can answer no-input candidates
            # with the majority class (argmax: ties go to the lowest label index).
            "train_label_counts": dict(zip(TRACK1_LABELS, label_counts.tolist())),
            "majority_label": int(np.argmax(label_counts)),
        })
        return {split: self._generate_examples(clip_inputs, r) for split, r in rows.items()}

    # ---- writing

    def _generate_examples(self, clip_inputs: clips.ClipInputs, rows):
        return generation.examples(self, rows, functools.partial(row_example, clip_inputs))


def row_example(clip_inputs: clips.ClipInputs, row):
    """The example of one (index, name, label) row: a pair keyed by the clip name."""
    index, name, label = row
    example = {"name": name, "label": np.int32(label), "index": np.int32(index)}
    example.update(clip_inputs.read(name))
    yield name, example
