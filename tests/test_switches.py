"""Model sizes and the precision / memory switches: `:size=`, model.dtype, model.remat,
model.scan_layers, optim.accum_steps and optim.name="adam".

Each switch is checked against the same computation without it, on the same parameters and batch:
remat and scan_layers to float rounding, bfloat16 loosely (and its parameters and optimizer state
stay float32), accumulation through the loop's own train step (train.ModelState). The sizes are
counted on abstract models (nnx.eval_shape): XL is never materialised here.
"""
import csv

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common
from configs import cross as cross_config
from configs import ps as ps_config
from merjax import optim, sharding, train
from merjax.data import prepare
from merjax.models import fusion, physio
from merjax.tasks import cross as cross_task
from merjax.tasks import ps as ps_task

FEATURES = {"audio": ("dense", 12, 1), "text": ("dense", 16, 1), "video": ("dense", 8, 3)}
DEPTH = 2
F32 = np.dtype(np.float32)


# ---- tiny models, inputs and losses

def _physio(**switches):
    stats = dict(eeg_scale=np.full(8, 2.0, np.float32),
                 band_mean=np.zeros((8, 5), np.float32), band_std=np.ones((8, 5), np.float32),
                 fnirs_mean=np.zeros((3, 6), np.float32), fnirs_std=np.ones((3, 6), np.float32))
    with nnx.use_eager_sharding(False):
        model = physio.PhysioEncoder(
            eeg_channels=8, eeg_window=256, context_s=2, fnirs_steps=8, fnirs_types=3,
            fnirs_channels=6, width=32, depth=DEPTH, heads=2, mlp_dim=64, dropout=0.0,
            eeg_patches_per_s=2, stats=stats, rngs=nnx.Rngs(params=0), **switches)
    # A non-zero head (it starts at zero), so every block's gradient is non-zero.
    model.head.kernel[...] = jnp.asarray(
        np.random.default_rng(1).normal(size=model.head.kernel[...].shape), jnp.float32)
    return model


def _physio_batch(n=6):
    rng = np.random.default_rng(0)
    ctx = np.ones((n, 2), bool)
    ctx[:2, 0] = False
    return dict(eeg=rng.normal(size=(n, 8, 256)).astype(np.float32),
                fnirs=rng.normal(size=(n, 8, 3, 6)).astype(np.float32),
                fnirs_mask=np.ones((n, 6), bool), context_mask=ctx,
                prior=rng.uniform(60, 200, (n, 2)).astype(np.float32),
                label=rng.uniform(1, 255, (n, 2)).astype(np.float32))


def _physio_loss(model, batch):
    return jnp.mean(jnp.abs(model(batch, train=True, rngs=nnx.Rngs(dropout=0))
                            - physio.to_unit(batch["label"])))


def _fusion(fusion_kind="joint", **switches):
    with nnx.use_eager_sharding(False):
        return fusion.FusionTransformer(
            modalities=FEATURES, width=32, depth=DEPTH, heads=2, mlp_dim=64, dropout=0.0,
            num_classes=6, fusion=fusion_kind, bottlenecks=2, rngs=nnx.Rngs(params=0),
            **switches)


def _fusion_batch(n=6):
    rng = np.random.default_rng(0)
    batch = {}
    for m, (_, dim, length) in FEATURES.items():
        batch[m] = rng.normal(size=(n, length, dim)).astype(np.float32)
        batch[f"{m}_mask"] = np.ones((n, length), bool)
    batch["video_mask"][:2, 2] = False
    batch["label"] = rng.integers(0, 6, n)
    return batch


def _fusion_loss(model, batch):
    logits = model(batch, train=True, rngs=nnx.Rngs(dropout=0))
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


KINDS = {"physio": (_physio, _physio_batch, _physio_loss),
         "fusion": (_fusion, _fusion_batch, _fusion_loss)}


