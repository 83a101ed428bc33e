"""MER-PS (track 4): what is track-specific, and nothing else.

The loop asks this module (contract: merjax/tasks/__init__.py) for: its fold, input statistics,
the model, the reference read-out, the loss, the predictions, the evaluation metrics and the
submission file (predictions for the validation subjects).

One fold, three groups of subjects: the model trains on the training subjects less the inner
ones (`data.inner_subjects`), its state is selected on the inner subjects, and the validation
subjects are only evaluated, so the reported val/ scores are those of subjects nothing was
chosen on. Beside the model: the per-(video, second) prior of the training subjects
(val/prior_mae) and a ridge read-out on top of it (val/ref_mae, `reference`).
"""
import os

import jax
import jax.numpy as jnp
import optax
import numpy as np
from absl import logging

from merjax import metrics, reference as ref, submission
from merjax.data import pipeline, transforms
from merjax.models import physio
from merjax.tasks import common
from tfds_builders.mer_ps.mer_ps_dataset_builder import subjects

DATASET = "mer_ps"
SPLITS = ("train", "validation")
ID_FIELD = "sample_id"
SELECT = ("mae", "min")  # on the inner subjects
MODEL_FIELDS = ("eeg", "fnirs", "fnirs_mask", "context_mask", "prior")
EVAL_FIELDS = ("label", "prior")  # kept from each eval batch for the metrics
SUBMISSION_FILE = submission.PS_FILE


def folds(config, data):
    """One fold: train on the training subjects less the inner ones, select on the inner ones,
    evaluate (and predict) the validation subjects."""
    train, validation = data.splits["train"], data.splits["validation"]
    inner = set(subjects(config.data.inner_subjects))
    known = set(data.builder_config.train_subjects)
    if not inner or not inner < known:
        raise ValueError(
            f"config.data.inner_subjects={tuple(config.data.inner_subjects)} must name at least "
            f"one and not all of the training subjects {tuple(config.data.train_subjects)}: the "
            f"model state (and the reference's penalty) is selected on them, never on the "
            f"validation subjects")
    of = np.array([pipeline.decode_id(train[i], ID_FIELD).rsplit("_V", 1)[0] in inner
                   for i in range(len(train))])
    logging.info("MER-PS: %d train examples, %d inner-subject examples (%s) for selection",
                 int((~of).sum()), int(of.sum()), ", ".join(sorted(inner)))
    return [common.Fold(None, None, pipeline.Subset(train, np.flatnonzero(~of)), validation,
                        validation, select=pipeline.Subset(train, np.flatnonzero(of)))]


def make_transform(config, data):
    del config, data
    return transform


def model_inputs(config, data):
    del config, data
    return MODEL_FIELDS


def export_metadata(config, data, scores):
    """What a predictor needs beside the network: the output names and scale, the builder's
    preprocessing (tfds_builders/mer_ps/signals.py runs it on hidden subjects) and the
    training subjects' per-(video, second) prior, an input of the network."""
    del config, scores
    c = data.builder_config
    return dict(
        output="valence, arousal on the raw [1, 255] scale; round half to even and clip to "
               "[1, 255] for predictions.csv",
        outputs=dict(names=["valence", "arousal"], scale=[1, 255]),
        sample_id="{subject}_V{video:02d}_T{second:03d}, 0-based second",
        preprocessing=dict(eeg_rate_hz=int(c.eeg_rate_hz), context_s=int(c.context_s),
                           fnirs_bins=int(c.fnirs_bins), fnirs_types=list(c.fnirs_types),
                           fnirs_mask=data.info.metadata.get("fnirs_mask_rule")),
        label_prior=data.info.metadata.get("label_prior"))


def transform(example):
    return transforms.select(example, MODEL_FIELDS + ("label",), dict(
        eeg=np.float32, fnirs=np.float32, fnirs_mask=bool, context_mask=bool,
        prior=np.float32, label=np.float32))


