"""How a builder's examples are generated: in this process, or as an Apache Beam pipeline.

Every track's builder writes its examples through `examples(builder, items, per_item)`: the
same `per_item(item) -> (key, example) pairs` serves both ways. In-process it is a generator
over `items`; when the build asks for Beam it is `beam.Create(items) | beam.FlatMap(per_item)`,
which TFDS runs as its Beam-based generation (the same encoding, key hashing, shuffling and
ArrayRecord writer), so both ways write the same records in the same order; only the shard
boundaries differ (Beam cuts shards by key-hash range, the in-process writer by equal counts).

A build asks for Beam through its `tfds.download.DownloadConfig(beam_runner=...,
beam_options=...)`, or, for builds that go through merjax/data/prepare.py (which makes its own
DownloadConfig), inside `with beam_build(runner, options):` (launch/build.py --beam_runner).

What Beam ships to its workers is `items` and `per_item` (pickled with cloudpickle), never the
builder: `per_item` must be a module-level function (or a functools.partial of one) over what
the examples need, and whatever it holds must pickle. The workers read the release by the same
paths as the launcher, so on a cluster the release is on a file system every worker mounts. The
clip tracks' items are CSV rows: each worker reads and computes its clips' inputs, the part
worth spreading. MER-PS's items are the loaded subjects, so its pipeline carries their signals.
"""
from __future__ import annotations

import contextlib
import dataclasses

import tensorflow_datasets as tfds

_ACTIVE: list[tuple] = []  # (runner, options) of the innermost beam_build, if any


@contextlib.contextmanager
def beam_build(runner=None, options=None):
    """Builds prepared inside this block run as Beam pipelines on `runner` (a name such as
    "DirectRunner", or a runner object) with `options` (PipelineOptions); either may be None,
    not both (the options may name the runner: --runner=DataflowRunner)."""
    if runner is None and options is None:
        raise ValueError("beam_build needs a runner or pipeline options (or both)")
    _ACTIVE.append((runner, options))
    try:
        yield
    finally:
        _ACTIVE.pop()


def uses_beam(download_config) -> bool:
    return download_config is not None and (download_config.beam_runner is not None
                                            or download_config.beam_options is not None)


class BeamReadyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder whose examples come from `examples()`, in-process or on Beam."""

    _beam = False  # set per download_and_prepare: whether this build runs on Beam

    def download_and_prepare(self, *, download_config=None, **kwargs):
        download_config = download_config or tfds.download.DownloadConfig()
        if _ACTIVE and not uses_beam(download_config):
            runner, options = _ACTIVE[-1]
            download_config = dataclasses.replace(download_config, beam_runner=runner,
                                                  beam_options=options)
        self._beam = uses_beam(download_config)
        try:
            return super().download_and_prepare(download_config=download_config, **kwargs)
        finally:
            self._beam = False


def examples(builder: BeamReadyBuilder, items, per_item):
    """The (key, example) pairs of one split: `per_item(item)` over `items`, in this process or
    as a Beam PTransform, as `builder`'s build asks. Keys must be unique within the split
    (TFDS orders the records by a hash of the key either way)."""
    if not builder._beam:
        return (pair for item in items for pair in per_item(item))
    beam = tfds.core.lazy_imports.apache_beam
    return beam.Create(list(items)) | "Examples" >> beam.FlatMap(per_item)
