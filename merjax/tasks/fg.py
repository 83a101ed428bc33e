"""MER-FG (track 2): what is track-specific, and nothing else.

Each clip has a set of emotion words; the model scores every word of the dataset's vocabulary
(the base words of the train rows, tfds_builders/mer_fg) with a sigmoid. Validation folds are
the builder's clip-disjoint folds of the Human-OV rows; MER-Caption+ rows always train.

Scoring is the official EW-F1 (merjax.metrics, MER2026.md §6.2) against each validation clip's
*original* words: the transform turns them into their clusters on the five wheels, so the
normalisation of the labels never changes what is scored. Decoding: a clip's words are its top
word plus every word whose probability reaches a threshold; the threshold that maximises EW-F1
on the fold's validation clips is part of the scores (val/threshold), saved with the selected
state, and the candidates are decoded with the folds' mean threshold. Beside the model: the
EW-F1 of answering every clip with the most frequent training word set (val/top_set_ew_f1) and
of a per-word logistic read-out (val/ref_ew_f1, `reference`); and what the model predicts
(words per clip, distinct words, the share of clips given the most common word), so a model
that answers "happy" everywhere shows at a glance.
"""
import collections
import functools

import jax
import numpy as np
import optax
from absl import logging

from merjax import metrics, submission, reference as ref
from merjax.data import clip_inputs
from merjax.tasks import clips, common
from tfds_builders.mer2026 import emotion_wheel, string_to_list

DATASET = "mer_fg"
SPLITS = ("train", "candidates")
ID_FIELD = "name"
SELECT = ("ew_f1", "max")
EVAL_FIELDS = ("labels", "gold", "row")
SUBMISSION_FILE = "answer.csv"
THRESHOLDS = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


def folds(config, data):
    """Fold k validates on the Human-OV clips the builder put in fold k and trains on every
    other clip with an input (MER-Caption+ rows, fold -1, always train)."""
    del config
    return clips.builder_folds(data, ID_FIELD, "Human-OV clip")


@functools.lru_cache(maxsize=4)
def tables(vocabulary, wheel_dir):
    """(the wheel, {wheel: its categories}, [V, clusters] bool: each word's cluster per wheel)."""
    wheel = emotion_wheel.load(wheel_dir or None)
    categories = {w: metrics.wheel_categories(wheel, w) for w in emotion_wheel.WHEELS}
    columns = [(w, c) for w in emotion_wheel.WHEELS for c in categories[w]]
    index = {key: i for i, key in enumerate(columns)}
    word_bits = np.zeros((len(vocabulary), len(columns)), bool)
    for v, word in enumerate(vocabulary):
        for w in emotion_wheel.WHEELS:
            cluster = wheel.cluster(word, w)
            if cluster is not None:
                word_bits[v, index[(w, cluster)]] = True
    return wheel, categories, word_bits


def _data_tables(data):
    c = data.builder_config
    return tables(tuple(c.vocabulary), c.emotion_wheel_dir)


def make_transform(config, data):
    mods = clips.modalities(data)
    wheel, categories, _ = _data_tables(data)

    def transform(example):
        words = example["words"]
        words = words.decode() if isinstance(words, bytes) else str(words)
        return {"labels": np.asarray(example["labels"], np.float32),
                "gold": gold_bits(words, wheel, categories), "row": np.int32(example["index"]),
                **clip_inputs.inputs(example, mods)}

    return transform


def gold_bits(words, wheel, categories):
    """An openset cell's original words -> bool [clusters]: their clusters on each wheel (in
    the order of `categories`), what the official scorer compares."""
    words = string_to_list(words)
    return np.concatenate([np.isin(categories[w], [wheel.cluster(x, w) for x in words])
                           for w in emotion_wheel.WHEELS])


def model_inputs(config, data):
    del config
    return clips.input_names(data)


def input_stats(train, config):
    return clips.input_stats(train, config)


def build_model(config, data, stats, rngs):
    outputs = len(data.builder_config.vocabulary)
    if config.model.name == "mertools_attention":  # one logit per vocabulary word
        return clips.mertools_model(config, data, outputs, rngs)
    if config.model.name != "fusion":
        raise ValueError(f"MER-FG has the models 'fusion', 'mertools_attention' (MERTools' "
                         f"track-1 baseline, one logit per word) and 'logistic' (the reference "
                         f"read-out); config.model.name is {config.model.name!r}")
    return clips.fusion_model(config, data, stats, outputs, rngs)


def reference(config, data):
    """One logistic regression per word on the pooled inputs (clips.pooled_features)."""
    del config
    return ref.Readout(name="logistic", kind="sigmoid",
                       features=clips.pooled_features(clips.modalities(data)),
                       num_outputs=len(data.builder_config.vocabulary),
                       target=lambda rows: rows["labels"],
                       output=lambda scores, rows: 1 / (1 + np.exp(-scores)))


def loss(model, batch, config, rngs):
    """Per-word sigmoid loss, summed over the vocabulary and averaged over clips."""
    logits = model(batch, train=True, rngs=rngs)
    labels = batch["labels"]
    if config.loss == "focal":
        per_word = optax.sigmoid_focal_loss(logits, labels, gamma=config.focal_gamma)
    elif config.loss == "bce":
        per_word = optax.sigmoid_binary_cross_entropy(logits, labels)
    else:
        raise ValueError(f"config.loss must be 'focal' or 'bce'; found {config.loss!r}")
    hits = ((logits > 0) == (labels > 0.5)).mean()
    return per_word.sum(-1).mean(), {"word_accuracy": hits}


