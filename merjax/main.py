"""merjax entry point: python -m merjax.main --config=configs/ps.py --workdir=runs/ps [--mode=...]

Parses flags, sets up multi-host JAX if asked, and hands over to train.run.
"""
import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/ps.py or configs/ps.py:runlocal.",
    lock_config=True)  # a key not in the config is an error, not a silent new setting
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and predictions go here.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict", "export"],
                          "train (resumes from the latest checkpoint in --workdir); evaluate, "
                          "predict or export (jax.export + params, into <workdir>/export) from "
                          "the latest checkpoint (the best one where the task selects).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """Drops INFO lines from orbax's internals so progress lines stay readable."""

    def filter(self, record):
        return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    import jax  # after flag parsing, so --help stays fast
    if config.distributed:
        # Must precede every other JAX call; auto-detects Slurm, Open MPI and TPU pods.
        jax.distributed.initialize()
    logging.info("config:\n%s", config)
    from merjax import train
    train.run(config, _WORKDIR.value, _MODE.value)


if __name__ == "__main__":
    app.run(main)
