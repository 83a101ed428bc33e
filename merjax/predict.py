"""From exported models to the challenge's submission files, without the training stack.

    # MER-PS: a test folder in the hidden layout (sample_ids.csv + data/<subject>/*.mat)
    python -m merjax.predict --export_dir=runs/ps --input=/data/ps_test --output=out/
    # MER-PS: the code-submission zip the challenge runs on its hidden subjects
    python -m merjax.predict --export_dir=runs/ps --package_ps=ps_submission.zip
    # MER-Cross, MER-FG, MER-Prefer: the candidates of a release (its candidate CSV, or
    # --candidates=<csv> with the same columns) -> answer.csv + answer.zip
    python -m merjax.predict --export_dir=runs/cross --input=/data/mer2026-dataset --output=out/

`--export_dir` names an export (`<workdir>/export`, written by `--mode=export`) or a run's
workdir, whose exports (`export/`, or `fold_*/export/` for a cross-validated track) are all used:
the folds' outputs are averaged and decided as training's write_outputs does (merjax/submission.py
holds the rules both use). Inputs are read by the builder's own code (MER-PS:
tfds_builders/mer_ps/signals.py; the clip tracks: tfds_builders/mer2026/clips.py with the config
recorded in the export, then merjax/data/clip_inputs.py), and the network runs from its
`jax.export` artifact: neither flax, nor the model or task code, nor grain is imported.
"""
import collections
import importlib
import json
import os
import zipfile
from pathlib import Path

import jax
import numpy as np
from absl import flags, logging

from merjax import cli, export, submission
from merjax.data import clip_inputs

_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "an export folder (holding signature.json) or a run's workdir")
_INPUT = flags.DEFINE_string(
    "input", None, "MER-PS: a test folder (sample_ids.csv and data/<subject>/*.mat); the clip "
                   "tracks: the MER2026 release root (or the folder holding mer2026-dataset/)")
_CANDIDATES = flags.DEFINE_string(
    "candidates", None, "the clip tracks: predict this candidate CSV (the columns of the "
                        "release's track1_track2_candidate.csv, or track3_candidate.csv for "
                        "MER-Prefer) instead of the release's; answers follow its row order")
_OUTPUT = flags.DEFINE_string("output", None, "where the submission file(s) go")
_PACKAGE_PS = flags.DEFINE_string(
    "package_ps", None, "MER-PS: write the code-submission zip here instead of predicting")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "examples per call of the network")
_FEATURES_ROOT = flags.DEFINE_string(
    "features_root", None, "the clip tracks with feature inputs: read the feature folders here "
                           "instead of where the export's config says (features that moved)")

PS_PACKAGE_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "ps_submission_model.py")
# What the MER-PS zip carries beside the model: the preprocessing and submission code, verbatim
# (paths relative to the repository root; each imports only the standard library, numpy, scipy
# and the others listed).
PS_PACKAGE_CODE = ("merjax/__init__.py", "merjax/submission.py", "tfds_builders/__init__.py",
                   "tfds_builders/common.py", "tfds_builders/features.py",
                   "tfds_builders/mer_ps/__init__.py", "tfds_builders/mer_ps/signals.py")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_exports(path):
    """The export folders under `path`: itself, `<path>/export`, or `<path>/fold_*/export`."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "signature.json")):
        return [path]
    if os.path.isfile(os.path.join(path, "export", "signature.json")):
        return [os.path.join(path, "export")]
    folds = sorted((d for d in os.listdir(path) if d.startswith("fold_")),
                   key=lambda d: int(d.split("_")[1]) if d.split("_")[1].isdigit() else -1
                   ) if os.path.isdir(path) else []
    found = [os.path.join(path, d, "export") for d in folds
             if os.path.isfile(os.path.join(path, d, "export", "signature.json"))]
    if not found:
        raise FileNotFoundError(
            f"{path}: no export (signature.json) in it, in export/ or in fold_*/export/; write "
            f"one with python -m merjax.main --config=... --workdir=<workdir> --mode=export")
    if len(found) != len(folds):
        missing = sorted(set(folds) - {os.path.basename(os.path.dirname(f)) for f in found})
        raise FileNotFoundError(f"{path}: folds without an export: {missing}; rerun "
                                f"--mode=export for the run")
    return found


def load_exports(path):
    """[(jitted call(inputs) -> outputs, signature)] of every export under `path`, checked to
    be of one task and one signature."""
    loaded = []
    for directory in find_exports(path):
        exported, params, signature = export.load(directory)
        fn = jax.jit(exported.call)
        loaded.append(((lambda inputs, fn=fn, params=params: fn(params, inputs)), signature))
    first = loaded[0][1]
    for _, signature in loaded[1:]:
        for key in ("task", "inputs", "output", "release_id", "clip_inputs", "label_names",
                    "vocabulary"):
            if signature.get(key) != first.get(key):
                raise ValueError(f"{path}: the exports differ in {key}: {signature.get(key)!r} "
                                 f"vs {first.get(key)!r}; they must come from one run")
    return loaded


def package_ps(export_dir, zip_path):
    """The MER-PS code submission: a zip whose root holds model.py (`predict(input_dir,
    output_dir)`), the exported network, its parameters as .npz and the preprocessing code."""
    directories = find_exports(export_dir)
    if len(directories) != 1:
        raise ValueError(f"{export_dir}: {len(directories)} exports; a MER-PS package holds one")
    exported, params, signature = export.load(directories[0])
    if signature.get("task") != "ps":
        raise ValueError(f"{directories[0]}: an export of task {signature.get('task')!r}; "
                         f"--package_ps packages MER-PS (task 'ps') exports")
    tmp = zip_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(PS_PACKAGE_MODEL, arcname="model.py")
        z.write(os.path.join(directories[0], "predict.jax"), arcname="predict.jax")
        z.writestr("signature.json", json.dumps(signature, indent=1, sort_keys=True))
        params_npz = tmp + ".params.npz"
        submission.save_params_npz(params_npz, params)
        z.write(params_npz, arcname="params.npz")
        os.remove(params_npz)
        for name in PS_PACKAGE_CODE:
            z.write(os.path.join(_ROOT, name), arcname=name)
    os.replace(tmp, zip_path)
    logging.info("wrote the MER-PS submission %s (step %s of %s)", zip_path,
                 signature.get("step"), directories[0])
    return zip_path


def predict(export_dir, input_path, output_dir, batch_size=256, candidates=None,
            features_root=None):
    """Writes the track's submission file(s) for `input_path` into `output_dir`."""
    loaded = load_exports(export_dir)
    signature = loaded[0][1]
    task = signature.get("task")
    if task == "ps":
        if candidates or features_root:
            raise ValueError("--candidates and --features_root are the clip tracks'; MER-PS "
                             "reads its test folder's sample_ids.csv and .mat files (--input)")
        (call, signature), = loaded
        return submission.ps_predict(input_path, output_dir, call=call, signature=signature,
                                     batch_size=batch_size)
    if task in CLIP_TASKS:
        return clip_predict(loaded, input_path, output_dir, batch_size=batch_size,
                            candidates=candidates, features_root=features_root)
    raise ValueError(f"{export_dir}: exports of task {task!r}; merjax.predict serves "
                     f"{['ps', *CLIP_TASKS]}")


