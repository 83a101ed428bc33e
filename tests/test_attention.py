"""layers.Attention (a custom-VJP attention in groups of examples) against the formula it
replaced: jax.nn.dot_product_attention on the same projections, outputs and gradients (x and the
four kernels), float32 to rounding and bfloat16 loosely, in one group and in several, with a
masked batch holding an example whose keys are all masked; and under a (data, model) mesh, where
the groups must not gather the batch. Each through both of its ways: for few tokens (one fused
q/k/v product, sums over the queries without a dot) and for many (`_FEW_QUERIES` set to 0)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from merjax import sharding
from merjax.models import layers


def reference(x, mask, params, dtype):
    """The replaced Attention.__call__, line for line."""
    x = x.astype(dtype)
    q = jnp.einsum("btd,dhk->bthk", x, params["q"].astype(dtype))
    k = jnp.einsum("btd,dhk->bthk", x, params["k"].astype(dtype))
    v = jnp.einsum("btd,dhk->bthk", x, params["v"].astype(dtype))
    y = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    return jnp.einsum("bthk,hkd->btd", y, params["out"].astype(dtype))


def attention(x, mask, params, dtype):
    with nnx.use_eager_sharding(False):
        model = layers.Attention(x.shape[-1], params["q"].shape[1], rngs=nnx.Rngs(0),
                                 dtype=dtype)
    for name, value in params.items():
        getattr(model, name)[...] = value
    return model(x, mask)


def inputs(batch, length, width, heads, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, length, width)), jnp.float32)
    mask = rng.random((batch, length)) < 0.7
    mask[0] = False  # every key masked: the reference's rows average all values
    mask[1, : length // 2] = False
    head_dim = width // heads
    shapes = dict(q=(width, heads, head_dim), k=(width, heads, head_dim),
                  v=(width, heads, head_dim), out=(heads, head_dim, width))
    params = {name: jnp.asarray(rng.normal(size=s) / np.sqrt(width), jnp.float32)
              for name, s in shapes.items()}
    return x, jnp.asarray(mask), params


def assert_close(actual, desired, err_msg=""):
    """Float32 rounding: 1e-5 relative, and 1e-5 of the array's largest entry absolute (sums of
    many terms, e.g. a kernel's gradient, round to their own scale)."""
    scale = max(1.0, float(jnp.abs(desired).max()))
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 * scale, err_msg=err_msg)


def values_and_grads(fn, x, mask, params, dtype):
    def loss(x, params):
        y = fn(x, mask, params, dtype).astype(jnp.float32)
        return jnp.sum(jnp.sin(y) * jnp.linspace(-1, 1, y.shape[-1])), y
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, params)
    return y, grads


# Every test runs both ways: _FEW_QUERIES as it is (the tests' 13 and 30 tokens are few), and 0.
WAYS = pytest.mark.parametrize("few_queries", [layers._FEW_QUERIES, 0],
                               ids=["few_tokens", "many_tokens"])


@WAYS
@pytest.mark.parametrize("group_bytes", [layers._GROUP_BYTES, 3000], ids=["one_group", "groups"])
@pytest.mark.parametrize("shape", [(3, 13, 8, 2), (4, 30, 24, 3)], ids=str)
def test_float32_equals_dot_product_attention(shape, group_bytes, few_queries, monkeypatch):
    monkeypatch.setattr(layers, "_GROUP_BYTES", group_bytes)
    monkeypatch.setattr(layers, "_FEW_QUERIES", few_queries)
    batch, length, width, heads = shape
    x, mask, params = inputs(*shape)
    y, (dx, dparams) = values_and_grads(attention, x, mask, params, jnp.float32)
    y_ref, (dx_ref, dparams_ref) = values_and_grads(reference, x, mask, params, jnp.float32)
    assert y.shape == (batch, length, width) and np.isfinite(np.asarray(y)).all()
    assert_close(y, y_ref)
    # The all-masked example is not a zero row: it is the mean of every value, as in the reference.
    assert float(jnp.abs(y[0]).max()) > 1e-3
    assert_close(dx, dx_ref)
    for name in ("q", "k", "v", "out"):
        assert_close(dparams[name], dparams_ref[name], err_msg=name)


def spy_groups(monkeypatch):
    """The group counts layers.attend chooses, in call order."""
    seen = []
    real = layers._attend
    monkeypatch.setattr(layers, "_attend", lambda *a: seen.append(a[-1]) or real(*a))
    return seen


def test_groups_hold_strided_examples(monkeypatch):
    seen = spy_groups(monkeypatch)
    monkeypatch.setattr(layers, "_GROUP_BYTES", 25_000)
    x, mask, params = inputs(4, 30, 24, 3)
    attention(x, mask, params, jnp.float32)
    # 3 x 30 x 30 float32 logits = 10,800 bytes an example: 2 examples fill 25,000 bytes.
    assert seen == [2]
    # Groups of the fewest examples that fill the budget (2 of 10,000 bytes) and divide the batch.
    assert layers._groups(6, 10_000) == 3 and layers._groups(12, 10_000) == 6
    assert layers._groups(5, 10_000) == 1  # 2 examples fill it, but only 5 divides 5
    t = jnp.arange(6 * 2, dtype=jnp.float32).reshape(6, 2)
    grouped = layers._group(t, 3)
    assert grouped.shape == (3, 2, 2)
    np.testing.assert_array_equal(grouped[1], t[np.array([1, 4])])  # group 1: examples 1, 1 + 3
    np.testing.assert_array_equal(layers._ungroup(grouped), t)


