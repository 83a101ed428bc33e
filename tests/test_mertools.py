"""MERTools' `attention` baseline (merjax/models/mertools.py, configs/cross.py:mertools): its size,
its forward pass against an independent numpy reading of MER2026.md §2.6, dropout, missing
inputs, the tracks that build it, and a cross-validated run through export and merjax.predict."""
import csv
import json
import types

import jax
import numpy as np
import pytest
from flax import nnx

from configs import cross as cross_config
from configs import fg as fg_config
from merjax import predict, train
from merjax.data import prepare
from merjax.models import mertools
from merjax.tasks import cross, fg

_BASELINE = {"audio": ("dense", 1024, 1), "text": ("dense", 1024, 1), "video": ("dense", 768, 1)}
_SMALL = {"audio": ("dense", 12, 1), "text": ("dense", 16, 1), "video": ("dense", 8, 3)}


def _model(modalities=_SMALL, hidden=8, dropout=0.3, outputs=6, **kw):
    with nnx.use_eager_sharding(False):
        return mertools.AttentionFusion(modalities=modalities, hidden=hidden, dropout=dropout,
                                        num_outputs=outputs, rngs=nnx.Rngs(params=0), **kw)


def _batch(rng, n=5, modalities=_SMALL):
    batch = {}
    for m, (_, dim, length) in modalities.items():
        batch[m] = rng.normal(size=(n, length, dim)).astype(np.float32) * 3 + 1
        batch[f"{m}_mask"] = np.ones((n, length), bool)
    batch["video_mask"][:, 2:] = False  # padding after two real frames
    return batch


def _numpy_forward(model, batch):
    """MER2026.md §2.6 in numpy: per-modality MLPEncoder on the utterance vector (the mean of
    the real steps), an MLPEncoder + Linear(h, M) over the concatenation giving raw weights,
    the weighted sum of the encodings, Linear(h, outputs)."""
    def linear(layer, x):
        return x @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...])

    def encoder(enc, x):
        for layer in enc.layers:
            x = np.maximum(linear(layer, x), 0.0)
        return x

    hidden = []
    for m in model.names:
        mask = batch[f"{m}_mask"].astype(np.float64)[..., None]
        x = (batch[m] * mask).sum(1) / np.maximum(mask.sum(1), 1)
        hidden.append(encoder(model.encoders[m], x))
    weights = linear(model.attention, encoder(model.attention_mlp, np.concatenate(hidden, 1)))
    fused = sum(weights[:, i:i + 1] * h for i, h in enumerate(hidden))
    return linear(model.head, fused)


