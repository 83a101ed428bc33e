"""MER-Cross (track 1): what is track-specific, and nothing else.

Seeded K-fold cross-validation over track1_train (MERTools' protocol, made reproducible): each
fold selects its state by validation WAF, predicts the candidates, and the candidates' logits are
averaged over folds before the argmax, as the official baseline does.

Missing inputs (data.on_missing='skip'; the builder writes every clip): a missing input arrives
as zeros with `<input>_length = 0`, so its mask is all false and the model ignores it. Train
clips with no input at all are left out of the folds (neither trained nor validated on);
candidates with no input at all are answered with the majority training class. Both are counted
in `data_report` (metrics.jsonl) and logged.
"""
import os
import zipfile

import jax
import numpy as np
import optax
from absl import logging

from merjax import metrics
from merjax.data import pipeline
from merjax.models import fusion, text
from merjax.tasks import common
from tfds_builders.mer2026 import TRACK1_LABELS

DATASET = "mer_cross"
SPLITS = ("train", "candidates")
LABELS = TRACK1_LABELS  # neutral, angry, happy, sad, worried, surprise (index 0..5)
ID_FIELD = "name"
SELECT = ("val/waf", "max")
EVAL_FIELDS = ("label", "row")
SUBMISSION_FILE = "answer.csv"


def folds(config, data):
    """K seeded, disjoint validation folds covering once each train clip that has an input."""
    train = data.splits["train"]
    usable = _with_input(train, data)
    k = int(config.cv.folds)
    if not 2 <= k <= len(usable):
        raise ValueError(f"config.cv.folds={k} needs 2 <= folds <= {len(usable)} train clips "
                         f"with inputs")
    order = usable[np.random.default_rng(config.cv.seed).permutation(len(usable))]
    parts = np.array_split(order, k)
    return [common.Fold(f"fold_{i}", i,
                        pipeline.Subset(train, np.sort(np.concatenate(parts[:i] + parts[i + 1:]))),
                        pipeline.Subset(train, np.sort(part)), data.splits["candidates"])
            for i, part in enumerate(parts)]


def _with_input(train, data):
    """Positions in the train split of the clips with at least one input.

    The metadata names the clips without any input; their positions (hashed-key order) are
    found by reading the split, which only happens when there are some.
    """
    gone = set(data.info.metadata["no_input"]["train"])
    if not gone:
        return np.arange(len(train))
    names = [pipeline.decode_id(train[i], ID_FIELD) for i in range(len(train))]
    keep = np.array([i for i, n in enumerate(names) if n not in gone], np.int64)
    if len(names) - len(keep) != len(gone):
        raise RuntimeError(f"the prepared train split holds {len(names) - len(keep)} of the "
                           f"{len(gone)} clips its metadata lists without input; rebuild it")
    return keep


# Input name -> stem kind, by the prepared dataset's input kind.
_STEMS = {"features": {"audio": "dense", "text": "dense", "video": "dense"},
          "raw": {"audio": "mel", "faces": "faces", "text": "bytes"}}
_GROUP = 4  # mel frames and text bytes per token (models/fusion.py, models/text.py)


def modalities(config, data):
    """{name: (stem kind, input dim, padded input length)}, read off the dataset's features."""
    del config
    f = data.info.features
    stems = _STEMS["features" if "video" in f else "raw"]
    out = {}
    for name, kind in stems.items():
        if kind == "dense":
            length, dim = f[name].shape
        elif kind == "mel":
            length, dim = _round_up(f[name].shape[0], _GROUP), f[name].shape[1]
        elif kind == "faces":
            length, dim = f[name].shape[0], f[name].shape[1]
        else:  # bytes: the zero-padded UTF-8 bytes beside the text
            length, dim = _round_up(f["text_bytes"].shape[0], _GROUP), 0
        out[name] = (kind, dim, length)
    return out