@WAYS
def test_bfloat16_within_bfloat16_tolerance(few_queries, monkeypatch):
    monkeypatch.setattr(layers, "_GROUP_BYTES", 3000)
    monkeypatch.setattr(layers, "_FEW_QUERIES", few_queries)
    x, mask, params = inputs(4, 30, 24, 3)
    y, (dx, dparams) = values_and_grads(attention, x, mask, params, jnp.bfloat16)
    y_ref, (dx_ref, dparams_ref) = values_and_grads(reference, x, mask, params, jnp.bfloat16)
    y32, _ = values_and_grads(reference, x, mask, params, jnp.float32)
    assert attention(x, mask, params, jnp.bfloat16).dtype == jnp.bfloat16
    # As close to the float32 result as the bfloat16 reference is, and close to that reference.
    err, err_ref = float(jnp.abs(y - y32).max()), float(jnp.abs(y_ref - y32).max())
    assert err <= 2 * err_ref + 1e-3, (err, err_ref)
    np.testing.assert_allclose(y, y_ref, rtol=0.05, atol=0.05)
    scale = float(jnp.abs(dx_ref).max())
    np.testing.assert_allclose(dx, dx_ref, rtol=0.05, atol=0.03 * scale)
    for name in ("q", "k", "v", "out"):
        scale = float(jnp.abs(dparams_ref[name]).max())
        np.testing.assert_allclose(dparams[name], dparams_ref[name], rtol=0.05,
                                   atol=0.03 * scale, err_msg=name)


@WAYS
def test_sharded_batch_and_heads_match_and_gather_nothing(few_queries, monkeypatch):
    seen = spy_groups(monkeypatch)
    monkeypatch.setattr(layers, "_GROUP_BYTES", 3000)
    monkeypatch.setattr(layers, "_FEW_QUERIES", few_queries)
    mesh = jax.make_mesh((4, 1, 2), sharding.MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    x, mask, params = inputs(32, 30, 24, 2)
    specs = dict(q=P(None, "model"), k=P(None, "model"), v=P(None, "model"), out=P("model"))
    put = jax.device_put
    x_s, mask_s = put(x, NamedSharding(mesh, P("data"))), put(mask, NamedSharding(mesh, P("data")))
    params_s = {n: put(v, NamedSharding(mesh, specs[n])) for n, v in params.items()}

    def loss(x, params):
        return jnp.sum(jnp.sin(attention(x, mask_s, params, jnp.float32)))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    with jax.set_mesh(mesh):
        hlo = step.lower(x_s, params_s).compile().as_text()
        value, (dx, dparams) = step(x_s, params_s)
    # 32 examples over 8 devices: each device maps over its 4, one at a time. A map over the
    # sharded axis would all-gather it (every device computing every example).
    assert seen[0] == 4
    assert "all-gather" not in hlo
    ref_value, (dx_ref, dparams_ref) = jax.jit(jax.value_and_grad(
        lambda x, p: jnp.sum(jnp.sin(reference(x, mask, p, jnp.float32))), argnums=(0, 1)))(
            x, params)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    assert_close(dx, dx_ref)
    for name in params:
        assert_close(dparams[name], dparams_ref[name], err_msg=name)


@WAYS
def test_exports_with_a_symbolic_batch(few_queries, monkeypatch):
    """merjax/export.py exports predict with a symbolic batch: the group count cannot read it."""
    monkeypatch.setattr(layers, "_FEW_QUERIES", few_queries)
    x, mask, params = inputs(4, 30, 24, 3)
    batch = jax.export.symbolic_shape("b")[0]
    exported = jax.export.export(jax.jit(lambda x, mask: attention(x, mask, params, jnp.float32)))(
        jax.ShapeDtypeStruct((batch, 30, 24), jnp.float32),
        jax.ShapeDtypeStruct((batch, 30), jnp.bool_))
    assert_close(exported.call(x, mask), reference(x, mask, params, jnp.float32))


@pytest.mark.parametrize("length", [12, 40])
def test_a_sum_over_the_queries_is_the_einsum(length):
    rng = np.random.default_rng(length)
    a = jnp.asarray(rng.normal(size=(3, 2, length, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3, 2, length, length)), jnp.float32)
    # At most _FEW_QUERIES (32) queries a product summed in float32 (on CPU, as here), beyond
    # it the dot.
    assert (length <= layers._FEW_QUERIES) == ("dot_general" not in str(
        jax.make_jaxpr(layers._sum_over_queries)(a, b)))
    assert_close(layers._sum_over_queries(a, b), jnp.einsum("bhtk,bhts->bhks", a, b))
    # bfloat16 in, bfloat16 out.
    assert layers._sum_over_queries(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)).dtype == \
        jnp.bfloat16