# ----------------------------------------------------------------------------------------------
# The clip tracks (MER-Cross, MER-FG, MER-Prefer)

CLIP_TASKS = ("cross", "fg", "prefer")


def clip_predict(loaded, input_path, output_dir, *, batch_size=256, candidates=None,
                 features_root=None):
    """answer.csv + answer.zip in `output_dir` for the candidates of the release at
    `input_path` (or the CSV `candidates`; feature folders under `features_root` when given),
    from the folds' exports `loaded` (load_exports):
    every fold runs on every batch, their outputs are averaged as training averages them, and
    the answers are decided by the same rules (merjax/submission.py). Returns the CSV's path."""
    signature = loaded[0][1]
    task = signature["task"]
    reader = ClipReader(signature, input_path, candidates, features_root)
    calls = [call for call, _ in loaded]

    def fold_mean(inputs):
        # One read of the inputs serves every fold. The mean over a stack of the folds, as
        # clips.fold_mean takes it: numpy sums the folds element by element, so a batch's
        # rows come out bit for bit as in the mean over all rows, and only [N, ...] is kept.
        return np.mean(np.stack([np.asarray(call(inputs)) for call in calls]), axis=0)

    outputs = submission.call_batched(fold_mean, reader.chunks(batch_size), batch_size)
    names = [row[0] for row in reader.rows]
    no_input = np.array([n in reader.no_input for n in names], bool)
    if task == "cross":
        labels = signature["label_names"]
        answer = submission.cross_answers(outputs, no_input,
                                          labels.index(signature["no_input_label"]), names)
        header, rows = submission.CROSS_HEADER, ([n, labels[int(c)]]
                                                 for n, c in zip(names, answer))
    elif task == "fg":
        vocabulary = signature["vocabulary"]
        # The folds' mean validation threshold, as fg.write_outputs takes it.
        threshold = float(np.mean([s["threshold"] for _, s in loaded]))
        chosen = submission.fg_answers(outputs, threshold, no_input,
                                       np.isin(vocabulary, signature["no_input_answer"]), names)
        header, rows = submission.FG_HEADER, zip(names, submission.fg_words(chosen, vocabulary))
    else:
        answer = submission.prefer_answers(outputs, no_input, signature["no_input_answer"],
                                           names)
        header, rows = submission.PREFER_HEADER, ([n, a1, a2, p] for (n, a1, a2), p
                                                  in zip(reader.rows, answer))
    os.makedirs(output_dir, exist_ok=True)
    path = submission.write_answer(output_dir, header, rows)
    logging.info("wrote %d %s answers to %s and answer.zip (%d folds averaged; %d candidates "
                 "without any input answered by the no-input rule)", len(names), task, path,
                 len(loaded), int(no_input.sum()))
    return path


