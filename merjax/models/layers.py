"""Building blocks with logical axis names on every weight.

Names are the vocabulary of `config.sharding.rules`: `embed` (model width), `mlp` (MLP hidden),
`heads` and `kv` (attention), `features` (raw input features), `tokens` (positions), `outputs`,
and `layers` (the stacked blocks of an Encoder built with `scan_layers`).

Precision: every module takes the compute `dtype` (`compute_dtype` reads `config.model.dtype`);
parameters are always created in float32, and are cast to `dtype` where they are used, so the
optimizer state and its updates stay float32 under bfloat16 compute.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_dense_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LAYERS = "layers"  # the logical name of the stacked-blocks axis (configs/common.py rules)


def compute_dtype(name):
    """`config.model.dtype` ("float32" or "bfloat16") -> the jnp dtype the model computes in."""
    if name not in DTYPES:
        raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}; found {name!r}")
    return DTYPES[name]


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


def dense(in_features, out_features, names, *, rngs, kernel_init=_dense_init, dtype=jnp.float32):
    """nnx.Linear whose kernel is named `names` (in, out) and whose bias is named (out,);
    float32 parameters, computing in `dtype`."""
    return nnx.Linear(
        in_features, out_features,
        kernel_init=nnx.with_partitioning(kernel_init, names),
        bias_init=nnx.with_partitioning(_zeros, (names[1],)),
        dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def layer_norm(features, *, rngs, name="embed", dtype=jnp.float32):
    """nnx.LayerNorm with float32 parameters (its statistics are reduced in float32 anyway)."""
    return nnx.LayerNorm(features,
                         scale_init=nnx.with_partitioning(_ones, (name,)),
                         bias_init=nnx.with_partitioning(_zeros, (name,)),
                         dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class Embedding(nnx.Module):
    """A learned table [num, width] (positions, modality types), added to tokens."""

    def __init__(self, num, width, *, rngs, names=("tokens", "embed"), dtype=jnp.float32):
        init = nnx.with_partitioning(nnx.initializers.normal(0.02), names)
        self.table = nnx.Param(init(rngs.params(), (num, width)))
        self.dtype = dtype

    def __call__(self, ids):
        return jnp.take(self.table[...], ids, axis=0).astype(self.dtype)


class Mlp(nnx.Module):
    def __init__(self, width, hidden, dropout, *, rngs, dtype=jnp.float32):
        self.up = dense(width, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.down = dense(hidden, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, train, rngs):
        x = jax.nn.gelu(self.up(x))
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        return self.down(x)


class Attention(nnx.Module):
    """Multi-head self-attention; q/k/v kernels are [embed, heads, kv] so heads shard on `model`.

    It computes jax.nn.dot_product_attention's function (masked keys get its large finite
    negative logit, so a query whose keys are all masked averages every value; logits and
    softmax in float32) through `attend` below, which is faster on XLA:CPU."""

    def __init__(self, width, heads, *, rngs, dtype=jnp.float32):
        if width % heads:
            raise ValueError(f"model.width {width} must divide by model.heads {heads}")
        head_dim = width // heads
        init = nnx.with_partitioning(_dense_init, ("embed", "heads", "kv"))
        self.q = nnx.Param(init(rngs.params(), (width, heads, head_dim)))
        self.k = nnx.Param(init(rngs.params(), (width, heads, head_dim)))
        self.v = nnx.Param(init(rngs.params(), (width, heads, head_dim)))
        out_init = nnx.with_partitioning(_dense_init, ("heads", "kv", "embed"))
        self.out = nnx.Param(out_init(rngs.params(), (heads, head_dim, width)))
        self.dtype = dtype

    def __call__(self, x, mask):
        """x: [B, T, D]; mask: [B, T] bool, False tokens are never attended to."""
        x, dtype = x.astype(self.dtype), self.dtype
        # The 1/sqrt(head_dim) logit scale goes into the (small) query kernel. Keys and values
        # are made [B, H, K, T]: every product with a [T, T] operand is then one XLA:CPU runs
        # as a fast (YNNPACK) dot, where the [B, H, T, K] layout's dK = dS^T Q was 2x slower.
        scale = self.q.shape[-1] ** -0.5
        q = jnp.einsum("btd,dhk->bhtk", x, (self.q[...] * scale).astype(dtype))
        kt = jnp.einsum("btd,dhk->bhkt", x, self.k[...].astype(dtype))
        vt = jnp.einsum("btd,dhk->bhkt", x, self.v[...].astype(dtype))
        return jnp.einsum("bhtk,hkd->btd", attend(q, kt, vt, mask), self.out[...].astype(dtype))


# jax.nn.dot_product_attention's logit for a masked key: finite, so a query with no key left
# gets a uniform softmax, not NaN.
_MASKED_LOGIT = -0.7 * float(np.finfo(np.float32).max)
# The float32 logits of one query block ([B, H, rows, T]) stay near this size (in cache): on the
# 2-core CPU (B 32, H 4, T 274: 38 MB of logits) 6-8 blocks of 5-6.5 MB ran fwd+bwd equally fast,
# 10-13 blocks and one block slower (below).
_BLOCK_BYTES = 6 << 20


def attend(q, kt, vt, mask):
    """softmax(q kt + masked) vt^T per head: q [B, H, T, K] (pre-scaled), kt and vt [B, H, K, T],
    mask [B, T] -> [B, H, T, K] in q's dtype (logits and softmax in float32).

    The backward (a custom VJP) keeps no [T, T] tensor from the forward: it recomputes the
    probabilities P from the logits and each row's max and log-sum, then dS = P * (dP -
    rowsum(dO * O)), fewer passes over [B, H, T, T] than autodiff of the masked softmax. The
    queries go through in blocks of rows (a lax.map, a scan in the backward) so that a block's
    [B, H, rows, T] tensors stay in cache.

    Measured on the 2-core CPU, one layer with its projections, fwd+bwd, B 32, T 274, H 4, K 16,
    float32 (medians of variants alternated in one process; the machine is shared, so ratios):
    jax.nn.dot_product_attention 167 ms; its autodiff in [B, H, T, K] layout 194; custom VJP
    saving P 144 (with one fused QKV projection 145: not kept); recomputing P 133; K and V as
    [B, H, K, T] 126; in 8 query blocks 73 (this function; 92 vs 168 and one block's 151 in
    another run; bfloat16 84 vs 151); the same blocks saving P 84. Scanning over examples (one
    or two at a time: 73 / 54 ms) was faster still, but a scan over the batch axis makes XLA
    all-gather a batch sharded over devices, so every device would compute every example.
    """
    B, H, T, _ = q.shape
    # An exported program's batch is symbolic (merjax/export.py): its blocks are sized for one
    # example (the number of blocks only changes the speed).
    examples = B if isinstance(B, int) else 1
    n = min(T, -(-examples * H * T * T * 4 // _BLOCK_BYTES))
    # Blocks are for a CPU's caches: on an H200 (same shapes) 7 blocks ran fwd+bwd in 0.68 ms,
    # one block in 0.51 ms, as fast as jax.nn.dot_product_attention (0.50 ms).
    return _attend(q, kt, vt, mask, n if jax.default_backend() == "cpu" else 1)


def _blocks(t, n):
    """[B, H, T, X] -> [n, B, H, ceil(T / n), X], rows zero-padded (heads never merged)."""
    B, H, T, X = t.shape
    rows = -(-T // n)
    t = jnp.pad(t, ((0, 0), (0, 0), (0, n * rows - T), (0, 0)))
    return jnp.moveaxis(t.reshape(B, H, n, rows, X), 2, 0)


def _unblocks(t, length):
    n, B, H, rows, X = t.shape
    return jnp.moveaxis(t, 0, 2).reshape(B, H, n * rows, X)[:, :, :length]


def _logits(q, kt, mask):
    bias = jnp.where(mask, 0.0, _MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
    return jnp.einsum("bhtk,bhks->bhts", q, kt, preferred_element_type=jnp.float32) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, kt, vt, mask, n):
    return _attend_fwd(q, kt, vt, mask, n)[0]


def _attend_fwd(q, kt, vt, mask, n):
    def block(qb):
        s = _logits(qb, kt, mask)
        peak = jnp.max(s, -1, keepdims=True)
        e = jnp.exp(s - peak)
        total = jnp.sum(e, -1, keepdims=True)
        return jnp.einsum("bhts,bhks->bhtk", (e / total).astype(vt.dtype), vt), peak, jnp.log(total)

    # Each row's max and log-sum are kept apart, not summed into a logsumexp: in a row with
    # every key masked the max is -2.4e38, and log(sum) would vanish in the sum.
    o, peak, log_total = jax.lax.map(block, _blocks(q, n))
    o = _unblocks(o, q.shape[2])
    return o, (q, kt, vt, mask, o, peak, log_total)


def _attend_bwd(n, res, do):
    q, kt, vt, mask, o, peak, log_total = res
    f32, dtype = jnp.float32, q.dtype
    # jnp.where's gradient: a masked logit gets none, even in a row with every key masked.
    live = jnp.any(mask, -1).astype(f32)[:, None, None, None]
    rowsum = jnp.sum(do.astype(f32) * o.astype(f32), -1, keepdims=True)

    def block(grads, xs):
        qb, dob, rowsum_b, peak_b, log_total_b = xs
        p = jnp.exp(_logits(qb, kt, mask) - peak_b - log_total_b)  # no divide: 15% faster
        dp = jnp.einsum("bhtk,bhks->bhts", dob, vt, preferred_element_type=f32)
        ds = (p * (dp - rowsum_b) * live).astype(dtype)
        dkt = grads[0] + jnp.einsum("bhtk,bhts->bhks", qb, ds, preferred_element_type=f32)
        dvt = grads[1] + jnp.einsum("bhtk,bhts->bhks", dob, p.astype(dtype),
                                    preferred_element_type=f32)
        return (dkt, dvt), jnp.einsum("bhts,bhks->bhtk", ds, kt)

    zeros = jnp.zeros(kt.shape, f32)
    xs = (_blocks(q, n), _blocks(do, n), _blocks(rowsum, n), peak, log_total)
    (dkt, dvt), dq = jax.lax.scan(block, (zeros, zeros), xs)
    return _unblocks(dq, q.shape[2]), dkt.astype(dtype), dvt.astype(dtype), None


_attend.defvjp(_attend_fwd, _attend_bwd)


class TransformerBlock(nnx.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width, heads, mlp_dim, dropout, *, rngs, dtype=jnp.float32):
        self.norm1 = layer_norm(width, rngs=rngs, dtype=dtype)
        self.attn = Attention(width, heads, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(width, rngs=rngs, dtype=dtype)
        self.mlp = Mlp(width, mlp_dim, dropout, rngs=rngs, dtype=dtype)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, mask, *, train, rngs):
        y = self.attn(self.norm1(x), mask)
        x = x + self.dropout(y, deterministic=not train, rngs=rngs)
        y = self.mlp(self.norm2(x), train=train, rngs=rngs)
        return x + self.dropout(y, deterministic=not train, rngs=rngs)


def apply_block(block, x, mask, *, train, rngs, remat=False):
    """block(x, mask); with `remat` its activations are recomputed in the backward pass instead
    of kept (jax.checkpoint): less memory for about one more forward pass of compute."""
    def call(block, x, mask, rngs):
        return block(x, mask, train=train, rngs=rngs)

    return (nnx.remat(call) if remat else call)(block, x, mask, rngs)


class Encoder(nnx.Module):
    """A stack of TransformerBlocks and a final LayerNorm.

    `scan_layers`: the blocks' parameters are stacked on a leading `layers` axis (one block
    built under nnx.vmap) and applied with nnx.scan, so the compiled program holds one block
    instead of `depth` (compile time and code size stop growing with depth). `remat`: each
    block under nnx.remat. Use them together: measured on XLA:CPU (width 512, depth 8, 32 x 97
    tokens), the gradient's temporaries were 1.49 GB plain, 1.49 GB with remat alone (the
    unrolled recomputation is scheduled early), 2.12 GB scanned, 0.30 GB scanned with remat.
    Neither changes the numbers the blocks compute (tests/test_switches.py); `scan_layers`
    changes the parameter tree (`blocks/0/...` becomes `blocks/...` with a leading axis), so a
    checkpoint restores only into the layout it was saved from.
    """

    def __init__(self, width, depth, heads, mlp_dim, dropout, *, rngs, dtype=jnp.float32,
                 remat=False, scan_layers=False):
        self.remat, self.scan_layers, self.depth = remat, scan_layers, depth

        def block(rngs):
            return TransformerBlock(width, heads, mlp_dim, dropout, rngs=rngs, dtype=dtype)

        if scan_layers:
            stacked = nnx.vmap(block, in_axes=0, out_axes=0,
                               transform_metadata={nnx.PARTITION_NAME: LAYERS})
            self.blocks = nnx.split_rngs(splits=depth)(stacked)(rngs)
        else:
            self.blocks = nnx.List([block(rngs) for _ in range(depth)])
        self.norm = layer_norm(width, rngs=rngs, dtype=dtype)

    def __call__(self, x, mask, *, train, rngs):
        if not self.scan_layers:
            for block in self.blocks:
                x = apply_block(block, x, mask, train=train, rngs=rngs, remat=self.remat)
            return self.norm(x)
        # One dropout key per layer, drawn here: the scanned body cannot advance a stream of
        # the caller's Rngs.
        keys = jax.random.split(rngs.dropout(), self.depth) if train and rngs is not None else None

        def body(x, block, key):
            layer_rngs = None if key is None else nnx.Rngs(dropout=key)
            return apply_block(block, x, mask, train=train, rngs=layer_rngs, remat=self.remat)

        scan = nnx.scan(body, in_axes=(nnx.Carry, 0, None if keys is None else 0),
                        out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: LAYERS})
        return self.norm(scan(x, self.blocks, keys))
