"""Prepares any track's TFDS dataset as ArrayRecord shards (no TensorFlow needed).

Reading back: `builder.as_data_source(split)` (or `tfds.data_source(name, data_dir=...)`, or
`tfds.builder_from_directory(dir)` without the builder code) gives random access to decoded
examples: `Text` features come back as `bytes`, tensors as numpy arrays, scalars as numpy
scalars. `as_dataset`/`tfds.load` need TensorFlow and cannot read ArrayRecord anyway.
"""
from __future__ import annotations

from absl import logging
import tensorflow_datasets as tfds


def prepare(builder_cls, builder_config, *, manual_dir, data_dir,
            num_shards: int | None = None) -> tfds.core.DatasetBuilder:
    """Builds `builder_cls(config=builder_config)` under `data_dir` unless it already exists.

    TFDS itself skips generation when `<data_dir>/<name>/<config>/<version>/` exists, so a
    second call only reads the stored dataset info. `num_shards=None` lets TFDS size shards
    (about 64 MB minimum each); tests pass a fixed number.
    """
    builder = builder_cls(config=builder_config, data_dir=data_dir)
    existed = builder.data_path.exists()
    if existed:
        stored = (builder.info.metadata or {}).get("manual_dir")
        if stored is not None and manual_dir is not None and str(stored) != str(manual_dir):
            logging.warning("%s: reusing data prepared from manual_dir=%s, not %s",
                            builder.data_path, stored, manual_dir)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir,
                                                     num_shards=num_shards))
    logging.info("%s %s: %s", builder.info.full_name, "reused" if existed else "prepared",
                 builder.data_path)
    for name, split in builder.info.splits.items():
        logging.info("  %s: %d examples in %d shards", name, split.num_examples,
                     split.num_shards)
    return builder
