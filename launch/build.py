"""Builds a track's TFDS dataset (ArrayRecord shards) without training.

  python -m launch.build --config=configs/ps.py --config.data.manual_dir=/path/to/release

The `tfds build` CLI needs TensorFlow and Apache Beam; this calls the same builder through
`download_and_prepare(file_format="array_record")`. With no manual_dir it builds the demo release.
It takes the training command's --config flag (merjax/main.py), so the config decides everything
(subjects, rates, windows) exactly as training will see it, and mistakes read the same.
"""
from absl import app, flags, logging

from merjax import cli
from merjax import main as train_command

flags.declare_key_flag("config")  # listed by --help; --workdir and --mode are training's


def main(argv):
    del argv
    for name in ("workdir", "mode"):
        if flags.FLAGS[name].present:
            raise app.UsageError(f"--{name} is merjax.main's; launch.build takes only --config "
                                 f"and --config.<key> overrides")
    # Heavy imports only now, after flag parsing: --help and command-line mistakes stay fast.
    import tensorflow_datasets as tfds
    from merjax import tasks
    from merjax.data import prepare
    tfds.disable_progress_bar()
    config = train_command.CONFIG.value
    task = tasks.load(config.task)
    data = prepare.prepare(config, task, announce=False)
    sizes = ", ".join(f"{name}={len(source)}" for name, source in data.splits.items())
    logging.info("built %s (%s release): %s", data.info.full_name, data.release, sizes)
    print(f"{data.info.full_name}: {data.release} release, {sizes} -> {data.info.data_dir}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