def _loss_and_grads(model, loss, batch):
    value, grads = jax.jit(nnx.value_and_grad(lambda m: loss(m, batch)))(model)
    return float(value), nnx.to_pure_dict(grads)


def _stacked(tree, depth):
    """A pure dict with the encoder's `blocks/0..depth-1` stacked on a leading axis, the
    layout model.scan_layers keeps them in."""
    tree = dict(tree, encoder=dict(tree["encoder"]))
    blocks = tree["encoder"]["blocks"]
    tree["encoder"]["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                             *[blocks[i] for i in range(depth)])
    return tree


def _assert_trees_close(got, want, **tol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


# ---- remat, scan_layers, bfloat16 on the models

# The physio encoder and the joint fusion share layers.Encoder; the bottleneck fusion calls its
# blocks itself: between them every path through layers.apply_block is covered.
@pytest.mark.parametrize("kind", ["physio", "fusion"])
def test_remat_gives_the_same_loss_and_gradients(kind):
    build, make_batch, loss = KINDS[kind]
    if kind == "fusion":
        build = lambda **kw: _fusion("bottleneck", **kw)  # noqa: E731
    batch = make_batch()
    plain, remat = build(), build(remat=True)  # same seed: same parameters
    want, want_grads = _loss_and_grads(plain, loss, batch)
    got, got_grads = _loss_and_grads(remat, loss, batch)
    assert got == pytest.approx(want, rel=1e-6)
    _assert_trees_close(got_grads, want_grads, rtol=1e-5, atol=1e-7)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(want_grads))


@pytest.mark.parametrize("kind,remat", [("physio", False), ("fusion", True)])
def test_scanned_layers_give_the_same_loss_and_gradients(kind, remat):
    build, make_batch, loss = KINDS[kind]
    batch = make_batch()
    plain, scanned = build(), build(scan_layers=True, remat=remat)
    # The stacked layout holds the same numbers: the plain model's, copied in.
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, _stacked(nnx.to_pure_dict(nnx.state(plain)), depth=DEPTH))
    nnx.update(scanned, state)
    assert scanned.encoder.blocks.attn.q[...].shape == (DEPTH, 32, 2, 16)
    want, want_grads = _loss_and_grads(plain, loss, batch)
    got, got_grads = _loss_and_grads(scanned, loss, batch)
    assert got == pytest.approx(want, rel=1e-5)
    _assert_trees_close(got_grads, _stacked(want_grads, depth=DEPTH), rtol=1e-4, atol=1e-6)


def test_scanned_blocks_carry_the_layers_axis_name_and_bottleneck_refuses_scan():
    specs = nnx.get_partition_spec(nnx.state(_fusion(scan_layers=True), nnx.Param))
    assert tuple(specs["encoder"]["blocks"]["mlp"]["up"]["kernel"].get_value()) == (
        "layers", "embed", "mlp")
    assert ("layers", None) in common.base_config().sharding.rules
    with pytest.raises(ValueError, match="scan_layers needs fusion='joint'"):
        _fusion("bottleneck", scan_layers=True)


@pytest.mark.parametrize("kind", ["physio", "fusion"])
def test_bfloat16_computes_close_to_float32_with_float32_parameters(kind):
    build, make_batch, loss = KINDS[kind]
    batch = make_batch()
    plain, half = build(), build(dtype="bfloat16")
    assert {np.dtype(x.dtype) for x in jax.tree.leaves(nnx.state(half, nnx.Param))} == {F32}
    want, want_grads = _loss_and_grads(plain, loss, batch)
    got, got_grads = _loss_and_grads(half, loss, batch)
    assert got != want  # it really computed in bfloat16
    assert got == pytest.approx(want, rel=3e-2)
    assert {np.asarray(g).dtype for g in jax.tree.leaves(got_grads)} == {F32}
    outputs = half(batch)
    assert outputs.dtype == jnp.float32
    # The transformer's activations are bfloat16 (read off the traced program).
    assert "bf16" in str(jax.make_jaxpr(lambda b: half(b))(batch))


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match=r"config.model.dtype must be one of .*'float16'"):
        _fusion(dtype="float16")


