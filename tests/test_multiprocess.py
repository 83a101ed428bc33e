"""MULTI-PROCESS TRAINING (issue #12): 2 processes x 4 CPU devices train as 1 process x 8 do.

Each big test starts `python -m merjax.main ... --config.distributed=True` as 2 processes, with
the environment `srun` gives its tasks (SLURM_* plus JAX_COORDINATOR_PORT for a free localhost
port): the same path a Slurm cluster takes, jax.distributed.initialize() reading it all. The
processes reach each other through JAX's coordination service and gloo (the CPU collectives).

A run is stopped with SIGTERM once its first checkpoint is on disk (the loop then checkpoints
the step the processes agree on and exits 143) and the same command resumes it. It must end
where an uninterrupted run in this process (8 devices) ends: the same train losses and eval
scores in metrics.jsonl, written once (process 0), the same predictions.csv / answer.csv, the
same export; and each checkpoint holds both processes' parts. The first multi-process run
prepares the shared demo dataset: process 0 builds it while process 1 waits.

Cost: 5.8 minutes on a shared 2-core machine (5.5 CPU-minutes: five 2-process launches and two
1-process runs; the ps track's state is sharded over all 8 devices of both processes). Run alone
with `python -m pytest -q tests/test_multiprocess.py`.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import cross as cross_config
from configs import ps as ps_config
from merjax import export, train
from merjax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES = 2
TIMEOUT_S = 420
# Rows that measure the machine (speed, MFU, the compiled step's per-process costs).
MACHINE_PREFIXES = ("perf/", "cost/")


def test_processes_share_each_global_batch_as_one_process_reads_it():
    """The data side of the equality: process p's rows of every global batch are rows
    p*L..(p+1)*L-1 of the batch one process reads, through epochs and a restore."""
    source = [{"x": np.int64(i)} for i in range(11)]

    def batches(index, count, skip=0, n=7):
        it = pipeline.train_iterator(source, dict, global_batch_size=4, seed=3,
                                     process_index=index, process_count=count)
        if skip:  # a restored iterator goes on where the saved one was
            for _ in range(skip):
                next(it)
            position = it.get_state()
            it = pipeline.train_iterator(source, dict, global_batch_size=4, seed=3,
                                         process_index=index, process_count=count)
            it.set_state(position)
        return [b["x"] for b in (next(it) for _ in range(n - skip))]

    whole = batches(0, 1)
    assert {len(set(b.tolist())) for b in whole} == {4}
    for skip in (0, 3):
        parts = [batches(p, PROCESSES, skip) for p in range(PROCESSES)]
        joined = [np.concatenate(rows) for rows in zip(*parts)]
        np.testing.assert_array_equal(joined, whole[skip:])
    assert not np.array_equal(batches(0, 1)[:3], [b["x"] for b in (
        next(pipeline.train_iterator(source, dict, global_batch_size=4, seed=4))
        for _ in range(3))])


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """One data dir for the module: the demo datasets are built once."""
    return str(tmp_path_factory.mktemp("tfds"))


def test_ps_two_processes_resume_and_export_like_one(tfds_dir, tmp_path):
    overrides = {"data.tfds_dir": tfds_dir, "mesh.data": 1, "mesh.fsdp": -1,
                 "total_steps": 10, "log_every": 1, "eval_every": 5, "checkpoint_every": 2}
    spec = "configs/ps.py:runlocal"
    multi, one = tmp_path / "two_processes", tmp_path / "one_process"
    first = stop_after_first_checkpoint(launch(multi, spec, overrides), multi / "checkpoints")
    assert 0 < first < overrides["total_steps"]
    assert_checkpoint_parts(multi / "checkpoints" / str(first))
    finish(launch(multi, spec, overrides))
    finish(launch(multi, spec, overrides, mode="export"))

    config = configure(ps_config.get_config("runlocal"), overrides)
    train.run(config, str(one))
    train.run(config, str(one), mode="export")

    assert_same_history(multi, one)
    assert (multi / "predictions.csv").read_text() == (one / "predictions.csv").read_text()
    assert_checkpoint_parts(multi / "checkpoints" / str(overrides["total_steps"]))
    # Only process 0 wrote metrics, event files (one per launch in train mode), predictions and
    # the dataset.
    assert_event_files_once(multi, one, launches=2)
    assert_only_process_0_wrote(multi, "wrote 39 predictions", "exported ps step", " prepared: ")
    # The state was sharded over both processes' devices: the export gathered it first.
    assert_same_export(multi / "export", one / "export")


def test_cross_two_processes_resume_a_cv_run_like_one(tfds_dir, tmp_path):
    # log_every=1: a stopped run logs the steps since its last row, so with longer rows the
    # resumed history would split one row in two. One reference penalty: fitted 12 times here.
    overrides = {"data.tfds_dir": tfds_dir, "checkpoint_every": 2, "log_every": 1,
                 "reference.l2": (1.0,)}
    spec = "configs/cross.py:runlocal"
    multi, one = tmp_path / "two_processes", tmp_path / "one_process"
    # The two processes gather their training batches on the devices, each the global batch
    # (data/on_device.py); the one process gathers its batches on the host.
    on_devices = dict(overrides, **{"pipeline.device_cache_bytes": 1 << 30})
    # Stopped in the second fold: the resumed run restores the first and finishes the second.
    first = stop_after_first_checkpoint(launch(multi, spec, on_devices),
                                        multi / "fold_1" / "checkpoints")
    total = cross_config.get_config("runlocal").total_steps
    assert 0 < first < total
    assert checkpoint_steps(multi / "fold_0" / "checkpoints")[-1] == total
    assert_checkpoint_parts(multi / "fold_1" / "checkpoints" / str(first))
    finish(launch(multi, spec, on_devices))
    for index in range(PROCESSES):
        assert "training batches gathered on the devices" in (
            multi / f"train.process_{index}.log").read_text()

    train.run(configure(cross_config.get_config("runlocal"), overrides), str(one))

    assert_same_history(multi, one)
    assert (multi / "answer.csv").read_text() == (one / "answer.csv").read_text()
    with np.load(multi / "candidate_logits.npz") as a, np.load(one / "candidate_logits.npz") as b:
        assert sorted(a) == sorted(b)
        for key in a:  # names, labels and answers equal; the fold-averaged logits close
            if a[key].dtype.kind == "f":
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert_checkpoint_parts(multi / "fold_1" / "checkpoints" / str(total))
    assert_event_files_once(multi, one, launches=2)
    assert_only_process_0_wrote(multi, "wrote 9 candidate answers", " prepared: ")


# ------------------------------------------------------------------------------------------------
# Launching and stopping the processes


def launch(workdir, spec, overrides, mode="train"):
    """PROCESSES `merjax.main` processes with the environment srun gives its tasks."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE"))}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // PROCESSES}",
               SLURM_JOB_ID="1", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS=str(PROCESSES),
               JAX_COORDINATOR_PORT=str(port))
    argv = [sys.executable, "-m", "merjax.main", f"--config={spec}", f"--workdir={workdir}",
            f"--mode={mode}", *(f"--config.{k}={v}" for k, v in overrides.items()),
            "--config.distributed=True"]
    os.makedirs(workdir, exist_ok=True)
    procs = []
    for index in range(PROCESSES):
        log_path = workdir / f"{mode}.process_{index}.log"
        with open(log_path, "a") as log:
            procs.append(subprocess.Popen(
                argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env, SLURM_PROCID=str(index), SLURM_LOCALID=str(index))))
        procs[-1].log_path = log_path
    return procs


