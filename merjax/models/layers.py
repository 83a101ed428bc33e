"""Building blocks with logical axis names on every weight.

Names are the vocabulary of `config.sharding.rules`: `embed` (model width), `mlp` (MLP hidden),
`heads` and `kv` (attention), `features` (raw input features), `tokens` (positions), `outputs`.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_dense_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


class InputStats(nnx.Variable):
    """Normalisation statistics from the train split: saved with the model, never trained."""


class Standardize(nnx.Module):
    """(x - mean) / std over the trailing axes of shape `dim` (an int or a shape), with
    train-set statistics (zeros / ones when none are given: a restore overwrites them)."""

    def __init__(self, dim, stats=None):
        mean, std = (np.zeros(dim), np.ones(dim)) if stats is None else stats
        self.mean = InputStats(jnp.asarray(mean, jnp.float32).reshape(dim))
        self.std = InputStats(jnp.asarray(std, jnp.float32).reshape(dim))

    def __call__(self, x):
        return (x - self.mean[...]) / self.std[...]


def dense(in_features, out_features, names, *, rngs, kernel_init=_dense_init):
    """nnx.Linear whose kernel is named `names` (in, out) and whose bias is named (out,)."""
    return nnx.Linear(
        in_features, out_features,
        kernel_init=nnx.with_partitioning(kernel_init, names),
        bias_init=nnx.with_partitioning(_zeros, (names[1],)),
        rngs=rngs)


def layer_norm(features, *, rngs, name="embed"):
    return nnx.LayerNorm(features,
                         scale_init=nnx.with_partitioning(_ones, (name,)),
                         bias_init=nnx.with_partitioning(_zeros, (name,)),
                         rngs=rngs)


class Embedding(nnx.Module):
    """A learned table [num, width] (positions, modality types), added to tokens."""

    def __init__(self, num, width, *, rngs, names=("tokens", "embed")):
        init = nnx.with_partitioning(nnx.initializers.normal(0.02), names)
        self.table = nnx.Param(init(rngs.params(), (num, width)))

    def __call__(self, ids):
        return jnp.take(self.table[...], ids, axis=0)


class Mlp(nnx.Module):
    def __init__(self, width, hidden, dropout, *, rngs):
        self.up = dense(width, hidden, ("embed", "mlp"), rngs=rngs)
        self.down = dense(hidden, width, ("mlp", "embed"), rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, train, rngs):
        x = jax.nn.gelu(self.up(x))
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        return self.down(x)


class Attention(nnx.Module):
    """Multi-head self-attention; q/k/v kernels are [embed, heads, kv] so heads shard on `model`."""

    def __init__(self, width, heads, *, rngs):
        if width % heads:
            raise ValueError(f"model.width {width} must divide by model.heads {heads}")
        head_dim = width // heads
        init = nnx.with_partitioning(_dense_init, ("embed", "heads", "kv"))
        self.q = nnx.Param(init(rngs.params(), (width, heads, head_dim)))
        self.k = nnx.Param(init(rngs.params(), (width, heads, head_dim)))
        self.v = nnx.Param(init(rngs.params(), (width, heads, head_dim)))
        out_init = nnx.with_partitioning(_dense_init, ("heads", "kv", "embed"))
        self.out = nnx.Param(out_init(rngs.params(), (heads, head_dim, width)))

    def __call__(self, x, mask):
        """x: [B, T, D]; mask: [B, T] bool, False tokens are never attended to."""
        q = jnp.einsum("btd,dhk->bthk", x, self.q[...])
        k = jnp.einsum("btd,dhk->bthk", x, self.k[...])
        v = jnp.einsum("btd,dhk->bthk", x, self.v[...])
        attn_mask = mask[:, None, None, :]  # [B, 1(heads), 1(queries), T(keys)]
        y = jax.nn.dot_product_attention(q, k, v, mask=attn_mask)
        return jnp.einsum("bthk,hkd->btd", y, self.out[...])


class TransformerBlock(nnx.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width, heads, mlp_dim, dropout, *, rngs):
        self.norm1 = layer_norm(width, rngs=rngs)
        self.attn = Attention(width, heads, rngs=rngs)
        self.norm2 = layer_norm(width, rngs=rngs)
        self.mlp = Mlp(width, mlp_dim, dropout, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, mask, *, train, rngs):
        y = self.attn(self.norm1(x), mask)
        x = x + self.dropout(y, deterministic=not train, rngs=rngs)
        y = self.mlp(self.norm2(x), train=train, rngs=rngs)
        return x + self.dropout(y, deterministic=not train, rngs=rngs)


class Encoder(nnx.Module):
    """A stack of TransformerBlocks and a final LayerNorm."""

    def __init__(self, width, depth, heads, mlp_dim, dropout, *, rngs):
        self.blocks = nnx.List([TransformerBlock(width, heads, mlp_dim, dropout, rngs=rngs)
                                for _ in range(depth)])
        self.norm = layer_norm(width, rngs=rngs)

    def __call__(self, x, mask, *, train, rngs):
        for block in self.blocks:
            x = block(x, mask, train=train, rngs=rngs)
        return self.norm(x)