def _round_up(n, m):
    return -(-n // m) * m


def make_transform(config, data):
    mods = modalities(config, data)

    def transform(example):
        out = {"label": np.int32(example["label"]), "row": np.int32(example["index"])}
        for name, (kind, _, length) in mods.items():
            if kind == "bytes":
                n = int(example["text_length"])
                out[name], out[f"{name}_mask"] = text.encode(
                    np.asarray(example["text_bytes"])[:n].tobytes(), length)
            elif kind == "faces":  # faces_length: num_faces, or 0 when the clip has none
                out[name] = example[name]
                out[f"{name}_mask"] = np.arange(length) < int(example[f"{name}_length"])
            else:  # stored zero-padded at the end, with the count of real steps (0: missing)
                x = np.asarray(example[name], np.float32)
                padded = np.zeros((length,) + x.shape[1:], np.float32)
                padded[:len(x)] = x
                out[name] = padded
                out[f"{name}_mask"] = np.arange(length) < int(example[f"{name}_length"])
        return out

    return transform


def model_inputs(config, data):
    return tuple(k for m in modalities(config, data) for k in (m, f"{m}_mask"))


def export_metadata(data):
    majority = LABELS[int(data.info.metadata["majority_label"])]
    return dict(output="logits over label_names; average over folds, then argmax",
                label_names=list(LABELS), builder_config=data.builder_config.name,
                no_input_label=majority,
                no_input_rule=f"an example whose every *_mask is all false is answered "
                              f"{majority!r} (the majority training class), not by the argmax")


def input_stats(train, config):
    """Per-dimension mean/std of the feature (or log-mel) inputs over the train split's real
    steps; faces and bytes normalise themselves. {name: (mean [D], std [D])}."""
    take = common.stats_sample(train, config.data.stats_examples)
    names = [k for k in ("audio", "text", "video") if f"{k}_length" in train[0]
             and np.ndim(train[0][k]) == 2]
    sums = {k: 0.0 for k in names}
    squares = {k: 0.0 for k in names}
    counts = {k: 0 for k in names}
    for i in take:
        example = train[int(i)]
        for k in names:
            x = np.asarray(example[k], np.float64)[:int(example[f"{k}_length"])]
            sums[k] = sums[k] + x.sum(axis=0)
            squares[k] = squares[k] + (x ** 2).sum(axis=0)
            counts[k] += len(x)
    stats = {}
    for k in names:
        mean, std = common.moments(np.asarray(sums[k]), np.asarray(squares[k]), counts[k],
                                   floor=1e-6)
        stats[k] = (mean.astype(np.float32), std.astype(np.float32))
    logging.info("input stats from %d train clips: %s", len(take),
                 ", ".join(f"{k} mean |mean| {np.abs(m).mean():.3g}, mean std {s.mean():.3g}"
                           for k, (m, s) in stats.items()))
    return stats


def build_model(config, data, stats, rngs):
    m = config.model
    if m.name != "fusion":
        raise ValueError(f"MER-Cross has the model 'fusion'; config.model.name is {m.name!r}")
    return fusion.FusionTransformer(
        modalities=modalities(config, data), width=m.width, depth=m.depth, heads=m.heads,
        mlp_dim=m.mlp_dim, dropout=m.dropout, num_classes=len(LABELS), fusion=m.fusion,
        bottlenecks=m.bottlenecks, modality_dropout=m.modality_dropout, stats=stats, rngs=rngs)


def loss(model, batch, config, rngs):
    logits = model(batch, train=True, rngs=rngs)
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], len(LABELS)),
                                  config.label_smoothing)
    value = optax.softmax_cross_entropy(logits, targets).mean()
    return value, {"accuracy": (logits.argmax(-1) == batch["label"]).mean()}


def predict(model, batch):
    """Logits [B, 6] (averaged over folds before the argmax, as MERTools does)."""
    return model(batch, train=False)


def eval_metrics(outputs, kept, prefix="val/"):
    pred = np.asarray(outputs).argmax(-1)
    return {f"{prefix}waf": metrics.weighted_f1(kept["label"], pred),
            f"{prefix}acc": metrics.accuracy(kept["label"], pred)}


