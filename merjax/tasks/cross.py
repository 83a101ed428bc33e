"""MER-Cross (track 1): what is track-specific, and nothing else.

Seeded K-fold cross-validation over track1_train (MERTools' protocol, made reproducible): each
fold selects its state by validation WAF, predicts the candidates, and the candidates' logits are
averaged over folds before the argmax, as the official baseline does.
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
from tfds_builders.mer2026 import csvs
from tfds_builders.mer2026 import demo as mer2026_demo
from tfds_builders.mer2026 import release as mer2026_release
from tfds_builders.mer_cross import mer_cross_dataset_builder as cross_builder

TRACK = "mer2026"  # the demo release is shared by tracks 1-3
LABELS = csvs.TRACK1_LABELS  # neutral, angry, happy, sad, worried, surprise (index 0..5)
ID_FIELD = "name"
SELECT = ("val/waf", "max")
EVAL_FIELDS = ("label", "row")
SUBMISSION_FILE = "answer.csv"
ROLES = cross_builder.ROLES  # audio, text, video


def feature_dims(config, root, probe=16):
    """data.feature_dims, or the D of the configured MERTools folders read from `probe` files.

    The dims name the prepared dataset, so they are needed on every run; reading a few headers
    keeps start-up cheap, and the builder checks every file against them when it builds.
    """
    d = config.data
    if d.feature_dims:
        return tuple(int(x) for x in d.feature_dims)
    base = d.features_root or os.path.join(root, "features")
    dims = []
    for role in ROLES:
        folder = os.path.join(base, d.features[role])
        names = sorted(mer2026_release.index_features(folder))[:probe]
        dims.append(mer2026_release.check_feature_dims(folder, names=names))
    return tuple(dims)


def builder_config(config, release, root):
    d = config.data
    fields = dict(input_kind=d.input_kind, release=release, on_missing=d.on_missing)
    if d.input_kind == "features":
        fields.update(features_root=d.features_root,
                      feature_dirs=tuple(d.features[r] for r in ROLES),
                      feature_dims=feature_dims(config, root), feature_level=d.feature_level,
                      max_frames=d.max_frames)
    else:
        fields.update(n_mels=d.n_mels, max_audio_s=d.max_audio_s, num_faces=d.num_faces,
                      face_size=d.face_size, text_language=d.text_language,
                      max_text_bytes=d.max_text_bytes)
    return cross_builder.make_config(**fields)


def prepare(config, workdir):
    del workdir

    def write_demo(root):
        mer2026_demo.write_demo_release(root, seed=config.data.demo.seed,
                                        scale=config.data.demo.scale)

    return common.prepare(config, TRACK, cross_builder.Builder,
                          lambda release, root: builder_config(config, release, root),
                          write_demo, splits=("train", "candidates"))


def describe(config):
    if config.data.input_kind == "features" and not config.data.feature_dims:
        raise ValueError("Synthetic inputs need config.data.feature_dims (e.g. configs/cross.py:bench)")
    return common.describe(cross_builder.Builder, builder_config(config, "demo", None))


def folds(config, data):
    """K seeded, disjoint validation folds covering track1_train once each."""
    train = data.splits["train"]
    k = int(config.cv.folds)
    if not 2 <= k <= len(train):
        raise ValueError(f"config.cv.folds={k} needs 2 <= folds <= {len(train)} train clips")
    order = np.random.default_rng(config.cv.seed).permutation(len(train))
    parts = np.array_split(order, k)
    return [common.Fold(f"fold_{i}", i,
                        pipeline.Subset(train, np.sort(np.concatenate(parts[:i] + parts[i + 1:]))),
                        pipeline.Subset(train, np.sort(part)), data.splits["candidates"])
            for i, part in enumerate(parts)]


def modalities(config, data):
    """{name: (stem kind, input dim, padded input length)} for the fusion model and transform."""
    del config  # the shapes come from the prepared dataset's builder config
    c = data.builder_config
    if c.input_kind == "features":
        length = 1 if c.feature_level == "utt" else c.max_frames
        return {r: ("dense", dim, length) for r, dim in zip(ROLES, c.feature_dims)}
    mel_frames = 1 + int(round(c.max_audio_s * 100))  # 10 ms hop, centred frames
    return {"audio": ("mel", c.n_mels, _round_up(mel_frames, 4)),
            "faces": ("faces", c.face_size, c.num_faces),
            "text": ("bytes", 0, _round_up(c.max_text_bytes, 4))}


def _round_up(n, m):
    return -(-n // m) * m


def make_transform(config, data):
    mods = modalities(config, data)

    def transform(example):
        out = {"label": np.int32(example["label"]), "row": np.int32(example["index"])}
        for name, (kind, _, length) in mods.items():
            if kind == "bytes":
                out[name], out[f"{name}_mask"] = text.encode(example[name], length)
                continue
            x = np.asarray(example[name])
            if kind == "faces":
                out[name], out[f"{name}_mask"] = x, np.ones(len(x), bool)
                continue
            x = x[-length:]  # frame features are already pooled to <= length; crop is a guard
            padded = np.zeros((length,) + x.shape[1:], np.float32)
            padded[:len(x)] = x
            out[name], out[f"{name}_mask"] = padded, np.arange(length) < len(x)
        return out

    return transform


def model_inputs(config, data):
    return tuple(k for m in modalities(config, data) for k in (m, f"{m}_mask"))


def export_metadata(data):
    return dict(output="logits over label_names; average over folds, then argmax",
                label_names=list(LABELS), builder_config=data.builder_config.name)


def input_stats(train, config):
    del train, config  # every stem normalises its own tokens


def build_model(config, data, stats, rngs):
    del stats
    m = config.model
    if m.name != "fusion":
        raise ValueError(f"MER-Cross has the model 'fusion'; config.model.name is {m.name!r}")
    return fusion.FusionTransformer(
        modalities=modalities(config, data), width=m.width, depth=m.depth, heads=m.heads,
        mlp_dim=m.mlp_dim, dropout=m.dropout, num_classes=len(LABELS), fusion=m.fusion,
        bottlenecks=m.bottlenecks, modality_dropout=m.modality_dropout, rngs=rngs)


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


def write_outputs(workdir, results, config):
    """answer.csv (name,discrete; candidate file order) + answer.zip, and the averaged logits."""
    del config
    if jax.process_index() != 0:
        return
    first = results[0]
    for r in results[1:]:
        if r.ids != first.ids:
            raise RuntimeError(f"{r.name} predicted other candidates than {first.name}")
    logits = np.mean([r.outputs for r in results], axis=0)
    order = np.argsort(first.kept["row"], kind="stable")  # back to track1_track2_candidate.csv
    names = [first.ids[i] for i in order]
    logits = logits[order]
    path = os.path.join(workdir, SUBMISSION_FILE)
    common.write_csv(path, ["name", "discrete"],
                     ([n, LABELS[int(c)]] for n, c in zip(names, logits.argmax(-1))))
    with zipfile.ZipFile(os.path.join(workdir, "answer.zip"), "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, arcname=SUBMISSION_FILE)
    np.savez(os.path.join(workdir, "candidate_logits.npz"), name=np.array(names), logits=logits,
             labels=np.array(LABELS))
    logging.info("wrote %d candidate predictions to %s and answer.zip (logits averaged over "
                 "%d folds)", len(names), path, len(results))
