"""The train loop end to end on a tiny demo release (configs/ps.py:runlocal).

Covers: a full run writing checkpoints, metrics and the submission; kill-and-resume equality;
SIGTERM/SIGINT checkpoint-and-stop; a resumed history with every step once; sharded (2x2x2
mesh) vs one-device equality; --mode=evaluate/predict; the non-finite-loss stop; checkpoints
that never serve another release; the export.
"""
import csv
import json
import os
import re
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from configs import ps as ps_config
from merjax import checkpoint, train
from merjax.data import on_device, prepare
from merjax.tasks import ps as ps_task


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _config(tfds_dir, **overrides):
    c = ps_config.get_config("runlocal")
    c.data.tfds_dir = tfds_dir
    c.update_from_flattened_dict(overrides)
    return c


def _metrics(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _final_eval(workdir):
    return [m for m in _metrics(workdir) if "val/mae" in m][-1]


def _predictions(workdir):
    with open(workdir / "predictions.csv") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def full_run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    config = _config(tfds_dir)
    return workdir, train.run(config, str(workdir)), config


def test_run_writes_checkpoints_metrics_tensorboard_and_submission(full_run):
    workdir, scores, config = full_run
    assert checkpoint.Checkpointer(str(workdir)).all_steps() == [10, 20]
    train_lines = [m for m in _metrics(workdir) if "train/loss" in m]
    assert [m["step"] for m in train_lines] == [5, 10, 15, 20]
    assert all(np.isfinite(m["train/loss"]) and m["train/lr"] > 0 for m in train_lines)
    final = _final_eval(workdir)
    assert final["step"] == 20 and final["val/mae"] == pytest.approx(scores["val/mae"])
    for key in ("val/mae_valence", "val/mae_arousal", "val/ccc_valence", "val/pearson_arousal",
                "val/prior_mae"):
        assert key in final
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    # The kept state's scores, written once more when the run ends (what a sweep reports):
    # the state with the best inner-subject MAE, the earliest of equals.
    best = min((m for m in _metrics(workdir) if "inner/mae" in m), key=lambda m: m["inner/mae"])
    (kept,) = [m for m in _metrics(workdir) if "selected/val/mae" in m]
    assert kept["step"] == best["step"] and "fold" not in kept
    assert kept["selected/val/mae"] == pytest.approx(best["val/mae"])
    assert kept["selected/val/mae"] == pytest.approx(scores["val/mae"])

    rows = _predictions(workdir)
    assert rows[0] == ["sample_id", "valence", "arousal"]
    ids = [r[0] for r in rows[1:]]
    # runlocal validates on subject test_4: every label second exactly once, official ids.
    assert all(re.fullmatch(r"test_4_V(0[1-9]|1[0-5])_T\d{3}", i) for i in ids)
    validation = prepare.prepare(config, ps_task).splits["validation"]
    expected = sorted(validation[i]["sample_id"].decode() for i in range(len(validation)))
    assert ids == expected
    values = np.array([[int(r[1]), int(r[2])] for r in rows[1:]])
    assert values.min() >= 1 and values.max() <= 255


def test_killed_run_resumes_to_the_same_numbers(full_run, tfds_dir, tmp_path, monkeypatch):
    workdir, _, config = full_run
    original_save = checkpoint.Checkpointer.save

    def save_then_die(self, step, *args):
        original_save(self, step, *args)
        self.wait()
        if os.path.basename(self.directory) == "checkpoints":  # not the best state's save
            raise KeyboardInterrupt(f"simulated kill after checkpoint {step}")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, str(tmp_path))
    monkeypatch.setattr(checkpoint.Checkpointer, "save", original_save)
    assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 10

    train.run(config, str(tmp_path))  # the same command again
    resumed, uninterrupted = _final_eval(tmp_path), _final_eval(workdir)
    assert resumed == uninterrupted
    assert _predictions(tmp_path) == _predictions(workdir)