def test_baseline_size_and_named_weights():
    """Hidden 128 at the best trio's dims (1024/1024/768), 6 outputs: MERTools' 543,369."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: mertools.AttentionFusion(
            modalities=_BASELINE, hidden=128, dropout=0.3, num_outputs=6,
            rngs=nnx.Rngs(params=0)))
    params = nnx.state(model, nnx.Param)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == 543_369
    specs = jax.tree.leaves(nnx.get_partition_spec(params))
    assert len(specs) == 28 and all(len(s) in (1, 2) for s in specs)
    assert all(len(set(s)) == len(s) for s in specs)  # no kernel names a mesh axis twice


def test_weights_start_as_pytorch_linear_layers_do():
    model = _model({"audio": ("dense", 1024, 1)}, hidden=128)
    first = model.encoders["audio"].layers[0]
    bound = 1 / np.sqrt(1024)
    for w in (np.asarray(first.kernel[...]), np.asarray(first.bias[...])):
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    # uniform on [-b, b]: std b / sqrt(3)
    assert np.asarray(first.kernel[...]).std() == pytest.approx(bound / np.sqrt(3), rel=0.02)
    assert first.kernel[...].dtype == np.float32


def test_forward_matches_an_independent_numpy_implementation():
    model = _model()
    batch = _batch(np.random.default_rng(0))
    logits = np.asarray(model(batch, train=False))
    assert logits.shape == (5, 6) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _numpy_forward(model, batch), rtol=1e-4, atol=1e-5)


def test_dropout_acts_only_in_training():
    model = _model(dropout=0.5)
    batch = _batch(np.random.default_rng(1))
    evaluated = np.asarray(model(batch, train=False))
    np.testing.assert_array_equal(evaluated, np.asarray(model(batch, train=False)))
    a = np.asarray(model(batch, train=True, rngs=nnx.Rngs(dropout=0)))
    b = np.asarray(model(batch, train=True, rngs=nnx.Rngs(dropout=1)))
    again = np.asarray(model(batch, train=True, rngs=nnx.Rngs(dropout=0)))
    assert not np.allclose(a, evaluated) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, again)
    still = _model(dropout=0.0)
    np.testing.assert_allclose(np.asarray(still(batch, train=True, rngs=nnx.Rngs(dropout=0))),
                               np.asarray(still(batch, train=False)), rtol=1e-6)


def test_a_missing_input_enters_as_zeros():
    model = _model()
    batch = _batch(np.random.default_rng(2))
    batch["text_mask"][:3] = False  # examples 0-2 lack their text; its values must not count
    zeroed = {k: v.copy() for k, v in batch.items()}
    zeroed["text"][:3] = 0.0
    zeroed["text_mask"][:3] = True
    got = np.asarray(model(batch, train=False))
    np.testing.assert_allclose(got, np.asarray(model(zeroed, train=False)), rtol=1e-6)
    np.testing.assert_allclose(got, _numpy_forward(model, batch), rtol=1e-4, atol=1e-5)
    other = dict(batch, text=batch["text"] + 5.0)
    moved = np.asarray(model(other, train=False))
    np.testing.assert_allclose(moved[:3], got[:3], rtol=1e-6)
    assert not np.allclose(moved[3:], got[3:])


def test_bfloat16_computation_keeps_float32_parameters():
    batch = _batch(np.random.default_rng(3))
    full = np.asarray(_model()(batch, train=False))
    half = _model(dtype="bfloat16")
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(nnx.state(half, nnx.Param)))
    out = half(batch, train=False)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out), full, rtol=0.05, atol=0.05)


def _fake_data(vocabulary=None):
    shapes = {"audio": (1, 12), "text": (1, 16), "video": (1, 8)}
    features = {k: types.SimpleNamespace(shape=v) for k, v in shapes.items()}
    return types.SimpleNamespace(info=types.SimpleNamespace(features=features),
                                 builder_config=types.SimpleNamespace(vocabulary=vocabulary))


def test_tracks_build_it_by_name_and_refuse_what_it_cannot_read():
    config = cross_config.get_config("mertools")
    assert config.model.name == "mertools_attention" and config.optim.name == "adam"
    assert (config.optim.lr, config.optim.weight_decay, config.batch_size) == (1e-3, 1e-5, 32)
    assert (config.optim.warmup_steps, config.optim.grad_clip_norm) == (0, 0)
    assert config.optim.schedule == "constant" and config.label_smoothing == 0
    real = cross_config.get_config("real,mertools")
    assert real.total_steps == 100 * real.eval_every  # 100 epochs, evaluated every epoch
    with nnx.use_eager_sharding(False):
        model = cross.build_model(config, _fake_data(), None, nnx.Rngs(params=0))
    assert isinstance(model, mertools.AttentionFusion)

    # MER-FG: the same model with one logit per vocabulary word, trained by its own loss
    words = ("happy", "sad", "angry", "calm", "tired")
    fg_cfg = fg_config.get_config()
    cross_config.mertools(fg_cfg)
    fg_cfg.model.hidden = 8
    with nnx.use_eager_sharding(False):
        model = fg.build_model(fg_cfg, _fake_data(words), None, nnx.Rngs(params=0))
    batch = _batch(np.random.default_rng(4))
    assert model(batch).shape == (5, len(words))
    batch["labels"] = (np.random.default_rng(5).random((5, len(words))) > 0.5).astype(np.float32)
    value, _ = fg.loss(model, batch, fg_cfg, nnx.Rngs(dropout=0))
    assert np.isfinite(float(value))

    for key, value, message in (("input_kind", "raw", "input_kind is 'raw'"),
                                ("feature_level", "frame", "feature_level is 'frame'")):
        bad = cross_config.get_config("mertools")
        bad.data[key] = value
        with pytest.raises(ValueError, match=message):
            cross.build_model(bad, _fake_data(), None, nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="inputs {'faces': 'faces'}"):
        _model({"audio": ("dense", 10, 1), "faces": ("faces", 16, 4)})
    config.model.name = "mertool"
    with pytest.raises(ValueError, match="'fusion', 'mertools_attention'.*'logistic'"):
        cross.build_model(config, _fake_data(), None, nnx.Rngs(params=0))


def test_cross_validated_run_export_and_predict_agree(tmp_path):
    config = cross_config.get_config("runlocal,mertools")
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.mesh.devices = 1
    config.reference.l2 = (1.0,)
    workdir = tmp_path / "run"
    summary = train.run(config, str(workdir))
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {line["fold"] for line in lines if "val/waf" in line} == {0, 1}
    # Guessing among 6 classes scores a WAF of 1/6 on balanced labels; the model does far better.
    assert summary["cv/waf"] > 2 / 6, summary

    data = prepare.prepare(config, cross, announce=False)
    release = data.info.metadata["manual_dir"]
    with open(f"{release}/track1_track2_candidate.csv") as f:
        candidates = [r["name"] for r in csv.DictReader(f)]
    answer = (workdir / "answer.csv").read_text()
    assert [r.split(",")[0] for r in answer.splitlines()[1:]] == candidates

    train.run(config, str(workdir), mode="export")
    path = predict.predict(str(workdir), release, str(tmp_path / "out"), batch_size=5)
    assert open(path).read() == answer
