"""MER-Prefer (track 3): what is track-specific, and nothing else.

Each judged row is a clip and two descriptions, a1 and a2, with the human preference a1, a2 or
same (a tie). The model (models/prefer.py) scores each description against the clip and reads
P(a1 preferred) = sigmoid(s(a1) - s(a2)) (Bradley-Terry); the loss is the binary cross-entropy
of that probability against 1 (a1), 0 (a2) or, with `config.ties="soft"`, 0.5 for a tie
(`"drop"` leaves ties out), each row weighted by its source (`config.source_weights`).

Validation folds are the builder's clip-disjoint folds (`fold`): fold k validates on its rows,
ties included (the metric leaves them out), and trains on the rest. Train clips without any
input are left out of both sides (the metadata's `no_input`).

Scoring is MER2026.md §6.3: two-class WAF and ACC over the rows whose gold is not a tie, a
predicted tie counted as a1; the model never predicts a tie (P >= 0.5 is a1). Beside it:
the three-class weighted F1 (val/waf3, for analysis: a tie is never predicted), the baselines
always-a1 (val/a1_waf) and longer-description-wins (val/longer_waf, equal lengths a1), and the
reference read-out (val/ref_waf, `reference`): a logistic regression on the clip's pooled inputs,
randomly projected, crossed with the difference of the two descriptions' letter profiles.

Candidates: the probabilities are averaged over folds and thresholded at 0.5 into answer.csv
(name,a1,a2,preference), one row per row of track3_candidate.csv in its order, repeated names
kept; a1/a2 are the candidate file's texts as the builder stored them. A candidate whose clip has
no input at all is answered with the majority preference of the judged rows (a1 or a2; a1 when
they are even): the model was never trained on an empty clip, and the descriptions alone say
nothing about which of them fits it.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from merjax import metrics, submission, reference as ref
from merjax.data import clip_inputs, pipeline
from merjax.models import prefer as prefer_model
from merjax.tasks import clips, common
from tfds_builders.mer2026 import PREFERENCES

DATASET = "mer_prefer"
SPLITS = ("train", "candidates")
ID_FIELD = "name"
SELECT = ("waf", "max")
EVAL_FIELDS = ("preference", "row", "lengths")
SUBMISSION_FILE = "answer.csv"
DESCRIPTIONS = clip_inputs.DESCRIPTIONS  # ("a1", "a2")
A1, A2, SAME = range(3)  # the metric's encoding (csvs.PREFERENCES)
TARGETS = {A1: 1.0, A2: 0.0, SAME: 0.5}  # P(a1 preferred)
TIES = ("soft", "drop")


def folds(config, data):
    """Fold k validates on the judged rows the builder put in fold k and trains on every other
    row whose clip has an input."""
    del config
    return clips.builder_folds(data, ID_FIELD, "judged row")


def description_length(config, data):
    """The padded byte length of a description: the stored one rounded up to whole tokens of
    `config.model.text.group` bytes."""
    return clip_inputs.round_up(data.info.features["a1_bytes"].shape[0],
                                config.model.text.group)


def _weights(config, data):
    """{source: loss weight} for every configured source; an error naming a missing one."""
    weights = dict(config.source_weights)
    missing = [s for s in data.builder_config.sources if s not in weights]
    if missing:
        raise ValueError(f"config.source_weights has no weight for the train source(s) "
                         f"{missing}; expected one per entry of config.data.sources, found "
                         f"{sorted(weights)}")
    if config.ties not in TIES:
        raise ValueError(f"config.ties must be one of {TIES}; found {config.ties!r}")
    return {s: float(w) for s, w in weights.items()}


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def make_transform(config, data):
    mods = clips.modalities(data)
    length = description_length(config, data)
    weights = _weights(config, data)
    drop_ties = config.ties == "drop"

    def transform(example):
        preference = int(example["preference"])  # -1 for candidates: no target, no weight
        weight = weights.get(_text(example["source"]), 0.0) if preference >= 0 else 0.0
        if preference == SAME and drop_ties:
            weight = 0.0
        out = {"preference": np.int32(preference), "row": np.int32(example["index"]),
               "target": np.float32(TARGETS.get(preference, 0.5)), "weight": np.float32(weight),
               # The whole texts' UTF-8 lengths (the stored bytes may be cut): the length rule.
               "lengths": np.array([len(_text(example[c]).encode("utf-8"))
                                    for c in DESCRIPTIONS], np.int32)}
        out.update(clip_inputs.descriptions(example, length))
        out.update(clip_inputs.inputs(example, mods))
        return out

    return transform


def model_inputs(config, data):
    del config
    return clips.input_names(data) + clip_inputs.description_names()


def input_stats(train, config):
    """The clip inputs' statistics (clips.input_stats) and, under "description", the mean and
    std of the byte histogram (models/prefer.byte_histogram) over the train descriptions."""
    stats = clips.input_stats(train, config)
    take = common.stats_sample(train, config.data.stats_examples)
    hists = []
    for i in take:
        example = train[int(i)]
        for c in DESCRIPTIONS:
            n = int(example[f"{c}_length"])
            counts = np.bincount(np.asarray(example[f"{c}_bytes"])[:n], minlength=256)
            hists.append(np.append(counts / max(n, 1), n))
    hists = np.asarray(hists, np.float64)
    mean, std = common.moments(hists.sum(0), (hists ** 2).sum(0), len(hists), floor=1e-6)
    stats["description"] = (mean.astype(np.float32), std.astype(np.float32))
    return stats


def build_model(config, data, stats, rngs):
    m = config.model
    if m.name != "fusion":
        raise ValueError(f"MER-Prefer has the models 'fusion' (the clip encoder of the "
                         f"preference model) and 'logistic' (the reference read-out); "
                         f"config.model.name is {m.name!r}")
    clip = dict(modalities=clips.modalities(data), width=m.width, depth=m.depth, heads=m.heads,
                mlp_dim=m.mlp_dim, dropout=m.dropout, fusion=m.fusion,
                bottlenecks=m.bottlenecks, modality_dropout=m.modality_dropout, wide=m.wide,
                dtype=m.dtype, remat=m.remat, scan_layers=m.scan_layers)
    return prefer_model.PreferenceModel(
        clip=clip, length=description_length(config, data), text=dict(m.text), joint_dim=m.joint_dim,
        dropout=m.dropout, stats=stats, rngs=rngs)


# ---- the reference read-out

def pair_features(mods, clip_dims, seed=0):
    """batch -> [B, (clip_dims + 1) * 27]: the difference of the two descriptions' letter
    profiles (letter_profile), alone and multiplied by each of `clip_dims` fixed random
    projections of the clip's pooled inputs (clips.pooled_features).

    A linear model cannot compare a clip with a description from the two side by side; the
    products give it the bilinear form clip' W (h(a1) - h(a2)), and the projection keeps W
    small enough to fit on a few hundred pairs. The features change sign when a1 and a2 swap.
    Measured on the demo (5 folds, the loop's own fit): the read-out standardises every product,
    which blows up the rare bytes of a full byte histogram (cv WAF 0.71 with 257 byte features
    and 16 projections); 26 letters and 64 projections reach 0.98 in the same fit.
    """
    pooled = clips.pooled_features(mods)
    projection = {}

    def features(batch):
        clip = pooled(batch)
        if "w" not in projection:  # drawn once, for the pooled width
            rng = np.random.default_rng(seed)
            projection["w"] = rng.normal(size=(clip.shape[1], clip_dims)) / np.sqrt(clip.shape[1])
        z = np.concatenate([np.ones((len(clip), 1)), clip @ projection["w"]], axis=1)
        diff = (letter_profile(batch["a1"], batch["a1_mask"])
                - letter_profile(batch["a2"], batch["a2_mask"]))
        return (z[:, :, None] * diff[:, None, :]).reshape(len(clip), -1)

    return features


def letter_profile(ids, mask):
    """[B, L] byte ids (byte + 1, 0 = padding) -> [B, 27]: the frequency of each letter a-z
    (either case) among a description's bytes, and its length in bytes."""
    mask = np.asarray(mask, bool)
    count = np.maximum(mask.sum(1), 1)
    hist = np.stack([np.bincount(row[m], minlength=257)[1:] for row, m in zip(ids, mask)])
    letters = hist[:, ord("a"):ord("z") + 1] + hist[:, ord("A"):ord("Z") + 1]
    return np.concatenate([letters / count[:, None], mask.sum(1, keepdims=True)], axis=1)


def reference(config, data):
    """A logistic read-out of P(a1 preferred) on pair_features, with the model's targets
    (1 a1, 0 a2, 0.5 a tie: a sigmoid cross-entropy takes soft targets)."""
    return ref.Readout(name="logistic", kind="sigmoid",
                       features=pair_features(clips.modalities(data),
                                              int(config.reference.clip_dims)),
                       num_outputs=1,
                       target=lambda rows: np.asarray(
                           [[TARGETS[int(p)]] for p in rows["preference"]], np.float32),
                       output=lambda scores, rows: 1 / (1 + np.exp(-scores[:, 0])))


# ---- training and evaluation

def loss(model, batch, config, rngs):
    """Weighted binary cross-entropy of sigmoid(s(a1) - s(a2)) against the row's target."""
    del config
    logit = model(batch, train=True, rngs=rngs)
    weight = batch["weight"]
    per_row = optax.sigmoid_binary_cross_entropy(logit, batch["target"])
    value = (per_row * weight).sum() / jnp.maximum(weight.sum(), 1e-6)
    decided = (batch["preference"] != SAME) & (weight > 0)
    hits = ((logit > 0) == (batch["preference"] == A1)) & decided
    return value, {"accuracy": hits.sum() / jnp.maximum(decided.sum(), 1)}


def predict(model, batch):
    """P(a1 preferred) [B] (averaged over folds before the 0.5 threshold)."""
    return jax.nn.sigmoid(model(batch, train=False))


def eval_metrics(outputs, kept, data, prefix="val/"):
    del data
    gold = np.asarray(kept["preference"])
    lengths = np.asarray(kept["lengths"])
    out = {}
    answers = {"": submission.prefer_codes(outputs), "a1_": np.full(len(gold), A1),
               "longer_": np.where(lengths[:, 1] > lengths[:, 0], A2, A1)}
    if "reference" in kept:
        answers["ref_"] = submission.prefer_codes(kept["reference"])
    for name, pred in answers.items():
        scores = metrics.preference_scores(gold, pred)
        out[f"{prefix}{name}waf"] = scores["waf"]
        out[f"{prefix}{name}acc"] = scores["acc"]
    out[f"{prefix}waf3"] = metrics.preference_waf3(gold, answers[""])
    return out


def summarize(results):
    return common.cv_means(results)


def data_report(data):
    meta = data.info.metadata
    report = {f"data/{split}_examples": len(data.splits[split]) for split in SPLITS}
    for source, counts in meta["preference_counts"].items():
        report.update({f"data/{source}_{p}": int(n) for p, n in counts.items()})
    for split in SPLITS:
        report[f"data/{split}_rows_no_input"] = int(meta["rows_no_input"][split])
        report[f"data/{split}_rows_missing_input"] = int(meta["rows_missing"][split])
        report[f"data/{split}_cut_descriptions"] = int(meta["cut_descriptions"][split])
    rows = meta["rows_no_input"]
    if rows["train"] or rows["candidates"]:
        logging.warning("MER-Prefer: %d judged rows have a clip without any input (left out of "
                        "training and validation); %d candidate rows do (answered %r, the "
                        "majority preference)", rows["train"], rows["candidates"],
                        majority_preference(data))
    return report


def majority_preference(data):
    """"a1" or "a2": the more frequent of the two over the judged rows (a1 when even)."""
    counts = data.info.metadata["preference_counts"].values()
    a1, a2 = (sum(int(c[p]) for c in counts) for p in PREFERENCES[:2])
    return PREFERENCES[A1] if a1 >= a2 else PREFERENCES[A2]


def export_metadata(config, data, scores):
    """Beside the answers' rule: the padded description length the model reads
    (`description_length`); the builder's cut (`max_description_bytes`) is in clip_inputs."""
    del scores
    return dict(output="P(a1 preferred) per pair; average over folds, then a1 where >= 0.5, "
                       "else a2",
                outputs=dict(names=["P(a1 preferred)"], kind="probability"),
                preference_names=list(PREFERENCES[:2]),
                description_length=int(description_length(config, data)),
                no_input_answer=majority_preference(data),
                no_input_rule="a pair whose clip misses every input (the builder's no_input) "
                              "is answered no_input_answer, not by the model",
                builder_config=data.builder_config.name,
                **clips.export_metadata(data, DATASET, ("max_description_bytes",)))


def write_outputs(workdir, results, config, data):
    """answer.csv (name,a1,a2,preference), one row per candidate row in its order, and
    answer.zip; candidate_probabilities.npz keeps the averaged probabilities."""
    del config
    if jax.process_index() != 0:
        return
    meta = data.info.metadata
    order, names, probs = clips.fold_mean(results, data)
    source = data.splits["candidates"]
    texts = []
    for position, name in zip(order.tolist(), names):
        example = source[position]
        if pipeline.decode_id(example, ID_FIELD) != name:
            raise RuntimeError(f"candidate row {len(texts)}: the split holds "
                               f"{pipeline.decode_id(example, ID_FIELD)!r} where the "
                               f"predictions say {name!r}")
        texts.append([_text(example[c]) for c in DESCRIPTIONS])
    without = set(meta["no_input"]["candidates"])
    no_input = np.array([n in without for n in names], bool)
    fallback = majority_preference(data)
    answer = submission.prefer_answers(probs, no_input, fallback, names)
    path = submission.write_answer(workdir, submission.PREFER_HEADER,
                                   ([n, a1, a2, p] for n, (a1, a2), p in zip(names, texts,
                                                                              answer)))
    np.savez(os.path.join(workdir, "candidate_probabilities.npz"), name=np.array(names),
             p_a1=probs, answer=answer.astype(str), no_input=no_input)
    logging.info("wrote %d candidate answers to %s and answer.zip (P(a1) averaged over %d "
                 "folds; a1 %d, a2 %d; %d rows without any input answered %r)", len(names),
                 path, len(results), int((answer == "a1").sum()), int((answer == "a2").sum()),
                 int(no_input.sum()), fallback)
