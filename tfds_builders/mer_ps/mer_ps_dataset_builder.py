"""TFDS builder for MER-PS (track 4): one example per label second, EEG + fNIRS context windows.

Reads the unzipped release (or the generated demo release) from `manual_dir`; validation and
preprocessing of every requested subject happen in `_split_generators`, before anything is
written (tfds_builders/mer_ps/release.py). The feature spec below is the contract with
merjax/data/pipeline.py. A training example's `prior` leaves its own subject out
(`train_priors`); validation examples and the metadata's `label_prior` use every training subject.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import common, features, generation
from tfds_builders.mer_ps import demo, release, signals
from tfds_builders.mer_ps.signals import sample_id

KIT_TRAIN = tuple(f"test_{i}" for i in range(1, 21))        # the starting kit's split
KIT_VALIDATION = tuple(f"test_{i}" for i in range(21, 25))
_BYTES = tfds.features.Encoding.BYTES   # raw float32 bytes: no per-float proto overhead


def config_name(*, release: str, eeg_rate_hz: int, context_s: int, fnirs_bins: int,
                fnirs_types: tuple[int, ...], train_subjects: tuple[str, ...],
                validation_subjects: tuple[str, ...], fnirs_reservations: bool = False,
                release_id: str = "") -> str:
    """`<release>_eeg<rate>_ctx<s>_bins<n>_<types>[_res]_<split>[_r<release_id>]`; split is
    `kit` or a split hash, `_res` marks masks that also drop fNIRS_reservations.csv's 0s.

    Every field that changes the records is in the name, so two configs never share a
    prepared folder; the hash covers the ordered subject lists, and `release_id` (the files'
    fingerprint) keeps another release, or one changed in place, from reusing these records.
    """
    types = "-".join(_type_name(t).lower() for t in fnirs_types)
    if (tuple(train_subjects), tuple(validation_subjects)) == (KIT_TRAIN, KIT_VALIDATION):
        split = "kit"
    else:
        blob = json.dumps([list(train_subjects), list(validation_subjects)])
        split = "split" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    res = "_res" if fnirs_reservations else ""
    name = f"{release}_eeg{eeg_rate_hz}_ctx{context_s}_bins{fnirs_bins}_{types}{res}_{split}"
    return name + (f"_r{release_id}" if release_id else "")


def train_priors(labels: dict, train_subjects: tuple[str, ...]) -> tuple[dict, dict[str, dict]]:
    """(the all-training-subjects prior table, subject -> the prior table of its examples).

    `labels` maps (subject, video) -> [T, 2]. A training example's prior leaves its own subject
    out: with it, the prior already holds 1/N of the example's label, so a residual head learns
    corrections shrunk by about 1/N, which it then applies at full size to unseen subjects.
    Validation subjects, export and the hidden-test predictor use the all-training table.
    With one training subject there are no others: its examples get the all-training table
    (their own labels, so there the prior equals the label) and a warning says so.
    """
    def table(members):
        return features.label_prior(
            {v: [labels[s, v] for s in members] for v in signals.VIDEOS})

    everyone = table(train_subjects)
    if len(train_subjects) == 1:
        logging.warning(
            "MER-PS: one training subject (%s): the leave-one-subject-out prior is undefined, so "
            "its training examples get the prior of all training subjects, which is their own "
            "label (no residual left to learn). Use two or more training subjects",
            train_subjects[0])
        return everyone, {train_subjects[0]: everyone}
    return everyone, {s: table([o for o in train_subjects if o != s]) for s in train_subjects}


def _type_name(index: int) -> str:
    if not 0 <= index < len(signals.FNIRS_TYPES):
        raise ValueError(f"fNIRS type index must be in 0..{len(signals.FNIRS_TYPES) - 1} "
                         f"({', '.join(signals.FNIRS_TYPES)}), found {index}")
    return signals.FNIRS_TYPES[index]


# eq=False keeps BuilderConfig's identity equality and hashing (a generated __eq__ would make
# configs unhashable).
@dataclasses.dataclass(kw_only=True, eq=False)
class MerPsConfig(tfds.core.BuilderConfig):
    """MER-PS preprocessing and split; `name` is derived from the fields (leave it empty)."""
    name: str = ""
    eeg_rate_hz: int = 128
    context_s: int = 2
    fnirs_bins: int = 4
    fnirs_types: tuple[int, ...] = (0, 1, 2)
    train_subjects: tuple[str, ...] = KIT_TRAIN
    validation_subjects: tuple[str, ...] = KIT_VALIDATION
    fnirs_reservations: bool = False  # also drop the channels fNIRS_reservations.csv marks 0
    release: str = "real"
    release_id: str = ""  # fingerprint of the release files (tfds_builders.common)

    def __post_init__(self):
        self.fnirs_types = tuple(int(t) for t in self.fnirs_types)
        self.train_subjects = tuple(self.train_subjects)
        self.validation_subjects = tuple(self.validation_subjects)
        if self.release not in ("demo", "real"):
            raise ValueError(f"release must be 'demo' or 'real', found {self.release!r}")
        for field in ("eeg_rate_hz", "context_s", "fnirs_bins"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field} must be >= 1, found {getattr(self, field)}")
        if not self.fnirs_types or len(set(self.fnirs_types)) != len(self.fnirs_types):
            raise ValueError(
                f"fnirs_types must be distinct and non-empty, found {self.fnirs_types}")
        for split in ("train_subjects", "validation_subjects"):
            subjects = getattr(self, split)
            if not subjects or len(set(subjects)) != len(subjects):
                raise ValueError(f"{split} must be distinct and non-empty, found {subjects}")
        both = sorted(set(self.train_subjects) & set(self.validation_subjects))
        if both:
            raise ValueError(f"subjects in both train and validation (splits must be "
                             f"subject-disjoint): {both}")
        derived = config_name(**{f: getattr(self, f) for f in (
            "release", "eeg_rate_hz", "context_s", "fnirs_bins", "fnirs_types",
            "train_subjects", "validation_subjects", "fnirs_reservations", "release_id")})
        if self.name and self.name != derived:
            raise ValueError(f"config name {self.name!r} does not match its fields ({derived!r});"
                             " leave name empty or use make_config()")
        self.name = derived
        if not self.description:
            self.description = (
                f"MER-PS {self.release} release: EEG at {self.eeg_rate_hz} Hz and fNIRS "
                f"({', '.join(_type_name(t) for t in self.fnirs_types)}) in {self.fnirs_bins} "
                f"bins/s over a {self.context_s} s context; {len(self.train_subjects)} train / "
                f"{len(self.validation_subjects)} validation subjects.")


make_config = common.ConfigRegistry(MerPsConfig)

# ---- what the training side uses (tfds_builders/common.py lists it)

DEMO_NAME = "mer_ps"


def subjects(numbers) -> tuple[str, ...]:
    """Config subject numbers -> the release's folder names (`test_<n>`)."""
    return tuple(f"test_{int(n)}" for n in numbers)