def test_batches_gathered_on_the_devices_train_and_resume_like_host_batches(
        full_run, tfds_dir, tmp_path, monkeypatch):
    """config.pipeline.device_cache_bytes (on by default on accelerators only): the training
    batches are gathered from a copy on the 8 devices, through a kill and a resume."""
    workdir, _, _ = full_run
    config = _config(tfds_dir, **{"pipeline.device_cache_bytes": 1 << 30})
    original_save = checkpoint.Checkpointer.save

    def save_then_die(self, step, *args):
        original_save(self, step, *args)
        self.wait()
        if os.path.basename(self.directory) == "checkpoints" and step == 10:
            raise KeyboardInterrupt(f"simulated kill after checkpoint {step}")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_die)
    gathered = []
    original_batch = on_device.DeviceSplit.batch
    monkeypatch.setattr(on_device.DeviceSplit, "batch",
                        lambda self, b, *args: gathered.append(b) or
                        original_batch(self, b, *args))
    with pytest.raises(KeyboardInterrupt):
        train.run(config, str(tmp_path))
    train.run(config, str(tmp_path))
    # Every step's batch, each once: the resumed run starts in the middle of a gathered group.
    assert gathered == list(range(config.total_steps))
    losses = [[m["train/loss"] for m in _metrics(d) if "train/loss" in m]
              for d in (tmp_path, workdir)]
    assert losses[0] == losses[1] and len(losses[0]) > 2
    assert _final_eval(tmp_path) == _final_eval(workdir)
    assert _predictions(tmp_path) == _predictions(workdir)


def test_sharded_mesh_trains_like_one_device(full_run, tfds_dir, tmp_path):
    workdir, _, _ = full_run  # default mesh: data=8
    single = tmp_path / "single"
    train.run(_config(tfds_dir, **{"mesh.devices": 1}), str(single))
    sharded = tmp_path / "sharded"
    train.run(_config(tfds_dir, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.model": 2}), str(sharded))
    losses = {name: [m["train/loss"] for m in _metrics(d) if "train/loss" in m]
              for name, d in (("single", single), ("sharded", sharded), ("data8", workdir))}
    np.testing.assert_allclose(losses["sharded"], losses["single"], atol=1e-4)
    np.testing.assert_allclose(losses["data8"], losses["single"], atol=1e-4)
    assert losses["single"][0] > losses["single"][-1]


def test_evaluate_and_predict_modes_use_the_latest_checkpoint(full_run):
    workdir, scores, config = full_run
    (workdir / "predictions.csv").unlink()
    evaluated = train.run(config, str(workdir), mode="evaluate")
    assert evaluated == pytest.approx(scores)
    assert not (workdir / "predictions.csv").exists()
    train.run(config, str(workdir), mode="predict")
    assert len(_predictions(workdir)) > 1


def test_evaluate_without_a_checkpoint_is_an_error(tfds_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="needs a checkpoint"):
        train.run(_config(tfds_dir), str(tmp_path), mode="evaluate")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tfds_dir, tmp_path,
                                                                   monkeypatch):
    config = _config(tfds_dir, total_steps=10)
    train.run(config, str(tmp_path))
    good = checkpoint.Checkpointer(str(tmp_path)).latest_step()
    assert good == 10

    real_loss = ps_task.loss
    def nan_loss(model, batch, config, rngs):
        value, aux = real_loss(model, batch, config, rngs)
        return value * jnp.nan, aux

    monkeypatch.setattr(ps_task, "loss", nan_loss)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss nan at step 11.*step 10"):
        train.run(_config(tfds_dir, total_steps=20), str(tmp_path))
    assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == [10]


@pytest.mark.parametrize("key, value", [("release", "real"), ("release_id", "0123456789ab")])
def test_checkpoint_never_serves_another_release(full_run, monkeypatch, key, value):
    workdir, _, config = full_run
    real_prepare = prepare.prepare

    def another_release(*args, **kwargs):
        data = real_prepare(*args, **kwargs)
        setattr(data, key, value)
        return data

    monkeypatch.setattr(prepare, "prepare", another_release)
    with pytest.raises(ValueError, match=f"trained on {key} .*; this run uses '{value}'"):
        train.run(config, str(workdir), mode="evaluate")


def test_sigterm_checkpoints_the_current_step_and_resume_matches(full_run, tfds_dir, tmp_path,
                                                                  monkeypatch):
    """A signal mid-run saves the step it arrived at (not the last periodic checkpoint), stops
    with Stopped, and the same command resumes to the uninterrupted run's numbers; the resumed
    metrics.jsonl holds every step once."""
    workdir, _, config = full_run
    real_add = train.StepLog.add

    def add_then_signal(self, step, scalars):
        real_add(self, step, scalars)
        if step == 13:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train.StepLog, "add", add_then_signal)
    with pytest.raises(train.Stopped, match="stopped at step 13; rerun the same command"):
        train.run(config, str(tmp_path))
    monkeypatch.setattr(train.StepLog, "add", real_add)
    assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 13
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are put back

    train.run(config, str(tmp_path))
    assert _final_eval(tmp_path) == _final_eval(workdir)
    assert _predictions(tmp_path) == _predictions(workdir)
    rows = [(m["step"], tuple(sorted(m))) for m in _metrics(tmp_path)]
    assert len(rows) == len(set(rows)), "a step's metrics were written twice"
    assert [m["step"] for m in _metrics(tmp_path) if "train/loss" in m] == [5, 10, 13, 15, 20]