def input_stats(train, config):
    """Train-split statistics: per-channel EEG RMS, per (channel, band) mean/std of the EEG log
    band power (models/physio.py computes it), per (type, channel) fNIRS mean/std.

    Padding (seconds before the recording) and bad fNIRS channels are left out of the estimates.
    """
    take = common.stats_sample(train, config.data.stats_examples)
    examples = [train[int(i)] for i in take]
    eeg = np.stack([np.asarray(ex["eeg"], np.float32) for ex in examples])  # [N, C, T]
    ctx = np.stack([np.asarray(ex["context_mask"], bool) for ex in examples])  # [N, seconds]
    valid_t = np.repeat(ctx, eeg.shape[2] // ctx.shape[1], axis=1)[:, None, :]
    eeg_scale = np.sqrt((eeg.astype(np.float64) ** 2 * valid_t).sum((0, 2))
                        / max(valid_t.sum(), 1))
    eeg_scale = np.where(eeg_scale > 1e-8, eeg_scale, 1.0)

    patches = ctx.shape[1] * int(config.model.eeg_patches_per_s)
    bands = np.asarray(physio.band_log_power(eeg, eeg_scale.astype(np.float32), patches,
                                             eeg.shape[2] // ctx.shape[1]), np.float64)
    valid_p = np.repeat(ctx, patches // ctx.shape[1], axis=1)  # [N, patches]
    band_mean, band_std = _masked_moments(bands, valid_p[:, :, None, None], axes=(0, 1))

    fnirs = np.stack([np.asarray(ex["fnirs"], np.float64) for ex in examples])  # [N, S, K, C]
    mask = np.stack([np.asarray(ex["fnirs_mask"], bool) for ex in examples])
    valid_f = (np.repeat(ctx, fnirs.shape[1] // ctx.shape[1], axis=1)[:, :, None, None]
               & mask[:, None, None, :])
    fnirs_mean, fnirs_std = _masked_moments(fnirs, valid_f, axes=(0, 1))
    stats = dict(eeg_scale=eeg_scale, band_mean=band_mean, band_std=band_std,
                 fnirs_mean=fnirs_mean, fnirs_std=fnirs_std)
    logging.info("input stats from %d train examples: EEG RMS median %.4g, fNIRS std median %.4g",
                 len(take), np.median(eeg_scale), np.median(fnirs_std))
    return {k: v.astype(np.float32) for k, v in stats.items()}


def _masked_moments(x, valid, axes):
    """Mean and std of `x` over `axes` where `valid`; 0 and 1 where nothing was valid."""
    w = np.broadcast_to(valid, x.shape).astype(np.float64)
    return common.moments((x * w).sum(axis=axes), (x ** 2 * w).sum(axis=axes),
                          w.sum(axis=axes), floor=1e-8)


def build_model(config, data, stats, rngs):
    """`stats=None` gives placeholders of the right shapes (restores overwrite them)."""
    f = data.info.features
    eeg_channels, eeg_window = f["eeg"].shape
    fnirs_steps, fnirs_types, fnirs_channels = f["fnirs"].shape
    if stats is None:
        bands = (eeg_channels, len(physio.BANDS))
        stats = dict(eeg_scale=np.ones(eeg_channels, np.float32),
                     band_mean=np.zeros(bands, np.float32), band_std=np.ones(bands, np.float32),
                     fnirs_mean=np.zeros((fnirs_types, fnirs_channels), np.float32),
                     fnirs_std=np.ones((fnirs_types, fnirs_channels), np.float32))
    m = config.model
    if m.name != "physio":
        raise ValueError(f"MER-PS has the models 'physio' and 'ridge' (the reference read-out);"
                         f" config.model.name is {m.name!r}")
    return physio.PhysioEncoder(
        eeg_channels=eeg_channels, eeg_window=eeg_window, context_s=f["context_mask"].shape[0],
        fnirs_steps=fnirs_steps, fnirs_types=fnirs_types, fnirs_channels=fnirs_channels,
        width=m.width, depth=m.depth, heads=m.heads, mlp_dim=m.mlp_dim, dropout=m.dropout,
        eeg_patches_per_s=m.eeg_patches_per_s, stats=stats, use_prior=m.use_prior,
        dtype=m.dtype, remat=m.remat, scan_layers=m.scan_layers, rngs=rngs)


def reference(config, data):
    """Ridge on top of the prior: per context second each EEG channel's five log band powers
    and each fNIRS (type, channel)'s mean and slope over the second's bins, the context mask;
    the target is the label's residual on the prior (unit scale)."""
    del config
    context_s = data.info.features["context_mask"].shape[0]

    def features(batch):
        eeg = np.asarray(batch["eeg"], np.float32)
        ones = np.ones(eeg.shape[1], np.float32)  # per-channel scale: the read-out standardises
        bands = np.asarray(physio.band_log_power(eeg, ones, context_s, eeg.shape[2] // context_s))
        fnirs = np.asarray(batch["fnirs"], np.float64)  # [B, S, K, C], bad channels zeroed
        n, steps = fnirs.shape[:2]
        per_s = fnirs.reshape(n, context_s, steps // context_s, *fnirs.shape[2:])
        t = np.arange(per_s.shape[2]) - (per_s.shape[2] - 1) / 2
        slope = np.einsum("bstkc,t->bskc", per_s, t) / max((t ** 2).sum(), 1e-9)
        return np.concatenate([bands.reshape(n, -1), per_s.mean(2).reshape(n, -1),
                               slope.reshape(n, -1), batch["context_mask"].astype(np.float64)],
                              axis=1)

    return ref.Readout(
        name="ridge", kind="ridge", features=features, num_outputs=2,
        target=lambda rows: physio.to_unit(rows["label"]) - physio.to_unit(rows["prior"]),
        output=lambda scores, rows: physio.from_unit(physio.to_unit(rows["prior"]) + scores))


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


def eval_metrics(outputs, kept, data, prefix="val/"):
    """Model scores, with the prior's and (when fitted) the reference's MAE beside them."""
    del data
    out = metrics.ps_metrics(outputs, kept["label"], prefix=prefix)
    out[f"{prefix}prior_mae"] = metrics.ps_metrics(kept["prior"], kept["label"])["mae"]
    if "reference" in kept:
        out[f"{prefix}ref_mae"] = metrics.ps_metrics(kept["reference"], kept["label"])["mae"]
    return out


def summarize(results):
    """The validation subjects' scores (with the prior's and the reference's beside them),
    then the model's and the reference's on the inner subjects that selected the state."""
    scores = results[0].scores
    return {k: v for k, v in scores.items()
            if k.startswith("val/") or k in ("inner/mae", "inner/ref_mae")}


def data_report(data):
    meta = data.info.metadata
    return {"data/train_examples": len(data.splits["train"]),
            "data/validation_examples": len(data.splits["validation"]),
            "data/bad_fnirs_channels": sum(len(v) for v in meta["bad_fnirs_channels"].values())}


def write_outputs(workdir, results, config, data):
    del config, data
    if jax.process_index() == 0:
        (result,) = results
        path = submission.write_ps_predictions(os.path.join(workdir, SUBMISSION_FILE),
                                               result.ids, result.outputs)
        logging.info("wrote %d predictions to %s", len(result.ids), path)
