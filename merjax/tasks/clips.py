"""What the clip tracks (MER-Cross, MER-FG, MER-Prefer) share on the training side: the clip
inputs of a prepared dataset (tfds_builders/mer2026/clips.py writes them) as model inputs,
their train statistics, their pooled form for the linear reference, the fusion model, and what
an export records so `python -m merjax.predict` reads new clips as the builder did.

Inputs arrive zero-padded to fixed shapes with `<input>_length` (0: missing); each becomes an
array plus a `<input>_mask` (merjax/data/clip_inputs.py, shared with merjax.predict), so the
model ignores padding and missing inputs alike.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from merjax.data import clip_inputs, pipeline
from merjax.models import fusion, mertools
from merjax.tasks import common
from tfds_builders.mer2026 import clips as clip_builder


def builder_folds(data, id_field, what):
    """The folds the builder drew (its `fold` field: [0, num_folds), -1 = always train): fold k
    validates on its rows and trains on every other row; rows whose clip has no input at all
    (the metadata's `no_input`) are on neither side. `what` names the validated rows in errors."""
    train = data.splits["train"]
    gone = set(data.info.metadata["no_input"]["train"])
    fold_of, usable = [], []
    for i in range(len(train)):
        example = train[i]
        fold_of.append(int(example["fold"]))
        usable.append(pipeline.decode_id(example, id_field) not in gone)
    fold_of, usable = np.asarray(fold_of), np.asarray(usable)
    k = int(data.builder_config.num_folds)
    out = []
    for f in range(k):
        held = np.flatnonzero((fold_of == f) & usable)
        if not len(held):
            raise ValueError(f"fold {f} of {k} has no {what} with an input; lower "
                             f"config.data.num_folds (the train split has "
                             f"{int(((fold_of >= 0) & usable).sum())} such rows)")
        out.append(common.Fold(f"fold_{f}", f,
                               pipeline.Subset(train, np.flatnonzero((fold_of != f) & usable)),
                               pipeline.Subset(train, held), data.splits["candidates"]))
    return out


def fold_mean(results, data):
    """(order, names, outputs): the candidates' outputs averaged over the folds, put back in
    the candidate file's order (`order`: positions in the split). Checks that every fold
    predicted every candidate row once, with outputs of one shape."""
    first = results[0]
    for r in results:
        if r.ids != first.ids or np.shape(r.outputs) != np.shape(first.outputs):
            raise RuntimeError(f"{r.name} predicted {len(r.ids)} candidates with outputs of "
                               f"shape {np.shape(r.outputs)}; {first.name} predicted "
                               f"{len(first.ids)} of shape {np.shape(first.outputs)}: every "
                               f"fold must predict every candidate")
    outputs = np.mean(np.stack([r.outputs for r in results]), axis=0)
    order = np.argsort(first.kept["row"], kind="stable")
    rows = np.asarray(first.kept["row"])[order]
    expected = data.info.metadata["csv_rows"]["candidates"]
    if not np.array_equal(rows, np.arange(expected)):
        lost = sorted(set(range(expected)) - set(rows.tolist()))
        raise RuntimeError(f"the predictions cover {len(rows)} candidate rows, the candidate "
                           f"file has {expected}; rows without a prediction: {lost[:10]}")
    return order, [first.ids[i] for i in order], outputs[order]


def modalities(data):
    """{name: (stem kind, input dim, padded input length)}, read off the dataset's features."""
    return clip_inputs.modalities(data.info.features)


def input_names(data):
    """The model's inputs: each modality and its mask (the exported signature's order)."""
    return clip_inputs.input_names(modalities(data))


def export_metadata(data, dataset, track_fields=()):
    """What merjax.predict needs to read candidates as the builder `dataset`
    (tfds_builders/<dataset>/) read them: `clip_inputs` = the builder, the fields that rebuild
    its config (every ClipConfig field but the name and release fingerprint, plus the track's
    own `track_fields` that shape the records) and the modalities table the transform used."""
    c = data.builder_config
    own = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)} | {"release_id"}
    names = [f.name for f in dataclasses.fields(clip_builder.ClipConfig) if f.name not in own]
    fields = {k: _plain(getattr(c, k)) for k in names + list(track_fields)}
    return dict(clip_inputs=dict(
        dataset=dataset, config=fields,
        modalities={k: dict(kind=kind, dim=dim, length=length)
                    for k, (kind, dim, length) in modalities(data).items()}))


