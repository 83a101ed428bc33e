"""config.data -> ready TaskData: the one boundary between the training side and the builders.

Here, and only here: the choice between the user's real release (`data.manual_dir`) and the
generated demo release, said loudly; writing the demo release; the builder's config; the identity
of the release's files; building the TFDS dataset (ArrayRecord shards) unless exactly this
release was already prepared with these settings; and the checks that the records answer this
release. A builder module offers what tfds_builders/common.py lists, nothing more is used.

Reading back: `builder.as_data_source(split)` gives random access to decoded examples (`Text`
as bytes, tensors as numpy arrays); `tfds.builder_from_directory(dir)` reads a prepared dataset
without the builder code. `as_dataset`/`tfds.load` need TensorFlow and cannot read ArrayRecord.
"""
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time

from absl import logging

from tfds_builders import common

DEMO, REAL = "demo", "real"


@dataclasses.dataclass
class TaskData:
    splits: dict  # split name -> random-access data source (builder.as_data_source)
    info: object  # tfds DatasetInfo: features (every shape a task needs) and metadata
    builder_config: object
    release: str  # "demo", "real" or "synthetic"
    release_id: str  # fingerprint of the release files ("" for synthetic inputs)


def builder_module(task):
    """The builder module of `task.DATASET` (tfds_builders/<name>/<name>_dataset_builder.py)."""
    return importlib.import_module(
        f"tfds_builders.{task.DATASET}.{task.DATASET}_dataset_builder")


def prepare(config, task, *, announce=True):
    """The task's splits of the prepared dataset for `config.data`, built first if needed.

    `announce` prints the demo banner (train mode); other modes get a one-line note. With
    several processes, process 0 writes the demo release and builds first while the others
    wait, then they open what it built (or, without a shared file system, build their own).
    """
    return _process_0_first(lambda: _prepare(config, task, announce=announce))


def _process_0_first(fn):
    """fn() on process 0, then on the others: two processes never write the same folder.

    The others wait in a collective. It is not made to wait for hours: on a cluster, build the
    real release before launching (launch/build.py).
    """
    import jax
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils
    import numpy as np
    result = error = None
    if jax.process_index() == 0:
        try:
            result = fn()
        except Exception as e:  # the others must hear of it, not wait forever
            error = e
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("process 0 failed to prepare the dataset (its log says why); "
                           "this process stops too")
    return result if jax.process_index() == 0 else fn()


def _prepare(config, task, *, announce):
    module = builder_module(task)
    data = config.data
    if data.manual_dir:
        root, release = _real_root(data.manual_dir, task), REAL
        data_dir = tfds_dir(data)
        logging.info("%s: REAL release at %s", task.DATASET, root)
    else:
        root, release, data_dir = _demo_root(data, module)
        message = (f"{task.DATASET}: DEMO DATA. Training on the generated demo release at {root} "
                   f"({data.demo.to_dict()}). It is NOT the MER2026 data. For the real release "
                   f"pass --config.data.manual_dir=/path/to/the/unzipped/release")
        if announce:
            banner(message)
        else:
            logging.warning("%s: using the generated DEMO release at %s (not MER2026 data)",
                            task.DATASET, root)
    start = time.time()
    release_id = common.release_fingerprint(module.release_sources(data, root))
    logging.info("release fingerprint %s (%.1f s)", release_id, time.time() - start)
    builder_config = module.builder_config(data, root, release=release, release_id=release_id)
    builder = build(module.Builder, builder_config, manual_dir=root, data_dir=data_dir,
                    num_shards=int(data.num_shards))
    metadata = builder.info.metadata or {}
    for key, want in (("release", release), ("release_id", release_id)):
        if metadata.get(key) != want:
            raise common.ReleaseError(
                f"{builder.data_path}: the prepared dataset records {key}={metadata.get(key)!r}, "
                f"this run expects {want!r}; delete that folder to rebuild it")
    return TaskData({s: builder.as_data_source(s) for s in task.SPLITS}, builder.info,
                    builder.builder_config, release, release_id)


def describe(config, task):
    """TaskData with the dataset's feature spec but no data: what a benchmark on synthetic
    inputs of the real shapes needs (nothing is read or built)."""
    module = builder_module(task)
    builder_config = module.builder_config(config.data, None, release=DEMO, release_id="")
    builder = module.Builder(config=builder_config,
                             data_dir=tempfile.mkdtemp(prefix="merjax-spec-"))
    return TaskData({}, builder.info, builder.builder_config, "synthetic", "")


def build(builder_cls, builder_config, *, manual_dir, data_dir, num_shards=None):
    """Builds `builder_cls(config=builder_config)` under `data_dir` unless it already exists.

    The config's name covers the settings and the release fingerprint, so an existing folder
    holds exactly these records. A failed build leaves no folder behind. `num_shards=None` lets
    TFDS size shards (about 64 MB minimum each); tests pass a fixed number.
    """
    import tensorflow_datasets as tfds  # lazy: --help and config errors stay fast

    builder = builder_cls(config=builder_config, data_dir=data_dir)
    config_dir = os.path.dirname(os.fspath(builder.data_path))
    # Folders this build may create: TFDS's download folder, the dataset's and the config's.
    folders = [os.fspath(data_dir), os.path.join(data_dir, "downloads"),
               os.path.dirname(config_dir), config_dir]
    created = [d for d in folders if not os.path.exists(d)]
    existed = builder.data_path.exists()
    try:
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir,
                                                         num_shards=num_shards))
    except BaseException:
        for folder in (config_dir, os.path.dirname(config_dir)):
            if folder in created:  # only this failed build wrote there (TFDS's .config too)
                shutil.rmtree(folder, ignore_errors=True)
        for folder in reversed(created):  # innermost first; never a folder holding files
            if os.path.isdir(folder) and not any(f for _, _, f in os.walk(folder)):
                shutil.rmtree(folder, ignore_errors=True)
        raise
    logging.info("%s %s: %s", builder.info.full_name, "reused" if existed else "prepared",
                 builder.data_path)
    for name, split in builder.info.splits.items():
        logging.info("  %s: %d examples in %d shards", name, split.num_examples,
                     split.num_shards)
    return builder


def tfds_dir(data_config):
    return os.path.expanduser(data_config.tfds_dir or os.environ.get("TFDS_DATA_DIR")
                              or "~/tensorflow_datasets")


def _real_root(manual_dir, task):
    root = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(root):
        raise common.ReleaseError(
            f"{root}: config.data.manual_dir does not exist or is not a folder; pass the unzipped "
            f"{task.DATASET} release there, or leave it empty for the demo release")
    return root


def _demo_root(data_config, module):
    """(release root, DEMO, prepared data dir) of the demo for these settings, written once.

    Each demo setting has its own folder, so two settings never share a release or records.
    """
    demo = data_config.demo.to_dict()
    digest = hashlib.sha256(json.dumps(demo, sort_keys=True).encode()).hexdigest()[:8]
    base = data_config.demo_dir or os.path.join(tfds_dir(data_config), "merjax_demo")
    home = os.path.join(os.path.abspath(os.path.expanduser(base)),
                        f"{module.DEMO_NAME}-{digest}")
    root = os.path.join(home, "release")
    if not os.path.isdir(root):
        # Written aside and renamed, so a killed run never leaves a half-written release behind.
        partial = f"{root}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            module.write_demo(partial, data_config.demo)
            os.replace(partial, root)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return root, DEMO, os.path.join(home, "tfds")


def banner(message):
    line = "!" * min(100, len(message) + 8)
    logging.warning("\n%s\n!!! %s\n%s", line, message, line)
