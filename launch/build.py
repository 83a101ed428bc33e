"""Builds a track's TFDS dataset (ArrayRecord shards) without training.

  python -m launch.build --config=configs/ps.py --config.data.manual_dir=/path/to/release

The `tfds build` CLI needs TensorFlow and Apache Beam; this calls the same builder through
`download_and_prepare(file_format="array_record")`. With no manual_dir it builds the demo release.
The config decides everything (subjects, rates, windows), exactly as training will see it.
"""
import importlib

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Track config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    task = importlib.import_module(f"merjax.tasks.{config.task}")
    data = task.prepare(config, workdir=None)
    sizes = ", ".join(f"{name}={len(source)}" for name, source in data.splits.items())
    logging.info("built %s (%s release): %s", data.info.full_name, data.release, sizes)
    print(f"{data.info.full_name}: {data.release} release, {sizes} -> {data.info.data_dir}")


if __name__ == "__main__":
    app.run(main)
