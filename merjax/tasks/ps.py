"""MER-PS (track 4): what is track-specific, and nothing else.

The loop asks this module (contract: merjax/tasks/__init__.py) for: its folds (one: train /
validation subjects), input statistics, the model, the loss, the predictions, the evaluation metrics and the
submission file (predictions for the validation subjects).
"""
import os

import jax
import jax.numpy as jnp
import optax
import numpy as np
from absl import logging

from merjax import metrics
from merjax.data import transforms
from merjax.models import physio
from merjax.tasks import common

DATASET = "mer_ps"
SPLITS = ("train", "validation")
ID_FIELD = "sample_id"
SELECT = None  # predict with the last state (the official kit has no model selection)
MODEL_FIELDS = ("eeg", "fnirs", "fnirs_mask", "context_mask", "prior")
EVAL_FIELDS = ("label", "prior")  # kept from each eval batch for the metrics
SUBMISSION_FILE = "predictions.csv"


def folds(config, data):
    del config
    train, validation = data.splits["train"], data.splits["validation"]
    return [common.Fold(None, None, train, validation, validation)]


def make_transform(config, data):
    del config, data
    return transform


def model_inputs(config, data):
    del config, data
    return MODEL_FIELDS


def export_metadata(data):
    return dict(
        output="valence, arousal on the raw [1, 255] scale; round half to even and clip to "
               "[1, 255] for predictions.csv",
        sample_id="{subject}_V{video:02d}_T{second:03d}, 0-based second",
        preprocessing={k: data.info.metadata.get(k) for k in (
            "eeg_rate_hz", "context_s", "fnirs_bins", "fnirs_types")},
        label_prior=data.info.metadata.get("label_prior"))


def transform(example):
    return transforms.select(example, MODEL_FIELDS + ("label",), dict(
        eeg=np.float32, fnirs=np.float32, fnirs_mask=bool, context_mask=bool,
        prior=np.float32, label=np.float32))


