"""MER-Cross (track 1): what is track-specific, and nothing else.

Seeded K-fold cross-validation over track1_train (MERTools' protocol, made reproducible): each
fold selects its state by validation WAF, predicts the candidates, and the candidates' logits are
averaged over folds before the argmax, as the official baseline does.

Beside the model, a logistic read-out of the pooled, standardised inputs (`reference`) is
fitted per fold; its scores (val/ref_waf, cv/ref_waf) are logged beside the model's, and
`model.name='logistic'` makes it the run's model.

Missing inputs (data.on_missing='skip'; the builder writes every clip): a missing input arrives
as zeros with `<input>_length = 0`, so its mask is all false and the model ignores it. Train
clips with no input at all are left out of the folds (neither trained nor validated on);
candidates with no input at all are answered with the majority training class. Both are counted
in `data_report` (metrics.jsonl) and logged.
"""
import os

import jax
import numpy as np
import optax
from absl import logging

from merjax import metrics, submission, reference as ref
from merjax.data import clip_inputs, pipeline
from merjax.tasks import clips, common
from tfds_builders.mer2026 import TRACK1_LABELS

DATASET = "mer_cross"
SPLITS = ("train", "candidates")
LABELS = TRACK1_LABELS  # neutral, angry, happy, sad, worried, surprise (index 0..5)
ID_FIELD = "name"
SELECT = ("waf", "max")
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


def modalities(config, data):
    del config
    return clips.modalities(data)


def make_transform(config, data):
    mods = clips.modalities(data)

    def transform(example):
        return {"label": np.int32(example["label"]), "row": np.int32(example["index"]),
                **clip_inputs.inputs(example, mods)}

    return transform


def model_inputs(config, data):
    del config
    return clips.input_names(data)


def export_metadata(config, data, scores):
    del config, scores
    majority = LABELS[int(data.info.metadata["majority_label"])]
    return dict(output="logits over label_names; average over folds, then argmax",
                outputs=dict(names=list(LABELS), kind="logits"),
                label_names=list(LABELS), builder_config=data.builder_config.name,
                no_input_label=majority,
                no_input_rule=f"a candidate whose clip misses every input (the builder's "
                              f"no_input) is answered {majority!r} (the majority training "
                              f"class), not by the argmax",
                **clips.export_metadata(data, DATASET))


def input_stats(train, config):
    return clips.input_stats(train, config)


def build_model(config, data, stats, rngs):
    m = config.model
    if m.name == "mertools_attention":
        return clips.mertools_model(config, data, len(LABELS), rngs)
    if m.name != "fusion":
        raise ValueError(f"MER-Cross has the models 'fusion', 'mertools_attention' (MERTools' "
                         f"baseline) and 'logistic' (the reference read-out); "
                         f"config.model.name is {m.name!r}")
    return clips.fusion_model(config, data, stats, len(LABELS), rngs)


def reference(config, data):
    """Multinomial logistic regression on the pooled inputs (clips.pooled_features)."""
    del config
    return ref.Readout(name="logistic", kind="logistic",
                       features=clips.pooled_features(clips.modalities(data)),
                       num_outputs=len(LABELS), target=lambda rows: rows["label"],
                       output=lambda scores, rows: scores)


def loss(model, batch, config, rngs):
    logits = model(batch, train=True, rngs=rngs)
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], len(LABELS)),
                                  config.label_smoothing)
    value = optax.softmax_cross_entropy(logits, targets).mean()
    return value, {"accuracy": (logits.argmax(-1) == batch["label"]).mean()}


def predict(model, batch):
    """Logits [B, 6] (averaged over folds before the argmax, as MERTools does)."""
    return model(batch, train=False)


def eval_metrics(outputs, kept, data, prefix="val/"):
    """WAF and accuracy of the model, and (when fitted) of the reference read-out beside it."""
    del data
    out = {}
    for name, scores in (("", outputs), ("ref_", kept.get("reference"))):
        if scores is not None:
            pred = np.asarray(scores).argmax(-1)
            out[f"{prefix}{name}waf"] = metrics.weighted_f1(kept["label"], pred)
            out[f"{prefix}{name}acc"] = metrics.accuracy(kept["label"], pred)
    return out


def summarize(results):
    return common.cv_means(results)


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
    _, names, logits = clips.fold_mean(results, data)
    without = set(meta["no_input"]["candidates"])
    no_input = np.array([n in without for n in names], bool)
    answer = submission.cross_answers(logits, no_input, meta["majority_label"], names)
    path = submission.write_answer(workdir, submission.CROSS_HEADER,
                                   ([n, LABELS[int(c)]] for n, c in zip(names, answer)))
    np.savez(os.path.join(workdir, "candidate_logits.npz"), name=np.array(names), logits=logits,
             labels=np.array(LABELS), answer=answer, no_input=no_input)
    logging.info("wrote %d candidate answers to %s and answer.zip (logits averaged over %d "
                 "folds; %d candidates without any input answered %r, the majority training "
                 "class)", len(names), path, len(results), int(no_input.sum()),
                 LABELS[int(meta["majority_label"])])