def predict(model, batch):
    """Word probabilities [B, V] (averaged over folds before decoding)."""
    return jax.nn.sigmoid(model(batch, train=False))


def ew(chosen, gold, word_bits, categories):
    """EW scores of chosen words [N, V] against gold cluster bits [N, clusters]."""
    pred = (chosen.astype(np.int32) @ word_bits.astype(np.int32)) > 0
    gold_by, pred_by, start = {}, {}, 0
    for w in emotion_wheel.WHEELS:
        end = start + len(categories[w])
        gold_by[w], pred_by[w] = gold[:, start:end], pred[:, start:end]
        start = end
    return metrics.ew_cluster_scores(gold_by, pred_by)


def _best_threshold(probs, gold, word_bits, categories):
    """(EW scores, threshold) of the threshold in THRESHOLDS with the highest EW-F1."""
    best = None
    for t in THRESHOLDS:
        scores = ew(submission.fg_decode(probs, t), gold, word_bits, categories)
        if best is None or scores["ew_f1"] > best[0]["ew_f1"]:
            best = (scores, float(t))
    return best


def eval_metrics(outputs, kept, data, prefix="val/"):
    _, categories, word_bits = _data_tables(data)
    gold = np.asarray(kept["gold"], bool)
    scores, threshold = _best_threshold(outputs, gold, word_bits, categories)
    chosen = submission.fg_decode(outputs, threshold)
    counts = chosen.sum(0)
    out = {f"{prefix}ew_f1": scores["ew_f1"], f"{prefix}ew_p": scores["ew_p"],
           f"{prefix}ew_r": scores["ew_r"], f"{prefix}threshold": threshold,
           f"{prefix}words_per_clip": float(chosen.sum(1).mean()),
           f"{prefix}distinct_words": float((counts > 0).sum()),
           f"{prefix}top_word_share": float(counts.max() / max(len(chosen), 1))}
    top = _top_set(data)
    out[f"{prefix}top_set_ew_f1"] = ew(np.broadcast_to(top, chosen.shape), gold, word_bits,
                                        categories)["ew_f1"]
    if "reference" in kept:
        out[f"{prefix}ref_ew_f1"] = _best_threshold(kept["reference"], gold, word_bits,
                                                    categories)[0]["ew_f1"]
    return out


def _top_set(data):
    """bool [V]: the most frequent training word set (the builder's metadata)."""
    vocabulary = list(data.builder_config.vocabulary)
    return np.isin(vocabulary, data.info.metadata["most_frequent_set"])


def summarize(results):
    return common.cv_means(results)


def data_report(data):
    meta = data.info.metadata
    report = {f"data/{split}_examples": len(data.splits[split]) for split in SPLITS}
    report["data/vocabulary"] = len(data.builder_config.vocabulary)
    for split in SPLITS:
        report[f"data/{split}_no_input"] = int(meta["num_no_input"][split])
    for source, n in meta["no_word"].items():
        report[f"data/{source}_rows_without_scored_word"] = int(n)
    for source, n in meta["outside_vocabulary"]["occurrences"].items():
        report[f"data/{source}_words_outside_metric"] = int(n)
    return report


def export_metadata(config, data, scores):
    """Beside the vocabulary and the no-input answer: `threshold`, the fold's selected state's
    best validation threshold (val/threshold); the candidates are decoded at the folds' mean."""
    del config
    threshold = (scores or {}).get("val/threshold")
    if threshold is None:
        raise ValueError(f"MER-FG exports need the selected state's validation threshold "
                         f"(val/threshold in its scores); found scores {sorted(scores or {})}. "
                         f"Finish training the run (--mode=train) before --mode=export")
    return dict(output="word probabilities over `vocabulary`; average over folds, then keep "
                       "each clip's top word and every word >= the folds' mean threshold",
                outputs=dict(names="probability of each vocabulary word (`vocabulary`, in "
                                   "order)", kind="probabilities"),
                vocabulary=list(data.builder_config.vocabulary),
                threshold=float(threshold),
                no_input_answer=list(data.info.metadata["most_frequent_set"]),
                no_input_rule="a candidate whose clip misses every input (the builder's "
                              "no_input) is answered no_input_answer, not by the model",
                builder_config=data.builder_config.name,
                **clips.export_metadata(data, DATASET))


def write_outputs(workdir, results, config, data):
    """answer.csv (name,openset), one row per candidate in candidate order, and answer.zip.

    Probabilities are averaged over folds and decoded with the mean of the folds' validation
    thresholds; a candidate without any input gets the most frequent training word set.
    """
    del config
    if jax.process_index() != 0:
        return
    meta, vocabulary = data.info.metadata, list(data.builder_config.vocabulary)
    threshold = float(np.mean([r.scores["val/threshold"] for r in results]))
    _, names, probs = clips.fold_mean(results, data)
    without = set(meta["no_input"]["candidates"])
    no_input = np.array([n in without for n in names], bool)
    chosen = submission.fg_answers(probs, threshold, no_input, _top_set(data), names)
    answers = submission.fg_words(chosen, vocabulary)
    path = submission.write_answer(workdir, submission.FG_HEADER, zip(names, answers))
    counts = collections.Counter(w for a in answers for w in a.split(","))
    logging.info("wrote %d candidate answers to %s and answer.zip (threshold %.2f, %.1f words "
                 "a clip, %d distinct; %d without input answered %s); most given: %s",
                 len(names), path, threshold, chosen.sum(1).mean(), len(counts),
                 int(no_input.sum()), meta["most_frequent_set"], counts.most_common(8))
