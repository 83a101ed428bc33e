"""The task contract: what a track's module gives the train loop, the benchmark and export.

A new track is one module here (merjax/tasks/<name>.py, `config.task = "<name>"`) that has every
constant and function of `Task` below, and a builder package under tfds_builders/ named by
`DATASET` (its interface is listed in tfds_builders/common.py). The loop asks the task; the task
never calls the loop. A task reads input shapes from `data.info.features` (the prepared
dataset's FeaturesDict), never from builder settings.

`data` is a `merjax.data.prepare.TaskData`; `fold` a `merjax.tasks.common.Fold`; `batch` a
dict of (global, sharded) arrays made by `make_transform`'s function plus `mask` and `index`
in evaluation; `results` a list of `merjax.train.FoldResult`.
"""
import importlib
import inspect
from typing import Any, Callable, Protocol


class Task(Protocol):
    DATASET: str  # tfds_builders/<DATASET>/<DATASET>_dataset_builder.py builds the data
    SPLITS: tuple  # the dataset splits the task reads, e.g. ("train", "validation")
    ID_FIELD: str  # the example field that names it in submissions (e.g. "sample_id")
    # (metric, "max"|"min"): the state kept per fold is the best one by this metric on the
    # fold's selection split (scores "inner/<metric>" where the fold has its own, else
    # "val/<metric>"); None keeps the last state.
    SELECT: tuple | None
    EVAL_FIELDS: tuple  # batch fields evaluation keeps beside the outputs (for the metrics)
    SUBMISSION_FILE: str  # the official file write_outputs produces in the workdir

    def folds(self, config, data) -> list:
        """The runs to train: one Fold without cross-validation, K with it."""

    def make_transform(self, config, data) -> Callable[[dict], dict]:
        """Decoded example -> numpy model inputs (fixed shapes) + label fields; a pure function
        of the example, the same for every fold (a run transforms each split once, and every
        fold's training, evaluation and reference read-out reuse the results)."""

    def model_inputs(self, config, data) -> tuple:
        """The transformed fields the model reads: the exported signature's inputs."""

    def input_stats(self, train, config) -> Any:
        """Normalisation statistics from the train split (None when the model needs none)."""

    def build_model(self, config, data, stats, rngs) -> Any:
        """The nnx.Module; `stats=None` gives placeholders of the right shapes (for restores)."""

    def reference(self, config, data) -> Any:
        """The linear reference read-out (a merjax.reference.Readout) fitted beside the model;
        `config.model.name == readout.name` makes it the run's model. Its outputs reach
        eval_metrics as kept["reference"]."""

    def loss(self, model, batch, config, rngs) -> tuple:
        """(scalar loss, dict of scalar diagnostics) for one training batch."""

    def predict(self, model, batch) -> Any:
        """The model's outputs for a batch (what evaluation gathers and export serves)."""

    def eval_metrics(self, outputs, kept, data, prefix="val/") -> dict:
        """Validation scores from gathered outputs and EVAL_FIELDS (`data` for what the
        metric reads off the prepared dataset, e.g. its label vocabulary)."""

    def summarize(self, results) -> dict:
        """The run's headline scores from its folds' results."""

    def write_outputs(self, workdir, results, config, data) -> None:
        """The submission file(s) from the folds' predictions (process 0 writes)."""

    def data_report(self, data) -> dict:
        """Scalar facts about the prepared data (counts of examples, of missing or masked
        inputs) that the loop logs and writes once to metrics.jsonl."""

    def export_metadata(self, config, data, scores) -> dict:
        """Facts an exported predictor needs beside the network, written into the fold's
        signature.json (merjax/export.py) and read by `python -m merjax.predict`: `outputs`
        (names of the outputs, in order), label names, priors, the preprocessing that rebuilds
        the inputs, how outputs become answers. `scores` are the exported (selected) state's
        validation scores, e.g. a decision threshold chosen on them (MER-FG)."""


CONSTANTS = tuple(k for k in Task.__annotations__)
FUNCTIONS = tuple(k for k, v in vars(Task).items()
                  if inspect.isfunction(v) and not k.startswith("_"))


def check(module):
    """Raises TypeError naming what `module` lacks or declares differently from `Task`."""
    problems = [f"constant {k} missing" for k in CONSTANTS if not hasattr(module, k)]
    for name in FUNCTIONS:
        fn = getattr(module, name, None)
        if not callable(fn):
            problems.append(f"function {name} missing")
            continue
        want = list(inspect.signature(getattr(Task, name)).parameters)[1:]  # without self
        have = list(inspect.signature(fn).parameters)
        if have != want:
            problems.append(f"{name}({', '.join(have)}) should take ({', '.join(want)})")
    if problems:
        raise TypeError(f"{module.__name__} does not satisfy merjax.tasks.Task: "
                        + "; ".join(problems))
    return module


def load(name):
    """The task module `merjax.tasks.<name>`, checked against the contract."""
    try:
        module = importlib.import_module(f"merjax.tasks.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"merjax.tasks.{name}":
            raise
        raise ValueError(f"config.task={name!r} names no module merjax/tasks/{name}.py") from e
    return check(module)