def summarize(results):
    """The cross-validated scores: the mean over folds of each fold's selected val/waf, val/acc."""
    return {f"cv/{k}": float(np.mean([r.scores[f"val/{k}"] for r in results]))
            for k in ("waf", "acc")}


def data_report(data):
    """Examples per split, and per split how many clips miss each input and how many miss
    all of them (one WARNING line per split that has any)."""
    meta = data.info.metadata
    majority = LABELS[int(meta["majority_label"])]
    report = {f"data/{split}_examples": len(data.splits[split]) for split in SPLITS}
    for split in SPLITS:
        counts = meta["num_missing"][split]
        report.update({f"data/{split}_missing_{k}": int(n) for k, n in counts.items()})
        report[f"data/{split}_no_input"] = none = int(meta["num_no_input"][split])
        if any(counts.values()):
            fate = ("left out of training and validation" if split == "train" else
                    f"answered {majority!r}, the majority training class")
            logging.warning(
                "MER-Cross %s: %d clips, missing %s (each masked out, the clip's other inputs "
                "are used); %d miss every input (%s). Per clip: the dataset metadata's "
                "'missing'", split, meta["csv_rows"][split],
                ", ".join(f"{k} {n}" for k, n in counts.items()), none, fate)
    return report


def write_outputs(workdir, results, config, data):
    """answer.csv (name,discrete): one row per row of track1_track2_candidate.csv, in its order.

    A candidate's answer is the argmax of its logits averaged over every fold; a candidate with
    no input at all (the metadata's `no_input`) is answered with the majority training class.
    candidate_logits.npz keeps the averaged logits of every candidate, the answers, and which
    answers are the majority class.
    """
    del config
    if jax.process_index() != 0:
        return
    meta = data.info.metadata
    first = results[0]
    for r in results:
        if r.ids != first.ids or np.shape(r.outputs) != (len(first.ids), len(LABELS)):
            raise RuntimeError(f"{r.name} predicted {len(r.ids)} candidates with outputs of "
                               f"shape {np.shape(r.outputs)}; {first.name} predicted "
                               f"{len(first.ids)}: every fold must predict every candidate")
    logits = np.mean(np.stack([r.outputs for r in results]), axis=0)
    order = np.argsort(first.kept["row"], kind="stable")  # back to track1_track2_candidate.csv
    rows = np.asarray(first.kept["row"])[order]
    expected = meta["csv_rows"]["candidates"]
    if not np.array_equal(rows, np.arange(expected)):
        lost = sorted(set(range(expected)) - set(rows.tolist()))
        raise RuntimeError(f"the predictions cover {len(rows)} candidate rows, the candidate "
                           f"file has {expected}; rows without a prediction: {lost[:10]}")
    names = [first.ids[i] for i in order]
    logits = logits[order]
    without = set(meta["no_input"]["candidates"])
    no_input = np.array([n in without for n in names], bool)
    answer = logits.argmax(-1)
    answer[no_input] = int(meta["majority_label"])
    bad = np.flatnonzero(~np.isfinite(logits).all(-1) & ~no_input)
    if len(bad):
        raise FloatingPointError(f"non-finite averaged logits for {len(bad)} candidates, e.g. "
                                 f"row {bad[0]} ({names[bad[0]]}): {logits[bad[0]]}")
    path = os.path.join(workdir, SUBMISSION_FILE)
    common.write_csv(path, ["name", "discrete"],
                     ([n, LABELS[int(c)]] for n, c in zip(names, answer)))
    with zipfile.ZipFile(os.path.join(workdir, "answer.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, arcname=SUBMISSION_FILE)
    np.savez(os.path.join(workdir, "candidate_logits.npz"), name=np.array(names), logits=logits,
             labels=np.array(LABELS), answer=answer, no_input=no_input)
    logging.info("wrote %d candidate answers to %s and answer.zip (logits averaged over %d "
                 "folds; %d candidates without any input answered %r, the majority training "
                 "class)", len(names), path, len(results), int(no_input.sum()),
                 LABELS[int(meta["majority_label"])])