# ---- the loop's train step: accumulation and bfloat16 state

def _ps_state(**model_and_optim):
    config = ps_config.get_config("runlocal")
    config.model.dropout = 0.0
    config.optim.warmup_steps = 0  # a first step that moves the weights
    for key, value in model_and_optim.items():
        section, name = key.split(".")
        config[section][name] = value
    mesh = sharding.make_mesh(config.mesh)
    data = prepare.describe(config, ps_task)
    f = data.info.features
    rng = np.random.default_rng(0)
    n = config.batch_size
    local = dict(eeg=rng.normal(size=(n,) + f["eeg"].shape).astype(np.float32),
                 fnirs=rng.normal(size=(n,) + f["fnirs"].shape).astype(np.float32),
                 fnirs_mask=np.ones((n,) + f["fnirs_mask"].shape, bool),
                 context_mask=np.ones((n,) + f["context_mask"].shape, bool),
                 prior=rng.uniform(60, 200, (n, 2)).astype(np.float32),
                 label=rng.uniform(1, 255, (n, 2)).astype(np.float32))
    stats = ps_task.input_stats(_Examples(local), config)
    model_state = train.ModelState(config, mesh, ps_task, data, stats)
    return config, mesh, model_state, sharding.to_global(local, mesh, config)


class _Examples:
    """A batch as a random-access source of examples (what input_stats reads)."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch["eeg"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def _steps(model_state, batch, steps=2):
    state = model_state.init()
    step = model_state.compiled_train_step(state, batch)
    losses = []
    for _ in range(steps):
        state, scalars = step(state, batch)
        losses.append(float(scalars["loss"]))
    return losses, nnx.to_pure_dict(state[0]), state


@pytest.fixture(scope="module")
def float32_steps():
    """(losses, parameters) of two steps with every switch off."""
    return _steps(*_ps_state()[2:])[:2]


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_step_equals_one_big_step(accum, float32_steps):
    """Two steps (the first moves only the zero-initialised head, the second everything):
    the same losses and the same parameters, with k micro-batches as with one batch."""
    want_losses, want = float32_steps
    _, _, model_state, batch = _ps_state(**{"optim.accum_steps": accum})
    got_losses, got, _ = _steps(model_state, batch)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    assert want_losses[0] != want_losses[1]
    # atol 2e-5 is 1% of one Adam step (lr 2e-3): a weight whose gradient is near Adam's eps
    # (one here, 0.4 eps) moves by g / (|g| + eps), which float rounding of g shifts by more
    # than 1e-6 (a correct variant of the attention did so by 1.5e-6).
    _assert_trees_close(got, want, rtol=1e-4, atol=2e-5)


def test_accumulation_must_divide_the_batch_over_the_shards():
    config = ps_config.get_config("runlocal")
    config.optim.accum_steps = 4
    mesh = sharding.make_mesh(config.mesh)
    assert config.batch_size == 16 and sharding.batch_shards(mesh, config) == 8
    with pytest.raises(ValueError, match=r"batch_size=16 must divide by config.optim."
                                         r"accum_steps=4 x the 8 batch shards"):
        train.check_batch_sizes(config, mesh)
    config.optim.accum_steps = 0
    with pytest.raises(ValueError, match="accum_steps must be an integer >= 1; found 0"):
        train.check_batch_sizes(config, mesh)
    config.optim.accum_steps = 2
    train.check_batch_sizes(config, mesh)


def test_bfloat16_train_step_keeps_float32_parameters_and_optimizer_state(float32_steps):
    want_losses, _ = float32_steps
    got_losses, _, state = _steps(*_ps_state(**{"model.dtype": "bfloat16"})[2:])
    floats = {np.dtype(x.dtype) for x in jax.tree.leaves(state)
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert floats == {F32}
    assert len(jax.tree.leaves(state[1].opt_state)) > 0
    np.testing.assert_allclose(got_losses, want_losses, rtol=3e-2)


# ---- optimizers

def test_adam_adds_weight_decay_to_the_gradient_and_adamw_decays_apart():
    """One step from p with gradient g: PyTorch's Adam steps along (g + wd p), normalised per
    parameter (a sign on step 1); AdamW steps along sign(g) and subtracts lr wd p apart."""
    p, g = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 0.01, -0.02])
    wd, lr = 0.1, 0.01
    base = dict(lr=lr, weight_decay=wd, b1=0.9, b2=0.999, warmup_steps=0, schedule="constant",
                end_lr_fraction=1.0, grad_clip_norm=0.0)
    moved = {}
    for name in optim.NAMES:
        tx, _ = optim.make(ml_collections.ConfigDict(dict(base, name=name)), total_steps=10)
        updates, _ = tx.update(g, tx.init(p), p)
        moved[name] = np.asarray(p + updates)
    coupled = g + wd * p  # [0.6, -0.19, 0.28]: the decay flips the second and third signs
    np.testing.assert_allclose(moved["adam"], p - lr * coupled / (jnp.abs(coupled) + 1e-8),
                               rtol=1e-6)
    np.testing.assert_allclose(moved["adamw"], p - lr * (g / (jnp.abs(g) + 1e-8) + wd * p),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"optim.name must be one of \('adamw', 'adam'\)"):
        optim.make(ml_collections.ConfigDict(dict(base, name="sgd")), total_steps=10)


# ---- sizes

def _param_count(config, task):
    data = prepare.describe(config, task)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: task.build_model(config, data, None, nnx.Rngs(params=0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_sizes_grow_and_xl_passes_100m_parameters():
    counts = {"ps": [], "cross": []}
    for size in ("S", "M", "L", "XL"):
        ps = ps_config.get_config(f"size={size}")
        assert ps.model.size == size
        counts["ps"].append(_param_count(ps, ps_task))
        cross = cross_config.get_config(f"size={size}")
        cross.data.feature_dims = (1024, 1024, 768)  # the MERTools baseline's features
        counts["cross"].append(_param_count(cross, cross_task))
    for track, n in counts.items():
        assert n == sorted(n) and len(set(n)) == 4, (track, n)
        assert n[-1] >= 100_000_000, (track, n)
    # S is the config's own model.
    assert ps_config.get_config("size=S").model.to_dict() == ps_config.get_config().model.to_dict()


def test_size_applies_after_runlocal_and_unknown_sizes_are_errors():
    local, local_m = ps_config.get_config("runlocal"), ps_config.get_config("runlocal,size=M")
    assert local_m.model.width == common.SIZES["M"]["width"] > local.model.width
    assert local_m.total_steps == local.total_steps and local_m.data == local.data
    with pytest.raises(ValueError, match=r"Unknown model size 'XXL'.*known: S, M, L, XL"):
        ps_config.get_config("size=XXL")


def test_runlocal_with_every_switch_trains_and_predicts(tmp_path):
    """configs/ps.py:runlocal,size=M with bfloat16, remat, scanned layers and 2 micro-batches:
    the whole loop (train, select, predict) runs and writes the submission."""
    config = ps_config.get_config("runlocal,size=M")
    config.data.tfds_dir = str(tmp_path / "tfds")
    config.model.update(dtype="bfloat16", remat=True, scan_layers=True)
    config.optim.accum_steps = 2
    config.update(total_steps=4, log_every=2, eval_every=4, checkpoint_every=4)
    workdir = tmp_path / "run"
    scores = train.run(config, str(workdir))
    assert np.isfinite(scores["val/mae"])
    with open(workdir / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sample_id", "valence", "arousal"]
    values = np.array([[int(r[1]), int(r[2])] for r in rows[1:]])
    assert len(values) > 0 and values.min() >= 1 and values.max() <= 255
