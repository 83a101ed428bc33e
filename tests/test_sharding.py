"""Mesh resolution and sharded-vs-single-device equality of the loop's real train step."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import ps as ps_config
from merjax import sharding, train
from merjax.data import prepare
from merjax.models import physio
from merjax.tasks import ps as ps_task


def _mesh_config(**kw):
    return ml_collections.ConfigDict(dict(dict(data=-1, fsdp=1, model=1, devices=-1), **kw))


def test_mesh_shape_fills_minus_one_and_rejects_bad_sizes():
    assert sharding.mesh_shape(_mesh_config(), 8) == (8, 1, 1)
    assert sharding.mesh_shape(_mesh_config(fsdp=2, model=2), 8) == (2, 2, 2)
    assert sharding.mesh_shape(_mesh_config(data=2, fsdp=-1, model=2), 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="covers 4 devices; found 8"):
        sharding.mesh_shape(_mesh_config(data=2, fsdp=2, model=1), 8)
    with pytest.raises(ValueError, match="At most one mesh axis"):
        sharding.mesh_shape(_mesh_config(data=-1, fsdp=-1), 8)
    with pytest.raises(ValueError, match="multiple of 3"):
        sharding.mesh_shape(_mesh_config(model=3), 8)


def _stats():
    return dict(eeg_scale=np.full(64, 2.0, np.float32),
                band_mean=np.zeros((64, 5), np.float32), band_std=np.ones((64, 5), np.float32),
                fnirs_mean=np.zeros((3, 51), np.float32), fnirs_std=np.ones((3, 51), np.float32))


def _batch(n=16):
    rng = np.random.default_rng(0)
    mask = np.ones((n, 51), bool)
    mask[:, 40:43] = False
    ctx = np.ones((n, 2), bool)
    ctx[:4, 0] = False
    return dict(eeg=rng.normal(size=(n, 64, 256)).astype(np.float32),
                fnirs=rng.normal(size=(n, 8, 3, 51)).astype(np.float32),
                fnirs_mask=mask, context_mask=ctx,
                prior=rng.uniform(60, 200, (n, 2)).astype(np.float32),
                label=rng.uniform(1, 255, (n, 2)).astype(np.float32))


def _losses(mesh_kw, steps=3):
    """Runs `steps` of the loop's own jitted train step (train.ModelState, with the PS task's
    loss and optimizer) on one fixed batch under the given mesh; returns losses and a kernel."""
    config = ps_config.get_config("runlocal")
    config.mesh.update(mesh_kw)
    config.model.depth = 2
    mesh = sharding.make_mesh(config.mesh)
    data = prepare.describe(config, ps_task)  # the dataset's shapes, nothing read or built
    model_state = train.ModelState(config, mesh, ps_task, data, _stats())
    state = model_state.init()
    batch = sharding.to_global(_batch(), mesh, config)
    step = model_state.compiled_train_step(state, batch)
    losses = []
    for _ in range(steps):
        state, scalars = step(state, batch)
        losses.append(float(scalars["loss"]))
    kernel = state[0]["eeg_proj"]["kernel"][...]
    return losses, kernel


def test_sharded_mesh_matches_one_device():
    assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
    sharded, kernel = _losses(dict(data=2, fsdp=2, model=2))
    # The embed dim of the projection kernel really is split over fsdp.
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert len({str(s.index) for s in kernel.addressable_shards}) == 2
    single, _ = _losses(dict(data=1, fsdp=1, model=1, devices=1))
    assert sharded[0] != sharded[-1]  # it trains
    np.testing.assert_allclose(sharded, single, atol=1e-4)


def test_model_masks_padding_and_bad_channels():
    """Padded context seconds and bad fNIRS channels cannot change the output."""
    with nnx.use_eager_sharding(False):
        model = physio.PhysioEncoder(
            eeg_channels=64, eeg_window=256, context_s=2, fnirs_steps=8, fnirs_types=3,
            fnirs_channels=51, width=32, depth=1, heads=2, mlp_dim=64, dropout=0.0,
            eeg_patches_per_s=2, stats=_stats(), rngs=nnx.Rngs(params=0))
        # A random (non-zero, non-constant) head, so the output depends on the tokens at all.
        model.head.kernel[...] = jnp.asarray(
            np.random.default_rng(1).normal(size=model.head.kernel[...].shape), jnp.float32)
        batch = _batch(4)
        base = np.asarray(model(batch))
        changed = dict(batch)
        changed["fnirs"] = batch["fnirs"].copy()
        changed["fnirs"][:, :, :, 40:43] += 100.0   # bad channels
        changed["eeg"] = batch["eeg"].copy()
        changed["eeg"][:4, :, :128] += 50.0         # first second is padding for rows 0-3
        changed["fnirs"][:4, :4] += 100.0
        np.testing.assert_allclose(np.asarray(model(changed)), base, atol=1e-5)
        changed["fnirs"][:, :, :, 0] += 1.0          # a good channel does change it
        assert not np.allclose(np.asarray(model(changed)), base, atol=1e-5)
        assert base.shape == (4, 2)


def test_untrained_model_predicts_the_prior_and_can_ignore_it():
    def build(use_prior):
        with nnx.use_eager_sharding(False):
            return physio.PhysioEncoder(
                eeg_channels=64, eeg_window=256, context_s=2, fnirs_steps=8, fnirs_types=3,
                fnirs_channels=51, width=32, depth=1, heads=2, mlp_dim=64, dropout=0.0,
                eeg_patches_per_s=2, stats=_stats(), use_prior=use_prior,
                rngs=nnx.Rngs(params=0))
    batch = _batch(4)
    # The head starts at zero: an untrained model's output is exactly the prior.
    np.testing.assert_allclose(np.asarray(physio.from_unit(build(True)(batch))), batch["prior"],
                               rtol=1e-6)
    without = build(False)
    without.head.kernel[...] = jnp.ones_like(without.head.kernel[...])
    moved = dict(batch, prior=batch["prior"] + 50.0)
    np.testing.assert_array_equal(np.asarray(without(batch)), np.asarray(without(moved)))


def test_folds_share_one_compiled_train_step(monkeypatch):
    """The folds of a CV run differ only in data and randomness: their train step is lowered
    and compiled once (it was ~20 s a fold on raw MER-Cross), and each fold still steps with its
    own dropout key (from one state, two folds' second losses differ; the first cannot, the
    output head starts at zero)."""
    config = ps_config.get_config("runlocal")
    config.model.dropout = 0.5
    config.optim.warmup_steps = 0  # a first step that moves the weights
    mesh = sharding.make_mesh(config.mesh)
    data = prepare.describe(config, ps_task)
    lowered = []
    real = train.ModelState.train_step

    def counting(self, treedef):
        lowered.append(self)
        return real(self, treedef)

    monkeypatch.setattr(train.ModelState, "train_step", counting)
    folds = [train.ModelState(config, mesh, ps_task, data, _stats(), fold_index=i)
             for i in (0, 1)]
    state = folds[0].init()
    batch = sharding.to_global(_batch(), mesh, config)
    losses = []
    for fold in folds:
        step = fold.compiled_train_step(state, batch)
        stepped, _ = step(jax.tree.map(jnp.copy, state), batch)  # the step donates its state
        losses.append(float(step(stepped, batch)[1]["loss"]))
    assert len(lowered) == 1
    assert losses[0] != losses[1]


SPLIT_CHILD = """
import sys, jax
import ml_collections
from merjax import sharding
if sys.argv[1] == "started":
    jax.devices()  # the backends start before the mesh is made
config = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1, devices=-1, cpu_devices=2))
mesh = sharding.make_mesh(config)
print(jax.device_count(), dict(mesh.shape)["data"], jax.config.jax_num_cpu_devices)
"""


@pytest.mark.parametrize("xla_flags, start, expected", [
    ("", "fresh", "2 2 2"),  # split as the config says
    ("--xla_force_host_platform_device_count=3", "fresh", "3 3 -1"),  # the flag chose: it stands
    ("", "started", "1 1 -1"),  # too late: said aloud, JAX's one device stays
])
def test_a_cpu_backend_is_split_as_config_mesh_cpu_devices_says(xla_flags, start, expected):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", SPLIT_CHILD, start], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == expected
    assert ("config.mesh.cpu_devices=2 not applied" in proc.stderr) == (start == "started")


def test_the_suites_cpu_devices_stand_against_a_config_split():
    # conftest chose 8 devices before the backends started; a config asking for 2 changes
    # nothing and the mesh spans the 8.
    assert sharding.split_host_cpu(_mesh_config(cpu_devices=2)) is False
    assert sharding.make_mesh(_mesh_config(cpu_devices=2)).size == 8
