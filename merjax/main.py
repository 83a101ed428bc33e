"""Trains, evaluates, predicts or exports one track's model.

  python -m merjax.main --config=configs/ps.py --workdir=runs/ps [--mode=train]
  python -m merjax.main --config=configs/cross.py:real --workdir=runs/cross_real \\
      --config.data.manual_dir=/data/mer2026-dataset --config.total_steps=5000

The last line on stdout is the run's headline (e.g. `cross train: cv/waf=0.79 cv/acc=0.78`).
A mistake in the command, the config's values or the data ends in one line on stderr that says
what is wrong, where, and how to fix it (merjax/cli.py). SIGINT or SIGTERM during training saves a checkpoint
at the current step and exits 128 + the signal's number; the same command resumes.

--config.distributed=True starts one of several processes (launch/slurm.sbatch, launch/tpu_vm.sh,
mpirun): every process runs the same command, and a signal stops them all after the same step.
"""
import logging as pylogging
import os

from absl import flags, logging
from ml_collections import config_flags

from merjax import cli

# The launchers (launch/build.py, launch/sweep.py) take these same flags by importing this
# module, so every command reads a track config the same way and reports mistakes alike.
CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Track config file with optional variants, e.g. configs/ps.py:runlocal; "
    "override any key with --config.<key>=<value>.",
    lock_config=True)  # a key not in the config is an error, not a silent new setting
WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, metrics and submission files go here (launch.sweep: the "
    "parent of one workdir per grid point).")
MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "evaluate", "predict", "export"],
    "train (resumes from the latest checkpoint in --workdir); evaluate, predict or export "
    "(jax.export + params, into <workdir>/export) from the selected state: the best one where "
    "the task selects, else the latest.")

def main(argv):
    del argv
    logging.get_absl_handler().addFilter(_QuietLibraries())
    execute(CONFIG.value, WORKDIR.value, MODE.value, flags.FLAGS["config"].config_filename)


def execute(config, workdir, mode, config_name=""):
    """Runs `mode`, then prints the headline; Stopped (after its checkpoint) exits 128+signal."""
    # Heavy imports only now, after flag parsing: --help and command-line mistakes stay fast.
    import jax
    import tensorflow_datasets as tfds
    from merjax import train
    if config.distributed:
        initialize_distributed()
    tfds.disable_progress_bar()  # a one-off build's tqdm bars would drown the log
    logging.info("config %s:\n  %s", config_name, "\n  ".join(config_lines(config)))
    workdir = os.path.abspath(workdir)
    fresh = not os.path.exists(workdir)
    try:
        summary = train.run(config, workdir, mode)
    except train.Stopped as e:  # a checkpoint of the current step was saved
        if jax.process_count() > 1:
            # None exits before all have finished writing it (a scheduler may end the others
            # when one exits non-zero, e.g. Slurm's KillOnBadExit).
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("merjax: stopped")
        cli.exit_with(str(e), 128 + e.signum)
    except BaseException:
        if fresh:
            cli.remove_if_empty(workdir)  # a run that failed before writing anything leaves no trace
        raise
    if jax.process_index() == 0:
        print(headline(config.task, mode, summary, workdir), flush=True)


def initialize_distributed():
    """jax.distributed.initialize(), which must precede every other JAX call. JAX reads the
    coordinator, the process count and this process's index from the cluster's environment:
    Slurm (srun), Open MPI (mpirun), a Cloud TPU VM slice or Kubernetes; JAX_COORDINATOR_ADDRESS
    or JAX_COORDINATOR_PORT and JAX_LOCAL_DEVICE_IDS override what it finds."""
    import jax
    try:
        jax.distributed.initialize()
    except ValueError as e:  # jax's message names a missing argument, not the missing cluster
        raise ValueError(
            f"config.distributed=True, but jax.distributed.initialize() found no cluster "
            f"environment it knows (jax: {e}): start every process with srun "
            f"(launch/slurm.sbatch), mpirun or on a Cloud TPU VM (launch/tpu_vm.sh), or leave "
            f"config.distributed False for one process") from None
    logging.info("process %d of %d, %d local of %d devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def headline(task, mode, summary, workdir):
    """`cross train: cv/waf=0.79 cv/acc=0.78`: the task's summary scores, in its order."""
    if not summary:
        return f"{task} {mode}: done, see {workdir}"
    return f"{task} {mode}: " + " ".join(f"{k}={v:.4g}" for k, v in summary.items())


def config_lines(config):
    """`key: value` for every leaf of `config`, dotted keys in order, tuples written compactly."""
    def walk(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}: {_compact(value)}"
    return list(walk(config.to_dict(), ""))


def _compact(value):
    """repr, except that a run of 5+ consecutive integers reads `(1, 2, ..., 20)`."""
    if (isinstance(value, (tuple, list)) and len(value) >= 5
            and all(type(v) is int for v in value)
            and list(value) == list(range(value[0], value[0] + len(value)))):
        inner = f"{value[0]}, {value[1]}, ..., {value[-1]}"
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


class _QuietLibraries:
    """Drops INFO lines from orbax's internals so progress lines stay readable."""

    def filter(self, record):
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