def _plain(value):
    """A config value as JSON keeps it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


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


def pooled_features(mods):
    """The linear reference's features: each input pooled over its real steps (features and
    log-mel: mean and std; faces: the mean face at 8 x 8; text: the byte histogram), with one
    presence flag per input. A missing input pools to zeros. batch -> [B, D] float64."""

    def features(batch):
        parts = []
        for name, (kind, _, _) in mods.items():
            x, mask = np.asarray(batch[name]), np.asarray(batch[f"{name}_mask"], bool)
            count = np.maximum(mask.sum(1), 1)
            if kind == "bytes":  # ids are byte + 1, 0 is padding
                hist = np.stack([np.bincount(row[m], minlength=257)[1:]
                                 for row, m in zip(x, mask)])
                parts.append(hist / count[:, None])
            elif kind == "faces":  # [B, N, H, W, 3] uint8 -> mean face, 8 x 8 average pool
                face = (x.astype(np.float32) * mask[:, :, None, None, None]).sum(1)
                face = face / count[:, None, None, None]
                b, h, w, c = face.shape
                parts.append(face[:, :h - h % 8, :w - w % 8].reshape(
                    b, 8, h // 8, 8, w // 8, c).mean((2, 4)).reshape(b, -1))
            else:  # dense features or log-mel frames: [B, T, D]
                m = mask[:, :, None].astype(np.float64)
                mean = (x * m).sum(1) / count[:, None]
                var = ((x - mean[:, None]) ** 2 * m).sum(1) / count[:, None]
                parts += [mean] + ([np.sqrt(var)] if x.shape[1] > 1 else [])
            parts.append(mask.any(1, keepdims=True).astype(np.float64))
        return np.concatenate(parts, axis=1)

    return features


def fusion_model(config, data, stats, num_outputs, rngs):
    """The fusion transformer over the dataset's clip inputs with `num_outputs` logits."""
    m = config.model
    return fusion.FusionTransformer(
        modalities=modalities(data), width=m.width, depth=m.depth, heads=m.heads,
        mlp_dim=m.mlp_dim, dropout=m.dropout, num_classes=num_outputs, fusion=m.fusion,
        bottlenecks=m.bottlenecks, modality_dropout=m.modality_dropout, wide=m.wide,
        dtype=m.dtype, remat=m.remat, scan_layers=m.scan_layers, stats=stats, rngs=rngs)


def mertools_model(config, data, num_outputs, rngs):
    """MERTools' `attention` baseline (models/mertools.py) over the dataset's utterance
    features with `num_outputs` logits; config.model: hidden, dropout, dtype. It reads the
    features as they are (the baseline standardises nothing), so no input stats."""
    if config.data.input_kind != "features":
        raise ValueError(f"model.name='mertools_attention' reads pre-extracted features; "
                         f"config.data.input_kind is {config.data.input_kind!r} (use "
                         f"input_kind=features)")
    if config.data.feature_level != "utt":
        raise ValueError(f"model.name='mertools_attention' is MERTools' utterance-level model "
                         f"(frame-level features take an LSTM encoder there, not reproduced); "
                         f"config.data.feature_level is {config.data.feature_level!r}, "
                         f"expected 'utt'")
    m = config.model
    return mertools.AttentionFusion(
        modalities=modalities(data), hidden=m.hidden, dropout=m.dropout,
        num_outputs=num_outputs, dtype=m.dtype, rngs=rngs)