class ClipReader:
    """The candidates of a clip track read as its builder reads them: the builder's config
    rebuilt from the export's `clip_inputs`, the release opened and checked by
    tfds_builders/mer2026/clips.py (`open_release`, `ClipInputs.check` then `.read`), the
    candidate rows by the release's CSV readers; then the training transform
    (merjax/data/clip_inputs.py) at the export's modalities table.

    `rows`: (name,) per candidate row, (name, a1, a2) for MER-Prefer, in file order;
    `no_input`: the names whose clip misses every input (the builder's `no_input`).
    """

    def __init__(self, signature, input_path, candidates=None, features_root=None):
        # Here, not at the top: the MER-PS path must run where tensorflow_datasets is absent.
        from tfds_builders.mer2026 import clips, csvs
        meta = signature["clip_inputs"]
        self.signature, self.task = signature, signature["task"]
        dataset = meta["dataset"]
        self.builder = importlib.import_module(
            f"tfds_builders.{dataset}.{dataset}_dataset_builder")
        fields = dict(meta["config"])
        if features_root:
            if fields.get("input_kind") != "features":
                raise ValueError(f"--features_root: the export reads {fields.get('input_kind')}"
                                 f" inputs, not feature folders")
            fields["features_root"] = str(features_root)
        self.config = self.builder.make_config(**fields)
        self.mods = {k: (v["kind"], int(v["dim"]), int(v["length"]))
                     for k, v in meta["modalities"].items()}
        self.release = clips.open_release(self.config, Path(input_path))
        if self.task == "prefer":
            if candidates:
                parsed = csvs.read_track3_candidates(Path(candidates))
                self.builder.check_descriptions(Path(candidates), parsed)
            else:
                parsed = self.builder.read_candidates(self.release)
            self.rows = [(r.name, r.a1, r.a2) for r in parsed]
        else:
            names = (csvs.read_names(Path(candidates)) if candidates
                     else self.release.track1_track2_candidates())
            self.rows = [(n,) for n in names]
        where = candidates or "the release's candidate CSV"
        if not self.rows:
            raise ValueError(f"{where}: expected candidate rows, found none")
        distinct = list(dict.fromkeys(r[0] for r in self.rows))
        self.inputs = clips.ClipInputs(self.config, self.release, self.config.track)
        self.inputs.check(distinct)
        report = self.inputs.report({"candidates": distinct})
        self.no_input = set(report["no_input"]["candidates"])
        logging.info("%s: %d candidate rows (%d clips) from %s, %d without any input",
                     self.config.track, len(self.rows), len(distinct), where,
                     len(self.no_input))

    def example(self, row, keep):
        """One candidate row -> the exported network's inputs (numpy, no batch dim)."""
        out = clip_inputs.inputs(self.inputs.read(row[0], keep=keep), self.mods)
        if self.task == "prefer":
            size, stored = self.config.max_description_bytes, {}
            for c, text in zip(clip_inputs.DESCRIPTIONS, row[1:]):
                stored[f"{c}_bytes"], stored[f"{c}_length"] = self.builder.description_bytes(
                    text, size)
            out.update(clip_inputs.descriptions(stored, self.signature["description_length"]))
        return out

    def chunks(self, size):
        """{input: [<= size, ...]} in row order, as the signature's dtypes: one batch of
        examples held at a time, whatever the number of candidates."""
        spec = self.signature["inputs"]
        reads = collections.Counter(r[0] for r in self.rows)  # a held input lives until its last
        batch = []
        for row in self.rows:
            reads[row[0]] -= 1
            example = self.example(row, keep=reads[row[0]] > 0)
            if not batch:
                self._check_shapes(example, spec)
            batch.append(example)
            if len(batch) == size:
                yield _stack(batch, spec)
                batch = []
        if batch:
            yield _stack(batch, spec)

    def _check_shapes(self, example, spec):
        for k, v in spec.items():
            if k not in example or list(np.shape(example[k])) != list(v["shape"][1:]):
                raise ValueError(
                    f"{self.release.root}: input {k!r} read as shape "
                    f"{list(np.shape(example[k])) if k in example else None}; the export "
                    f"expects {v['shape'][1:]}: the export's clip_inputs config does not "
                    f"rebuild the inputs it was trained on")


def _stack(examples, spec):
    return {k: np.asarray(np.stack([e[k] for e in examples]), spec[k]["dtype"]) for k in spec}


def main(argv):
    del argv
    if not _EXPORT_DIR.value:
        raise ValueError("--export_dir is required: an export folder or a run's workdir")
    if _PACKAGE_PS.value:
        print(package_ps(_EXPORT_DIR.value, _PACKAGE_PS.value))
        return
    if not (_INPUT.value and _OUTPUT.value):
        raise ValueError("--input and --output are required (or --package_ps=<zip>)")
    print(predict(_EXPORT_DIR.value, _INPUT.value, _OUTPUT.value, _BATCH_SIZE.value,
                  _CANDIDATES.value, _FEATURES_ROOT.value))


if __name__ == "__main__":
    cli.run(main)