def finish(procs, status=0):
    """Waits for every process; fails with the ends of their logs unless all exit `status`.
    One that exits otherwise ends the others at once (they would wait for it in a collective)."""
    deadline = time.time() + TIMEOUT_S
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if any(p.poll() not in (None, status) for p in procs):
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    codes = [p.returncode for p in procs]
    if codes != [status] * len(procs):
        pytest.fail(f"exit codes {codes}, expected {status}:\n" + "\n".join(
            f"--- {p.log_path}:\n{p.log_path.read_text()[-3000:]}" for p in procs))


def stop_after_first_checkpoint(procs, ckpt_dir):
    """SIGTERM to every process once a checkpoint is on disk; returns the step they stopped
    after (their last checkpoint). The processes are frozen (SIGSTOP) around the signal so it
    lands early in the schedule however fast they run."""
    deadline = time.time() + TIMEOUT_S
    while not checkpoint_steps(ckpt_dir):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            finish(procs, status="stopped by the test, after a checkpoint")  # fails, with logs
        time.sleep(0.05)
    for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGCONT):
        for p in procs:
            p.send_signal(sig)
    finish(procs, status=128 + signal.SIGTERM)
    return checkpoint_steps(ckpt_dir)[-1]


def checkpoint_steps(ckpt_dir):
    """Steps of the committed checkpoints in `ckpt_dir` (orbax renames a finished one to its
    step number)."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def configure(config, overrides):
    config.update_from_flattened_dict(overrides)  # {"data.tfds_dir": ...}: keys that exist
    return config


# ------------------------------------------------------------------------------------------------
# What must be equal


def history(workdir):
    """metrics.jsonl as {(step, fold, name): value}, without the machine's measurements; fails
    on a row written twice."""
    values = {}
    with open(workdir / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            step, fold = row.pop("step"), row.pop("fold", -1)  # -1: a row of the whole run
            for name, value in row.items():
                if not name.startswith(MACHINE_PREFIXES):
                    key = (step, fold, name)
                    assert key not in values, f"{key} written twice in {workdir}"
                    values[key] = value
    return values


def assert_same_history(multi, one):
    got, want = history(multi), history(one)
    assert sorted(got) == sorted(want)
    assert any(name == "train/loss" for _, _, name in want)
    names = sorted(want)
    np.testing.assert_allclose([got[k] for k in names], [want[k] for k in names],
                               rtol=1e-5, atol=1e-6, err_msg=str(names))


def assert_checkpoint_parts(folder):
    """Each process wrote its shards and its data iterator's position into the checkpoint."""
    for index in range(PROCESSES):
        shards = folder / "state" / f"ocdbt.process_{index}"
        assert any(p.is_file() for p in shards.rglob("*")), f"{shards} holds no file"
        assert (folder / "data" / f"process_{index}-of-{PROCESSES}.json").is_file()


