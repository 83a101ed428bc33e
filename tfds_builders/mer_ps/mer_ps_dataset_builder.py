"""TFDS builder for MER-PS (track 4): one example per label second, EEG + fNIRS context windows.

Reads the unzipped release (or the generated demo release) from `manual_dir`; validation and
preprocessing of every requested subject happen in `_split_generators`, before anything is
written (tfds_builders/mer_ps/release.py). The feature spec below is the contract with
merjax/data/pipeline.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from merjax import features
from tfds_builders.mer_ps import release

KIT_TRAIN = tuple(f"test_{i}" for i in range(1, 21))        # the starting kit's split
KIT_VALIDATION = tuple(f"test_{i}" for i in range(21, 25))
_BYTES = tfds.features.Encoding.BYTES   # raw float32 bytes: no per-float proto overhead


def sample_id(subject: str, video: int, second: int) -> str:
    """The challenge's id, e.g. `test_1_V01_T000` (0-based second)."""
    return f"{subject}_V{video:02d}_T{second:03d}"


def config_name(*, release: str, eeg_rate_hz: int, context_s: int, fnirs_bins: int,
                fnirs_types: tuple[int, ...], train_subjects: tuple[str, ...],
                validation_subjects: tuple[str, ...]) -> str:
    """`<release>_eeg<rate>_ctx<s>_bins<n>_<types>_<split>`; split is `kit` or a split hash.

    Every field that changes the records is in the name, so two configs never share a
    prepared folder; the hash covers the ordered subject lists.
    """
    types = "-".join(_type_name(t).lower() for t in fnirs_types)
    if (tuple(train_subjects), tuple(validation_subjects)) == (KIT_TRAIN, KIT_VALIDATION):
        split = "kit"
    else:
        blob = json.dumps([list(train_subjects), list(validation_subjects)])
        split = "split" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    return f"{release}_eeg{eeg_rate_hz}_ctx{context_s}_bins{fnirs_bins}_{types}_{split}"


def _type_name(index: int) -> str:
    if not 0 <= index < len(release.FNIRS_TYPES):
        raise ValueError(f"fNIRS type index must be in 0..{len(release.FNIRS_TYPES) - 1} "
                         f"({', '.join(release.FNIRS_TYPES)}), found {index}")
    return release.FNIRS_TYPES[index]


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
    release: str = "real"

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
            "train_subjects", "validation_subjects")})
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


_CONFIGS: dict[str, MerPsConfig] = {}


def make_config(**fields) -> MerPsConfig:
    """The config for these fields; equal fields give the *same* instance.

    TFDS refuses a config instance that is not the registered one under the same name
    ("Cannot name a custom BuilderConfig the same as an available BuilderConfig"), so
    `make_config(release='demo')` must hand back the instance listed in BUILDER_CONFIGS.
    Treat the returned config as immutable.
    """
    config = MerPsConfig(**fields)
    return _CONFIGS.setdefault(config.name, config)


class Builder(tfds.core.GeneratorBasedBuilder):
    """MER-PS valence/arousal per second from EEG + fNIRS."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: one example per label second, EEG/fNIRS context "
                              "windows, per-(video, second) train-label prior."}
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
                "eeg": tensor(shape=(release.EEG_CHANNELS, c.context_s * c.eeg_rate_hz),
                              dtype=np.float32, encoding=_BYTES),
                "fnirs": tensor(shape=(c.context_s * c.fnirs_bins, len(c.fnirs_types),
                                       release.FNIRS_CHANNELS), dtype=np.float32, encoding=_BYTES),
                "fnirs_mask": tensor(shape=(release.FNIRS_CHANNELS,), dtype=np.bool_),
                "context_mask": tensor(shape=(c.context_s,), dtype=np.bool_),
                "label": tensor(shape=(2,), dtype=np.float32),
                "prior": tensor(shape=(2,), dtype=np.float32),
            }),
            homepage="https://huggingface.co/datasets/MER-PS/MER-PS-trainval",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        try:
            root = dl_manager.manual_dir
        except AssertionError as e:  # TFDS's way of saying the folder is missing or empty
            reason = str(e).splitlines()[0].split(" Create it")[0]
            raise release.ReleaseError(
                f"MER-PS manual_dir unusable: {reason} {release.MANUAL_DIR_HINT}") from e
        inventory = release.check_release(
            str(root), c.train_subjects + c.validation_subjects, expected_kind=c.release)
        subjects = {s: release.load_subject(inventory, s, eeg_rate_hz=c.eeg_rate_hz,
                                            fnirs_bins=c.fnirs_bins, fnirs_types=c.fnirs_types)
                    for s in inventory.subjects}
        prior = features.label_prior(
            {v: [inventory.labels[s, v] for s in c.train_subjects] for v in release.VIDEOS})
        self.info.metadata.update({
            "release": c.release,
            "manual_dir": str(root),
            "source_eeg_rate_hz": inventory.eeg_rate_hz,
            "source_fnirs_rate_hz": inventory.fnirs_rate_hz,
            "eeg_rate_hz": c.eeg_rate_hz,
            "context_s": c.context_s,
            "fnirs_bins": c.fnirs_bins,
            "fnirs_types": [release.FNIRS_TYPES[t] for t in c.fnirs_types],
            "train_subjects": list(c.train_subjects),
            "validation_subjects": list(c.validation_subjects),
            "bad_fnirs_channels": {s: np.flatnonzero(~d.fnirs_mask).tolist()
                                   for s, d in subjects.items()},
            "bad_fnirs_channels_indexing": "0-based (column ch-k of fNIRS_reservations.csv is k-1)",
            "targeted_emotions": (list(inventory.targeted_emotions)
                                  if inventory.targeted_emotions else None),
            "label_scale": [1, 255],
            "label_prior": prior,
        })
        return {
            "train": self._generate_examples([subjects[s] for s in c.train_subjects], prior),
            "validation": self._generate_examples(
                [subjects[s] for s in c.validation_subjects], prior),
        }

    def _generate_examples(self, subjects: list[release.SubjectData], prior: dict):
        c = self.builder_config
        for subject in subjects:
            for video, trial in sorted(subject.trials.items()):
                for second in range(len(trial.labels)):
                    key = sample_id(subject.name, video, second)
                    yield key, {
                        "sample_id": key,
                        "subject": subject.name,
                        "video": np.int32(video),
                        "second": np.int32(second),
                        "eeg": features.eeg_context(trial.eeg, second, c.context_s,
                                                    c.eeg_rate_hz),
                        "fnirs": features.fnirs_context(trial.fnirs, second, c.context_s),
                        "fnirs_mask": subject.fnirs_mask,
                        "context_mask": features.context_mask(second, c.context_s),
                        "label": trial.labels[second],
                        "prior": features.prior_at(prior, video, second),
                    }
