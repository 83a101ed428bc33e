"""layers.Dropout: 16 random bits an element, two elements per 32-bit draw; the keep rate and
the expectation it promises, repeatability from the key, and a batch-sharded input whose masks
are drawn where its rows live (no gather), equal to the unsharded draw."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from merjax import sharding
from merjax.models import layers


def drop(x, rate, seed=0):
    return layers.Dropout(rate)(x, deterministic=False, rngs=nnx.Rngs(dropout=seed))


def test_off_when_deterministic_or_rate_zero():
    x = jnp.arange(12.0).reshape(3, 4)
    assert layers.Dropout(0.5)(x, deterministic=True) is x
    assert drop(x, 0.0) is x
    with pytest.raises(ValueError, match=r"\[0, 1\); found 1.0"):
        layers.Dropout(1.0)


def test_a_rate_under_2_to_the_minus_17_keeps_every_element_and_draws_its_key():
    """Its keep probability rounds to 2^16 / 2^16: every element kept, scaled by 1, and the key
    drawn as for any rate (the 16-bit comparison's limit would not fit 32 bits)."""
    x = jnp.arange(12.0).reshape(3, 4)
    rngs = nnx.Rngs(dropout=0)
    np.testing.assert_array_equal(layers.Dropout(1e-6)(x, deterministic=False, rngs=rngs), x)
    assert int(rngs.dropout.count[...]) == 1


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5])
def test_keep_rate_scale_and_expectation(rate):
    x = jnp.ones((64, 50, 33))  # an odd last axis: the second half of a draw is cut off
    y = np.asarray(drop(x, rate))
    threshold = round((1 - rate) * 65536)
    kept = y != 0
    np.testing.assert_allclose(y[kept], 65536 / threshold, rtol=1e-6)
    # 105,600 Bernoulli draws: the kept fraction within 5 standard deviations of 1 - rate.
    sd = np.sqrt(rate * (1 - rate) / kept.size)
    assert abs(kept.mean() - (1 - rate)) < 5 * sd
    assert abs(y.mean() - 1.0) < 5 * sd / (1 - rate)
    # The low and high halves of one draw are not the same mask.
    assert (kept[..., :16] != kept[..., 17:33]).mean() > 0.5 * rate


@pytest.mark.parametrize("n", [16, 15])
def test_mask_is_each_draws_high_then_low_half(n):
    """Element j of the last axis is kept by the high 16 bits of draw j, element half + j by its
    low 16 bits (an odd axis drops the last low half): the layout a resumed run redraws."""
    y = np.asarray(drop(jnp.ones((4, 6, n)), 0.3, seed=5))
    bits = np.asarray(jax.random.bits(nnx.Rngs(dropout=5).dropout(), (4, 6, -(-n // 2)),
                                      jnp.uint32))
    draws = np.concatenate([bits >> 16, bits & 0xFFFF], axis=-1)[..., :n]
    np.testing.assert_array_equal(y != 0, draws < round(0.7 * 65536))


def test_same_key_same_mask_other_key_other_mask():
    x = jnp.ones((8, 10, 16))
    np.testing.assert_array_equal(drop(x, 0.3, seed=1), drop(x, 0.3, seed=1))
    assert not np.array_equal(drop(x, 0.3, seed=1), drop(x, 0.3, seed=2))


def test_batch_sharded_draws_in_place_and_equal_unsharded():
    mesh = jax.make_mesh((8, 1, 1), sharding.MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 12, 10)), jnp.float32)
    step = jax.jit(lambda x, key: layers.Dropout(0.25)(x, deterministic=False,
                                                      rngs=nnx.Rngs(dropout=key)))
    key = jax.random.key(3)
    x_s = jax.device_put(x, NamedSharding(mesh, P("data")))
    hlo = step.lower(x_s, key).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    np.testing.assert_array_equal(step(x_s, key), step(x, key))


@pytest.mark.parametrize("shape", [(), (7,), (3, 5, 6), (2, 1, 4, 3), (0, 4), (64, 12, 32)])
def test_random_bits_are_jax_random_bits_bit_for_bit(shape):
    """layers.random_bits writes jax's threefry out as one expression; its bits are jax's."""
    key = jax.random.fold_in(jax.random.key(11), 4)
    want = np.asarray(jax.random.bits(key, shape, jnp.uint32))
    got = np.asarray(jax.jit(layers.random_bits, static_argnums=1)(key, shape))
    assert got.dtype == np.uint32 and got.shape == shape
    np.testing.assert_array_equal(got, want)


def test_random_bits_hand_other_keys_and_layouts_to_jax():
    for key in (jax.random.key(3, impl="rbg"), jax.random.key(3, impl="unsafe_rbg")):
        np.testing.assert_array_equal(layers.random_bits(key, (4, 5)),
                                      jax.random.bits(key, (4, 5), jnp.uint32))
    with jax.threefry_partitionable(False):
        key = jax.random.key(3)
        np.testing.assert_array_equal(layers.random_bits(key, (4, 5)),
                                      jax.random.bits(key, (4, 5), jnp.uint32))
