"""What every task hands the train loop: its prepared data and its folds."""
import csv
import dataclasses
import os
import tempfile

from merjax.data import releases
from tfds_builders import prepare as tfds_prepare


@dataclasses.dataclass
class TaskData:
    splits: dict  # split name -> random-access data source (builder.as_data_source)
    info: object  # tfds DatasetInfo of the prepared dataset
    builder_config: object
    release: str  # "demo" or "real"


@dataclasses.dataclass
class Fold:
    name: str | None  # None: no cross-validation, outputs go straight into the workdir
    index: int | None
    train: object
    validation: object
    predict: object | None  # the split the submission is written for


def prepare(config, track, builder_cls, make_builder_config, write_demo, splits):
    """Chooses the release (demo unless data.manual_dir), builds it, returns TaskData.

    `make_builder_config(release, root)` gives the BuilderConfig for this run; the prepared
    dataset must record the same release kind, so a demo build never passes for a real one.
    """
    root, release, data_dir = releases.choose(config.data, track, write_demo)
    builder = tfds_prepare.prepare(
        builder_cls, make_builder_config(release, root), manual_dir=root, data_dir=data_dir,
        num_shards=int(config.data.num_shards))
    recorded = (builder.info.metadata or {}).get("release")
    if recorded != release:
        raise ValueError(f"Prepared dataset {builder.data_dir} records release {recorded!r}; "
                         f"this run expects {release!r}")
    return TaskData({s: builder.as_data_source(s) for s in splits}, builder.info,
                    builder.builder_config, release)


def describe(builder_cls, builder_config):
    """TaskData with the dataset's feature spec but no data: what a benchmark on synthetic
    inputs of the real shapes needs (nothing is read or built)."""
    builder = builder_cls(config=builder_config, data_dir=tempfile.mkdtemp(prefix="merjax-spec-"))
    return TaskData({}, builder.info, builder.builder_config, "synthetic")


def write_csv(path, header, rows):
    """A submission CSV, written aside and renamed so a killed run never leaves half a file."""
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    return path