def builder_config(data, root, *, release: str, release_id: str) -> MerPsConfig:
    """`config.data` -> the BuilderConfig of this run."""
    del root  # every setting is in config.data
    return make_config(
        eeg_rate_hz=int(data.eeg_rate_hz), context_s=int(data.context_s),
        fnirs_bins=int(data.fnirs_bins), fnirs_types=tuple(int(t) for t in data.fnirs_types),
        train_subjects=subjects(data.train_subjects),
        validation_subjects=subjects(data.validation_subjects),
        fnirs_reservations=bool(data.fnirs_reservations), release=release,
        release_id=release_id)


def release_sources(data, root):
    del data
    return [root]


def write_demo(root, demo_config):
    demo.write_demo_release(
        root, seed=demo_config.seed, num_subjects=demo_config.num_subjects,
        seconds=(demo_config.min_seconds, demo_config.max_seconds),
        eeg_rate_hz=demo_config.eeg_rate_hz)


class Builder(generation.BeamReadyBuilder):
    """MER-PS valence/arousal per second from EEG + fNIRS."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: one example per label second, EEG/fNIRS context windows, "
                 "per-(video, second) train-label prior.",
        "1.1.0": "Training examples' prior leaves their own subject out; optional side files may "
                 "be missing; metadata records the fNIRS_reservations.csv check.",
        "1.2.0": "fNIRS channels masked by a rule on the signals (signals.channel_rule), the "
                 "rule the code submission applies to hidden subjects; fNIRS_reservations.csv "
                 "adds to it only with fnirs_reservations=True.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Request access to the gated Hugging Face dataset MER-PS/MER-PS-trainval
    (https://huggingface.co/datasets/MER-PS/MER-PS-trainval), download its zip and unzip it.
    Pass the folder MER_PS_codabench_public_trainval/ (holding data/, annotations/ and
    fNIRS_reservations.csv) as manual_dir, e.g.
    --config.data.manual_dir=/path/to/MER_PS_codabench_public_trainval.
    Configs with release='demo' expect the generated demo release instead
    (tfds_builders/mer_ps/demo.py).
    """
    BUILDER_CONFIGS = [make_config(), make_config(release="demo")]
    DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        tensor = tfds.features.Tensor
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "sample_id": tfds.features.Text(),
                "subject": tfds.features.Text(),
                "video": tensor(shape=(), dtype=np.int32),
                "second": tensor(shape=(), dtype=np.int32),
                "eeg": tensor(shape=(signals.EEG_CHANNELS, c.context_s * c.eeg_rate_hz),
                              dtype=np.float32, encoding=_BYTES),
                "fnirs": tensor(shape=(c.context_s * c.fnirs_bins, len(c.fnirs_types),
                                       signals.FNIRS_CHANNELS), dtype=np.float32, encoding=_BYTES),
                "fnirs_mask": tensor(shape=(signals.FNIRS_CHANNELS,), dtype=np.bool_),
                "context_mask": tensor(shape=(c.context_s,), dtype=np.bool_),
                "label": tensor(shape=(2,), dtype=np.float32),
                "prior": tensor(shape=(2,), dtype=np.float32),
            }),
            homepage="https://huggingface.co/datasets/MER-PS/MER-PS-trainval",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        root = common.manual_dir(dl_manager, "MER-PS", release.MANUAL_DIR_HINT)
        inventory = release.check_release(
            str(root), c.train_subjects + c.validation_subjects, expected_kind=c.release)
        subjects = release.load_subjects(inventory, eeg_rate_hz=c.eeg_rate_hz,
                                         fnirs_bins=c.fnirs_bins, fnirs_types=c.fnirs_types,
                                         use_reservations=c.fnirs_reservations)
        prior, train_prior = train_priors(inventory.labels, c.train_subjects)
        train_rule = ("train examples: mean over the other training subjects "
                      "(leave-one-subject-out)" if len(c.train_subjects) > 1 else
                      "train examples: the one training subject's own labels (no other subject)")
        self.info.metadata.update({
            "release": c.release,
            "release_id": c.release_id,
            "manual_dir": str(root),
            "source_eeg_rate_hz": inventory.eeg_rate_hz,
            "source_fnirs_rate_hz": inventory.fnirs_rate_hz,
            "eeg_rate_hz": c.eeg_rate_hz,
            "context_s": c.context_s,
            "fnirs_bins": c.fnirs_bins,
            "fnirs_types": [signals.FNIRS_TYPES[t] for t in c.fnirs_types],
            "train_subjects": list(c.train_subjects),
            "validation_subjects": list(c.validation_subjects),
            "bad_fnirs_channels": {s: np.flatnonzero(~d.fnirs_mask).tolist()
                                   for s, d in subjects.items()},
            "bad_fnirs_channels_indexing": "0-based (column ch-k of fNIRS_reservations.csv is k-1)",
            "fnirs_channel_rule": {s: d.channel_rule for s, d in subjects.items()},
            "fnirs_mask_rule": (
                "signals.channel_rule (non-finite, flat or outlier variance in the types read)"
                + (" and fNIRS_reservations.csv's 0s" if c.fnirs_reservations else "")),
            "targeted_emotions": (list(inventory.targeted_emotions)
                                  if inventory.targeted_emotions else None),
            "missing_side_files": list(inventory.missing_side_files),
            "reservation_check": {s: d.reservation_check for s, d in subjects.items()},
            "label_scale": [1, 255],
            # The table of export and prediction: every training subject.
            "label_prior": prior,
            "prior_rule": train_rule + "; validation examples and label_prior: mean over all "
                                       "training subjects",
        })
        return {
            "train": self._generate_examples([subjects[s] for s in c.train_subjects],
                                             train_prior),
            "validation": self._generate_examples(
                [subjects[s] for s in c.validation_subjects],
                {s: prior for s in c.validation_subjects}),
        }

    def _generate_examples(self, subjects: list[release.SubjectData], priors: dict[str, dict]):
        """`priors`: subject -> the label-prior table its examples read."""
        return generation.examples(
            self, [(subject, priors[subject.name]) for subject in subjects],
            functools.partial(subject_examples, self.builder_config))


def subject_examples(c: MerPsConfig, item):
    """(key, example) of every label second of one (subject, its prior table)."""
    subject, prior = item
    for video, trial in sorted(subject.trials.items()):
        for second in range(len(trial.labels)):
            key = sample_id(subject.name, video, second)
            yield key, {
                "sample_id": key,
                "subject": subject.name,
                "video": np.int32(video),
                "second": np.int32(second),
                "eeg": features.eeg_context(trial.eeg, second, c.context_s, c.eeg_rate_hz),
                "fnirs": features.fnirs_context(trial.fnirs, second, c.context_s),
                "fnirs_mask": subject.fnirs_mask,
                "context_mask": features.context_mask(second, c.context_s),
                "label": trial.labels[second],
                "prior": features.prior_at(prior, video, second),
            }