def assert_event_files_once(multi, one, launches):
    """Each TensorBoard folder got, per training launch, the event files one process writes."""
    def counts(workdir):
        return {str(d.relative_to(workdir)): len(list(d.glob("events.out.tfevents.*")))
                for d in (workdir / "tensorboard").rglob("*") if d.is_dir()} | {
                "tensorboard": len(list((workdir / "tensorboard").glob("events.out.tfevents.*")))}

    assert counts(multi) == {k: launches * n for k, n in counts(one).items()}


def assert_only_process_0_wrote(workdir, *lines):
    logs = [[(workdir / f"{mode}.process_{i}.log").read_text() if
             (workdir / f"{mode}.process_{i}.log").exists() else ""
             for mode in ("train", "export")] for i in range(PROCESSES)]
    for line in lines:
        assert line in "".join(logs[0])
        assert all(line not in "".join(other) for other in logs[1:])


def assert_same_export(multi, one):
    fn_multi, params_multi, signature_multi = export.load(str(multi))
    fn_one, params_one, signature_one = export.load(str(one))
    assert signature_multi == signature_one
    flat_multi, flat_one = (dict(_flatten(p)) for p in (params_multi, params_one))
    assert sorted(flat_multi) == sorted(flat_one)
    # Two processes sum the gradients across processes (gloo) in another order than one process
    # sums them over its devices: float32 sums differ in their last bits, and Adam's update
    # (divided by the root of the gradients' second moment) passes a little of that on to the
    # weights: after 10 steps a few differ by ~2e-6.
    for key, value in flat_one.items():
        np.testing.assert_allclose(flat_multi[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    rng = np.random.default_rng(0)
    inputs = {k: rng.normal(size=[3, *v["shape"][1:]]).astype(v["dtype"])
              for k, v in signature_one["inputs"].items()}
    np.testing.assert_allclose(np.asarray(fn_multi.call(params_multi, inputs)),
                               np.asarray(fn_one.call(params_one, inputs)), rtol=1e-5, atol=1e-5)


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", np.asarray(value)
