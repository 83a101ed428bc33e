"""Builds a track's TFDS dataset (ArrayRecord shards) without training, in this process or on
Apache Beam.

  python -m launch.build --config=configs/ps.py --config.data.manual_dir=/path/to/release

The `tfds build` CLI needs TensorFlow and Apache Beam; this calls the same builder through
`download_and_prepare(file_format="array_record")`. With no manual_dir it builds the demo release.
It takes the training command's --config flag (merjax/main.py), so the config decides everything
(subjects, rates, windows) exactly as training will see it, and mistakes read the same.

On Beam (a python with requirements-beam.txt installed; see the README): --beam_runner and/or
--beam_options make the builder's example generation a Beam pipeline (TFDS's Beam-based
generation: the same per-example code, encoding, shuffling and ArrayRecord writer), which writes
the same dataset into the same folder, so training with the same config reuses it.

  python -m launch.build --config=configs/cross.py:real --config.data.manual_dir=/mnt/mer2026 \\
      --beam_runner=DirectRunner \\
      --beam_options="--direct_num_workers=8 --direct_running_mode=multi_processing"
  ... --beam_options="--runner=DataflowRunner --project=P --region=R \\
      --temp_location=gs://B/tmp --sdk_container_image=IMAGE --sdk_location=container"
  ... --beam_options="--runner=FlinkRunner --flink_master=HOST:8081 \\
      --environment_type=DOCKER --environment_config=IMAGE"
  ... --beam_options="--runner=SparkRunner --spark_master_url=spark://HOST:7077 \\
      --environment_type=DOCKER --environment_config=IMAGE"

--beam_options is one string of Beam pipeline options, split like a shell command line (a
--beam_runner wins over its --runner). Name the runner: without one, Beam 2.77 first tries to
download its Prism runner. IMAGE is a Beam SDK container holding requirements-beam.txt and this
project (README). The launcher checks the release and builds the pipeline; workers read the
release by the launcher's paths and write the shards, so the release (manual_dir) and the TFDS
folder must be at the same POSIX path on the launcher and on every worker (a shared mount).
"""
import shlex
import sys

from absl import app, flags, logging

from merjax import cli
from merjax import main as train_command

flags.declare_key_flag("config")  # listed by --help; --workdir and --mode are training's
BEAM_RUNNER = flags.DEFINE_string(
    "beam_runner", None, "Build through Apache Beam on this runner (e.g. DirectRunner, "
    "DataflowRunner, FlinkRunner, SparkRunner); needs apache-beam (requirements-beam.txt)")
BEAM_OPTIONS = flags.DEFINE_string(
    "beam_options", None, "Beam pipeline options as one command-line string, e.g. "
    "\"--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp\"; builds "
    "through Beam (with --beam_runner, that runner wins over --runner here)")


def main(argv):
    del argv
    for name in ("workdir", "mode"):
        if flags.FLAGS[name].present:
            raise app.UsageError(f"--{name} is merjax.main's; launch.build takes only --config, "
                                 f"--config.<key> overrides and --beam_runner/--beam_options")
    beam = beam_settings(BEAM_RUNNER.value, BEAM_OPTIONS.value)
    # Heavy imports only now, after flag parsing: --help and command-line mistakes stay fast.
    import tensorflow_datasets as tfds
    from merjax import tasks
    from merjax.data import prepare
    from tfds_builders import generation
    tfds.disable_progress_bar()
    config = train_command.CONFIG.value
    task = tasks.load(config.task)
    if beam:
        logging.info("building through Apache Beam: runner %s, options %s", *beam)
        with generation.beam_build(*beam):
            data = prepare.prepare(config, task, announce=False)
    else:
        data = prepare.prepare(config, task, announce=False)
    sizes = ", ".join(f"{name}={len(source)}" for name, source in data.splits.items())
    logging.info("built %s (%s release): %s", data.info.full_name, data.release, sizes)
    print(f"{data.info.full_name}: {data.release} release, {sizes} -> {data.info.data_dir}")


def beam_settings(runner, options):
    """(runner, PipelineOptions) for a Beam build, or None for an in-process one; a UsageError
    where apache-beam is missing or the options do not parse."""
    if runner is None and options is None:
        return None
    try:
        args = shlex.split(options or "")
    except ValueError as e:
        raise app.UsageError(f"--beam_options={options!r}: not a command line ({e})") from None
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise app.UsageError(
            f"--beam_runner/--beam_options need apache-beam, which {sys.executable} cannot "
            f"import ({e}); install requirements-beam.txt in its own virtualenv and run "
            f"launch.build with that python") from None
    # Beam itself warns about (and drops) an option no runner knows.
    return runner, PipelineOptions(args)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
