"""Fusion transformer: shapes for feature and raw inputs, masking, modality dropout, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange
from flax import nnx

from configs import common
from merjax import sharding
from merjax.models import fusion, layers, text

FEATURES = {"audio": ("dense", 12, 1), "text": ("dense", 16, 1), "video": ("dense", 8, 3)}
RAW = {"audio": ("mel", 10, 16), "faces": ("faces", 16, 4), "text": ("bytes", 0, 24)}


def _model(modalities, fusion_kind="joint", **kw):
    with nnx.use_eager_sharding(False):
        return fusion.FusionTransformer(
            modalities=modalities, width=32, depth=2, heads=2, mlp_dim=64, dropout=0.0,
            num_classes=6, fusion=fusion_kind, bottlenecks=2, rngs=nnx.Rngs(params=0), **kw)


def _batch(modalities, n=3, seed=0):
    rng = np.random.default_rng(seed)
    batch = {}
    for m, (kind, dim, length) in modalities.items():
        if kind == "faces":
            batch[m] = rng.integers(0, 256, (n, length, dim, dim, 3), dtype=np.uint8)
        elif kind == "bytes":
            batch[m], _ = zip(*[text.encode("情绪 happy", length) for _ in range(n)])
            batch[m] = np.stack(batch[m])
        else:
            batch[m] = rng.normal(size=(n, length, dim)).astype(np.float32)
        batch[f"{m}_mask"] = np.ones((n, length), bool)
    if "text" in modalities and modalities["text"][0] == "bytes":
        batch["text_mask"] = batch["text"] != text.PAD
    return batch


@pytest.mark.parametrize("fusion_kind", ["joint", "bottleneck"])
@pytest.mark.parametrize("modalities", [FEATURES, RAW], ids=["features", "raw"])
def test_logits_shape_and_padding_is_ignored(modalities, fusion_kind):
    model = _model(modalities, fusion_kind)
    batch = _batch(modalities)
    logits = np.asarray(model(batch))
    assert logits.shape == (3, 6) and np.all(np.isfinite(logits))
    # Pad the video/faces stream with junk the mask hides: the logits must not move.
    name = "video" if "video" in modalities else "faces"
    padded = dict(batch)
    padded[name] = np.concatenate([batch[name], batch[name][:, :2] * 0 + 7], axis=1)
    padded[f"{name}_mask"] = np.concatenate(
        [batch[f"{name}_mask"], np.zeros((3, 2), bool)], axis=1)
    kind, dim, length = modalities[name]
    wider = _model({**modalities, name: (kind, dim, length + 2)}, fusion_kind)
    nnx.update(wider, _copy_positions(model, wider, name, length))
    np.testing.assert_allclose(np.asarray(wider(padded)), logits, atol=1e-5)


def _copy_positions(src, dst, name, length):
    """dst's weights = src's, with src's position table in the first rows of dst's."""
    state = nnx.state(src)
    table = dst.positions[name].table[...]
    state["positions"][name]["table"] = nnx.Param(
        table.at[:length].set(src.positions[name].table[...]))
    return state


def test_face_stem_projects_each_patch_with_its_kernel_rows():
    """The stem contracts patches in place; the same as gathering each patch's (p, q, c) pixels
    into a row for its kernel (the layout checkpoints hold)."""
    with nnx.use_eager_sharding(False):
        stem = fusion.FaceStem(16, 32, patch=8, rngs=nnx.Rngs(0))
    faces = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    rows = rearrange(faces.astype(np.float32) / 255.0 - 0.5,
                     "b k (h p) (w q) c -> b k (h w) (p q c)", p=8, q=8)
    expected = stem.norm(stem.out(jax.nn.gelu(stem.patches(jnp.asarray(rows))).mean(axis=2)))
    tokens, _ = stem(faces, np.ones((2, 3), bool))
    np.testing.assert_allclose(tokens, expected, rtol=1e-5, atol=1e-5)


def test_wide_path_mean_standardises_the_mean():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3, 2, (4, 7, 5)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(4, 7)) < 0.5).at[0].set(False)  # example 0: no step
    standardize = layers.Standardize(5, (rng.normal(size=5), rng.uniform(1, 2, 5)))
    pooled = fusion.standardized_mean(standardize, x, mask)
    np.testing.assert_allclose(pooled, fusion.masked_mean(standardize(x), mask), atol=1e-6)
    assert not np.asarray(pooled[0]).any()


def test_every_modality_reaches_the_logits():
    for fusion_kind in ("joint", "bottleneck"):
        model = _model(FEATURES, fusion_kind)
        batch = _batch(FEATURES)
        base = np.asarray(model(batch))
        for m in FEATURES:
            changed = dict(batch, **{m: batch[m] + 1.0})
            assert not np.allclose(np.asarray(model(changed)), base), (fusion_kind, m)


def test_modality_dropout_never_drops_everything():
    model = _model(FEATURES, modality_dropout=0.99)
    batch = _batch(FEATURES, n=64)
    tokens = model._modality_tokens(batch, True, nnx.Rngs(dropout=0))
    kept = np.stack([np.asarray(mask).any(axis=1) for _, mask in tokens], axis=1)
    assert kept.any(axis=1).all()
    assert (~kept).sum() > 64  # and it does drop most of them at p=0.99
    eval_tokens = model._modality_tokens(batch, False, None)
    assert all(np.asarray(mask).all() for _, mask in eval_tokens)


def test_fusion_weights_shard_by_logical_names():
    config = common.base_config()
    config.mesh.update(dict(data=2, fsdp=2, model=2))
    mesh = sharding.make_mesh(config.mesh)
    with sharding.context(mesh, config):
        abstract = nnx.eval_shape(lambda: fusion.FusionTransformer(
            modalities=FEATURES, width=32, depth=1, heads=2, mlp_dim=64, dropout=0.0,
            num_classes=6, fusion="bottleneck", rngs=nnx.Rngs(params=0)))
        specs = nnx.get_partition_spec(nnx.state(abstract))
    P = jax.sharding.PartitionSpec
    assert specs["streams"][0][0]["mlp"]["up"]["kernel"].get_value() == P("fsdp", "model")
    assert specs["streams"][0][0]["attn"]["q"].get_value() == P("fsdp", "model", None)
    assert specs["stems"]["audio"]["proj"]["kernel"].get_value() == P(None, "fsdp")
