"""A Beam build (`launch.build --beam_runner=DirectRunner`) writes the dataset the in-process
build writes, where training finds it.

apache-beam pins older protobuf and pyarrow than the training stack, so it lives in its own
virtualenv (requirements-beam.txt): MERJAX_BEAM_PYTHON names that venv's python (.ci/run sets
it). Each track's demo release is built through Beam in that python, read back here through
prepare (training's path, which must reuse it), then built again in this process from the same
release, and the two datasets compared: every decoded example and every record (as a
tf.train.Example), in order, and dataset_info.json. Only the shard boundaries may differ: TFDS's
Beam writer cuts shards by key-hash range, the in-process writer by equal counts, over the same
hash order.
"""
import glob
import importlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from merjax import tasks
from merjax.data import prepare

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEAM_PYTHON = os.environ.get("MERJAX_BEAM_PYTHON") or (
    sys.executable if importlib.util.find_spec("apache_beam") else None)

needs_beam = pytest.mark.skipif(
    BEAM_PYTHON is None,
    reason="apache-beam is not importable here and MERJAX_BEAM_PYTHON names no python that has "
           "it (pip install -r requirements-beam.txt in a second virtualenv)")
HERE_HAS_BEAM = importlib.util.find_spec("apache_beam") is not None


@pytest.mark.parametrize("flag,line", [
    pytest.param("--beam_runner=DirectRunner",
                 f"launch.build: error: --beam_runner/--beam_options need apache-beam, which "
                 f"{sys.executable} cannot import (No module named 'apache_beam'); install "
                 f"requirements-beam.txt in its own virtualenv and run launch.build with that "
                 f"python (see --help)",
                 marks=pytest.mark.skipif(HERE_HAS_BEAM, reason="apache-beam is importable here")),
    ("--beam_options=--runner='DirectRunner",
     "launch.build: error: --beam_options=\"--runner='DirectRunner\": not a command line (No "
     "closing quotation) (see --help)"),
])
def test_beam_flag_mistakes_end_in_one_line_before_anything_is_built(flag, line, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.build", "--config=configs/ps.py:runlocal",
         f"--config.data.demo_dir={tmp_path / 'demo'}", flag],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line]
    assert not (tmp_path / "demo").exists()


def _config(track, arg, demo_dir):
    c = importlib.import_module(f"configs.{track}").get_config(arg)
    c.data.demo_dir = str(demo_dir)
    return c


def _beam_build(track, arg, demo_dir):
    """The prepared folder `launch.build --beam_runner=DirectRunner` reports."""
    proc = subprocess.run(
        [BEAM_PYTHON, "-m", "launch.build", f"--config=configs/{track}.py:{arg}",
         f"--config.data.demo_dir={demo_dir}", "--beam_runner=DirectRunner"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Deterministic ordering is enabled, using BeamWriter" in proc.stderr  # Beam wrote it
    return pathlib.Path(proc.stdout.strip().splitlines()[-1].split(" -> ")[-1])


def _files(folder):
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


def _info_json(folder):
    """dataset_info.json less the shard lengths (the one thing the two writers may cut apart)."""
    info = json.loads((folder / "dataset_info.json").read_text())
    shards = {s["name"]: [int(n) for n in s.pop("shardLengths")] for s in info["splits"]}
    return info, shards


def _records(folder, split):
    """The split's records, in order, as tf.train.Example messages.

    Not as bytes: protobuf writes a map's entries (an Example's features) in an order seeded
    per process, so even two in-process builds of one release differ in bytes; as messages
    (and decoded) they are equal.
    """
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.core.example_serializer import tf_example_pb2
    paths = sorted(glob.glob(str(folder / f"*-{split}.array_record-*")))
    source = ArrayRecordDataSource(paths)
    return [tf_example_pb2.Example.FromString(source[i]) for i in range(len(source))]


def _assert_same_example(a, b, where):
    assert sorted(a) == sorted(b), where
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (where, key)
            assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), (where, key)
        else:
            assert type(a[key]) is type(b[key]) and a[key] == b[key], (where, key)


@needs_beam
@pytest.mark.parametrize("track,arg", [
    ("ps", "runlocal"), ("cross", "runlocal"), ("cross", "runlocal,input_kind=raw"),
    ("fg", "runlocal"), ("prefer", "runlocal")])
def test_a_beam_build_is_the_in_process_build_and_training_reads_it(track, arg, tmp_path):
    import tensorflow_datasets as tfds

    demo_dir = tmp_path / "demo"
    beam_dir = _beam_build(track, arg, demo_dir)
    config = _config(track, arg, demo_dir)
    task = tasks.load(config.task)

    # Training's path finds the Beam build and reuses it, file for file.
    before = _files(beam_dir)
    data = prepare.prepare(config, task, announce=False)
    assert pathlib.Path(os.fspath(data.info.data_dir)) == beam_dir
    assert _files(beam_dir) == before
    assert data.release == "demo"

    # The same release built again in this process, into the same place.
    tfds_home = beam_dir.parents[2]  # <demo home>/tfds/<dataset>/<config>/<version>
    os.rename(tfds_home, tmp_path / "beam_tfds")
    beam_dir = tmp_path / "beam_tfds" / beam_dir.relative_to(tfds_home)
    local = prepare.prepare(config, task, announce=False)
    local_dir = pathlib.Path(os.fspath(local.info.data_dir))
    assert local_dir.relative_to(tfds_home) == beam_dir.relative_to(tmp_path / "beam_tfds")

    beam_info, beam_shards = _info_json(beam_dir)
    local_info, local_shards = _info_json(local_dir)
    assert beam_info == local_info
    assert {s: sum(n) for s, n in beam_shards.items()} == {
        s: sum(n) for s, n in local_shards.items()}
    beam = tfds.builder_from_directory(beam_dir)
    assert dict(beam.info.metadata) == dict(local.info.metadata)
    assert list(beam.info.splits) == list(local.info.splits) == list(task.SPLITS)
    for split in task.SPLITS:
        assert _records(beam_dir, split) == _records(local_dir, split), split
        ours, theirs = beam.as_data_source(split), local.splits[split]
        assert len(ours) == len(theirs) == local.info.splits[split].num_examples > 0
        for i in range(len(ours)):
            _assert_same_example(ours[i], theirs[i], f"{track} {split}[{i}]")