def test_resume_drops_metrics_written_after_the_checkpoint(full_run, tmp_path, monkeypatch):
    """Killed after step 15's log line but with step 10 as the last checkpoint: the resumed
    history has step 15 once, from the resumed run."""
    workdir, _, config = full_run
    real_flush = train.StepLog.flush

    def flush_then_die(self):
        real_flush(self)
        if self.start_step == 15:
            raise KeyboardInterrupt("killed after logging step 15")

    monkeypatch.setattr(train.StepLog, "flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, str(tmp_path))
    monkeypatch.setattr(train.StepLog, "flush", real_flush)
    assert [m["step"] for m in _metrics(tmp_path) if "train/loss" in m] == [5, 10, 15]
    train.run(config, str(tmp_path))
    assert _metrics(tmp_path) == [m for m in _metrics(tmp_path)]  # parses
    train_rows = [m for m in _metrics(tmp_path) if "train/loss" in m]
    assert [m["step"] for m in train_rows] == [5, 10, 15, 20]
    reference = [m for m in _metrics(workdir) if "train/loss" in m]
    for got, want in zip(train_rows, reference):
        assert got["train/loss"] == pytest.approx(want["train/loss"], abs=1e-6)


def test_batch_size_check_counts_shards_once(tfds_dir, tmp_path):
    """Shards already count every device (of every process): 8 devices, global batch 8 is fine,
    and 12 is rejected with the reason."""
    config = _config(tfds_dir, batch_size=8, eval_batch_size=8, total_steps=2,
                     eval_every=2, checkpoint_every=2, log_every=1)
    train.run(config, str(tmp_path / "ok"))
    with pytest.raises(ValueError, match=r"batch_size=12 must divide by the 8 batch shards"):
        train.run(_config(tfds_dir, batch_size=12), str(tmp_path / "bad"))


_LOAD_WITHOUT_FLAX = """
import sys, numpy as np
from merjax import export
exported, params, signature = export.load(sys.argv[1])
inputs = dict(np.load(sys.argv[2]))
np.save(sys.argv[3], np.asarray(exported.call(params, inputs)))
assert "flax" not in sys.modules, "loading an export must not need flax"
"""


def test_export_serves_the_trained_model_without_flax(full_run, tmp_path):
    import subprocess
    import sys
    workdir, _, config = full_run
    train.run(config, str(workdir), mode="export")
    export_dir = workdir / "export"
    signature = json.loads((export_dir / "signature.json").read_text())
    assert signature["step"] == 20 and signature["release"] == "demo"
    assert signature["inputs"]["eeg"]["shape"] == ["b", 64, 256]
    assert signature["output"]["shape"] == ["b", 2]
    assert signature["label_prior"]["global"]

    # Five validation examples through the artifact, in a process that never imports flax.
    data = prepare.prepare(config, ps_task)
    source = data.splits["validation"]
    examples = [source[i] for i in range(5)]
    rows = [ps_task.transform(e) for e in examples]
    np.savez(tmp_path / "inputs.npz",
             **{k: np.stack([r[k] for r in rows]) for k in ps_task.MODEL_FIELDS})
    proc = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_FLAX, str(export_dir),
                           str(tmp_path / "inputs.npz"), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = np.load(tmp_path / "out.npy")
    assert outputs.shape == (5, 2)
    # Rounded, the artifact's outputs are exactly the run's submitted predictions.
    submitted = {r[0]: [int(r[1]), int(r[2])] for r in _predictions(workdir)[1:]}
    ids = [e["sample_id"].decode() for e in examples]
    np.testing.assert_array_equal(ps_task.metrics.ps_to_submission(outputs),
                                  [submitted[i] for i in ids])
