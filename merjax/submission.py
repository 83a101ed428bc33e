"""Submission files, and running an exported predictor over inputs read from disk.

One home for what training (the tasks' `write_outputs`), `python -m merjax.predict` and the
MER-PS code submission all do. The standard library, numpy and (for running) jax only: the
MER-PS submission zip carries this file verbatim, and the challenge runs it where only jax,
numpy and scipy are installed (tfds_builders/mer_ps/signals.py reads the hidden test folder).
"""
import csv
import os
import zipfile

import numpy as np

PS_MIN, PS_MAX = 1, 255
PS_FILE = "predictions.csv"
PS_HEADER = ("sample_id", "valence", "arousal")


def write_csv(path, header, rows):
    """A submission CSV, written aside and renamed so a killed run never leaves half a file."""
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    return path


def write_answer(directory, header, rows, name="answer.csv"):
    """A clip track's submission: `name` in `directory` and answer.zip holding only it, at its
    root (what Codabench takes). Returns the CSV's path."""
    path = write_csv(os.path.join(directory, name), header, rows)
    with zipfile.ZipFile(os.path.join(directory, "answer.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, arcname=name)
    return path


def ps_to_submission(values):
    """Raw-scale predictions -> the integers in [1, 255] the MER-PS scorer requires.

    Rounds half to even (np.rint, like Python's round), then clips.
    """
    values = np.asarray(values, np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("MER-PS predictions contain NaN or Inf; the scorer needs finite integers")
    return np.clip(np.rint(values), PS_MIN, PS_MAX).astype(np.int64)


def write_ps_predictions(path, ids, outputs):
    """The official `sample_id,valence,arousal` file: integers in [1, 255], every id once,
    sorted by id (the scorer joins on ids; sorted reads well)."""
    values = ps_to_submission(outputs)
    if len(set(ids)) != len(ids):
        raise ValueError(f"Duplicate sample ids in predictions for {path}")
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    return write_csv(path, PS_HEADER, ([ids[i], int(values[i, 0]), int(values[i, 1])]
                                       for i in order))


# ----------------------------------------------------------------------------------------------
# The clip tracks' answers from the folds' averaged outputs (training's write_outputs and
# merjax.predict both decide here, so an export answers exactly as its run did)

CROSS_HEADER = ("name", "discrete")
FG_HEADER = ("name", "openset")
PREFER_HEADER = ("name", "a1", "a2", "preference")
PREFER_ANSWERS = ("a1", "a2")  # the metric's codes 0 and 1 (csvs.PREFERENCES); never "same"


def check_finite(outputs, no_input, names, what):
    """FloatingPointError naming the first candidate row (and its name) whose averaged outputs
    are not finite; rows answered by the no-input rule are not looked at."""
    outputs = np.asarray(outputs)
    finite = np.isfinite(outputs.reshape(len(outputs), -1)).all(-1)
    bad = np.flatnonzero(~finite & ~np.asarray(no_input, bool))
    if len(bad):
        raise FloatingPointError(f"non-finite averaged {what} for {len(bad)} candidates, e.g. "
                                 f"row {bad[0]} ({names[bad[0]]}): {outputs[bad[0]]}")


def cross_answers(logits, no_input, majority, names):
    """MER-Cross: [N, classes] fold-averaged logits -> class indices [N]: the argmax, except
    candidates with no input at all (bool [N]), answered `majority` (the majority training
    class): the model never saw an empty clip."""
    no_input = np.asarray(no_input, bool)
    answer = np.asarray(logits).argmax(-1)
    answer[no_input] = int(majority)
    check_finite(logits, no_input, names, "logits")
    return answer


def fg_decode(probs, threshold):
    """MER-FG: [N, V] probabilities -> bool [N, V]: each clip's top word, and every word whose
    probability reaches `threshold`."""
    probs = np.asarray(probs)
    chosen = probs >= threshold
    chosen[np.arange(len(probs)), probs.argmax(-1)] = True
    return chosen


def fg_answers(probs, threshold, no_input, fallback, names):
    """MER-FG: fold-averaged probabilities -> bool [N, V] chosen words (`fg_decode` at the
    folds' mean threshold); candidates with no input at all get `fallback` (bool [V], the most
    frequent training word set)."""
    check_finite(probs, no_input, names, "probabilities")
    chosen = fg_decode(probs, threshold)
    chosen[np.asarray(no_input, bool)] = np.asarray(fallback, bool)
    return chosen


def fg_words(chosen, vocabulary):
    """bool [N, V] -> the openset cells: the chosen words of each row, comma-joined."""
    return [",".join(w for w, keep in zip(vocabulary, row) if keep) for row in chosen]


def prefer_codes(probs):
    """MER-Prefer: P(a1 preferred) -> the metric's codes: 0 (a1) where P >= 0.5, else 1 (a2)."""
    return np.where(np.asarray(probs) >= 0.5, 0, 1)


def prefer_answers(probs, no_input, fallback, names):
    """MER-Prefer: fold-averaged P(a1 preferred) [N] -> "a1" / "a2" [N] (object array); pairs
    whose clip has no input at all are answered `fallback` (the majority preference)."""
    no_input = np.asarray(no_input, bool)
    check_finite(probs, no_input, names, "probabilities")
    answer = np.array([PREFER_ANSWERS[c] for c in prefer_codes(probs)], object)
    answer[no_input] = fallback
    return answer


# ----------------------------------------------------------------------------------------------
# Running an exported predictor

def call_batched(call, chunks, batch_size):
    """Runs `call(inputs) -> [B, ...]` over `chunks` (an iterable of {name: [N, ...] array})
    in batches of exactly `batch_size` (the last one zero-padded, its padding dropped), so the
    exported function compiles once and memory stays that of one batch and one chunk.

    Returns the outputs of every row, concatenated in order.
    """
    outputs, pending, count = [], [], 0
    for chunk in chunks:
        pending.append(chunk)
        count += len(next(iter(chunk.values())))
        while count >= batch_size:
            merged = {k: np.concatenate([c[k] for c in pending]) for k in pending[0]}
            outputs.append(np.asarray(call({k: v[:batch_size] for k, v in merged.items()})))
            rest = {k: v[batch_size:] for k, v in merged.items()}
            count -= batch_size
            pending = [rest] if count else []
    if count:
        merged = {k: np.concatenate([c[k] for c in pending]) for k in pending[0]}
        padded = {k: np.concatenate([v, np.zeros((batch_size - count,) + v.shape[1:], v.dtype)])
                  for k, v in merged.items()}
        outputs.append(np.asarray(call(padded))[:count])
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def save_params_npz(path, params):
    """A nested dict of arrays as one .npz of '/'-joined keys (no pickle; numpy reads it)."""
    flat = {}

    def walk(tree, prefix):
        for key, value in tree.items():
            if "/" in str(key):
                raise ValueError(f"parameter key {key!r} under {prefix!r} holds a '/'")
            name = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, dict):
                walk(value, name)
            else:
                flat[name] = np.asarray(value)

    walk(params, "")
    np.savez(path, **flat)


def load_params_npz(path):
    """The nested dict `save_params_npz` wrote."""
    params = {}
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            node = params
            *parents, leaf = name.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = data[name]
    return params


def ps_predict(input_dir, output_dir, *, call, signature, batch_size=256):
    """MER-PS on a test folder (`sample_ids.csv` + `data/<subject>/*.mat`, any subject names):
    the builder's preprocessing (tfds_builders/mer_ps/signals.py), the training subjects'
    per-(video, second) prior from the export, the exported network, then
    `<output_dir>/predictions.csv`. Returns its path."""
    from tfds_builders import features
    from tfds_builders.mer_ps import signals
    prep = signature["preprocessing"]
    prior = signature["label_prior"]
    ids = []

    def chunks():
        for trial_ids, inputs, video, seconds in signals.hidden_trials(
                input_dir, eeg_rate_hz=int(prep["eeg_rate_hz"]),
                context_s=int(prep["context_s"]), fnirs_bins=int(prep["fnirs_bins"]),
                fnirs_types=tuple(int(t) for t in prep["fnirs_types"])):
            ids.extend(trial_ids)
            inputs["prior"] = np.stack([features.prior_at(prior, video, int(s)) for s in seconds])
            yield {k: np.asarray(inputs[k], signature["inputs"][k]["dtype"])
                   for k in signature["inputs"]}

    outputs = call_batched(call, chunks(), batch_size)
    os.makedirs(output_dir, exist_ok=True)
    return write_ps_predictions(os.path.join(output_dir, PS_FILE), ids, outputs)