def input_stats(train, config):
    """Per-channel EEG RMS and per (type, channel) fNIRS mean/std over train examples.

    Padding (seconds before the recording) and bad fNIRS channels are left out of the estimates.
    """
    n = len(train)
    take = np.unique(np.linspace(0, n - 1, min(n, int(config.data.stats_examples))).astype(int))
    eeg_sq = eeg_count = 0.0
    f_sum = f_sq = f_count = 0.0
    for i in take:
        ex = train[int(i)]
        eeg, ctx = np.asarray(ex["eeg"], np.float64), np.asarray(ex["context_mask"], bool)
        valid_t = np.repeat(ctx, eeg.shape[1] // len(ctx))
        eeg_sq = eeg_sq + (eeg[:, valid_t] ** 2).sum(axis=1)
        eeg_count += valid_t.sum()
        fn = np.asarray(ex["fnirs"], np.float64)  # [steps, types, channels]
        valid = (np.repeat(ctx, fn.shape[0] // len(ctx))[:, None, None]
                 & np.asarray(ex["fnirs_mask"], bool)[None, None, :])
        w = np.broadcast_to(valid, fn.shape)
        f_sum = f_sum + (fn * w).sum(axis=0)
        f_sq = f_sq + (fn ** 2 * w).sum(axis=0)
        f_count = f_count + w.sum(axis=0)
    eeg_scale = np.sqrt(eeg_sq / max(eeg_count, 1))
    f_count = np.maximum(f_count, 1)
    f_mean = f_sum / f_count
    f_std = np.sqrt(np.maximum(f_sq / f_count - f_mean ** 2, 0))
    stats = dict(eeg_scale=np.where(eeg_scale > 1e-8, eeg_scale, 1.0),
                 fnirs_mean=f_mean, fnirs_std=np.where(f_std > 1e-8, f_std, 1.0))
    logging.info("input stats from %d train examples: EEG RMS median %.4g, fNIRS std median %.4g",
                 len(take), np.median(stats["eeg_scale"]), np.median(stats["fnirs_std"]))
    return {k: v.astype(np.float32) for k, v in stats.items()}


def build_model(config, data, stats, rngs):
    """`stats=None` gives placeholders of the right shapes (restores overwrite them)."""
    f = data.info.features
    eeg_channels, eeg_window = f["eeg"].shape
    fnirs_steps, fnirs_types, fnirs_channels = f["fnirs"].shape
    if stats is None:
        stats = dict(eeg_scale=np.ones(eeg_channels, np.float32),
                     fnirs_mean=np.zeros((fnirs_types, fnirs_channels), np.float32),
                     fnirs_std=np.ones((fnirs_types, fnirs_channels), np.float32))
    m = config.model
    if m.name != "physio":
        raise ValueError(f"MER-PS has the model 'physio'; config.model.name is {m.name!r}")
    return physio.PhysioEncoder(
        eeg_channels=eeg_channels, eeg_window=eeg_window, context_s=f["context_mask"].shape[0],
        fnirs_steps=fnirs_steps, fnirs_types=fnirs_types, fnirs_channels=fnirs_channels,
        width=m.width, depth=m.depth, heads=m.heads, mlp_dim=m.mlp_dim, dropout=m.dropout,
        eeg_patches_per_s=m.eeg_patches_per_s, stats=stats, use_prior=m.use_prior, rngs=rngs)


def loss(model, batch, config, rngs):
    """Mean L1 (or Huber) distance on the unit scale; aux reports MAE on the raw scale."""
    pred = model(batch, train=True, rngs=rngs)
    err = pred - physio.to_unit(batch["label"])
    if config.loss == "l1":
        value = jnp.mean(jnp.abs(err))
    elif config.loss == "huber":
        # Divided by delta: the smooth-L1 form, whose slope far from zero is 1 like L1's.
        value = jnp.mean(optax.huber_loss(err, delta=config.huber_delta)) / config.huber_delta
    else:
        raise ValueError(f"config.loss must be 'l1' or 'huber'; found {config.loss!r}")
    return value, {"mae_raw": jnp.mean(jnp.abs(err)) * (physio.LABEL_MAX - physio.LABEL_MIN)}


def predict(model, batch):
    """Raw-scale [B, 2] valence/arousal (not yet rounded)."""
    return physio.from_unit(model(batch, train=False))


def eval_metrics(outputs, kept, prefix="val/"):
    """Model scores plus the prior-only baseline's MAE beside them."""
    out = metrics.ps_metrics(outputs, kept["label"], prefix=prefix)
    out[f"{prefix}prior_mae"] = metrics.ps_metrics(kept["prior"], kept["label"])["mae"]
    return out


def summarize(results):
    return results[0].scores


def data_report(data):
    meta = data.info.metadata
    return {"data/train_examples": len(data.splits["train"]),
            "data/validation_examples": len(data.splits["validation"]),
            "data/bad_fnirs_channels": sum(len(v) for v in meta["bad_fnirs_channels"].values())}


def write_outputs(workdir, results, config, data):
    del config, data
    if jax.process_index() == 0:
        (result,) = results
        path = write_submission(os.path.join(workdir, SUBMISSION_FILE), result.ids, result.outputs)
        logging.info("wrote %d predictions to %s", len(result.ids), path)


def write_submission(path, ids, outputs):
    """The official `sample_id,valence,arousal` file: integers in [1, 255], every id once."""
    values = metrics.ps_to_submission(outputs)
    if len(set(ids)) != len(ids):
        raise ValueError(f"Duplicate sample ids in predictions for {path}")
    order = sorted(range(len(ids)), key=lambda i: ids[i])  # the scorer joins on id; sorted reads well
    ids, values = [ids[i] for i in order], values[order]
    return common.write_csv(path, ["sample_id", "valence", "arousal"],
                            ([i, int(v), int(a)] for i, (v, a) in zip(ids, values)))
