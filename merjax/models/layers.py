"""Building blocks with logical axis names on every weight.

Names are the vocabulary of `config.sharding.rules`: `embed` (model width), `mlp` (MLP hidden),
`heads` and `kv` (attention), `features` (raw input features), `tokens` (positions), `outputs`,
and `layers` (the stacked blocks of an Encoder built with `scan_layers`).

Precision: every module takes the compute `dtype` (`compute_dtype` reads `config.model.dtype`);
parameters are always created in float32, and are cast to `dtype` where they are used, so the
optimizer state and its updates stay float32 under bfloat16 compute.
"""
import functools
import math

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


# Threefry-2x32's rotation amounts, its two alternating groups of four rounds (Salmon et al.
# 2011, "Parallel random numbers: as easy as 1, 2, 3"; jax's threefry2x32).
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def random_bits(key, shape):
    """jax.random.bits(key, shape, jnp.uint32), bit for bit, written as one elementwise
    expression of the elements' flat indices (jax's threefry, partitionable layout: the hash of
    (0, index) under the key, its two words xor-ed).

    Why: XLA:CPU gets jax's threefry as a loop of its five key injections (rolled, to compile
    faster), whose ops run one after another on whole arrays and never fuse with the mask that
    reads them; written out, the hash is one fusion. 2-core CPU, alternated: [32, 274, 64] bits in
    0.54 ms instead of 1.85, [32, 64] in 11 us instead of 53. Each device hashes only the
    indices of its shard, as jax's does. Arrays of keys, keys of another implementation, the
    non-partitionable layout and arrays of 2^32 elements or more go to jax.random.bits."""
    size = math.prod(shape)
    if (not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
            or key.shape or str(jax.random.key_impl(key)) != "threefry2x32"
            or not jax.config.jax_threefry_partitionable or size >= 2 ** 32):
        return jax.random.bits(key, shape, jnp.uint32)
    k0, k1 = jax.random.key_data(key)
    keys = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    # The counter's low word is the flat index; its high word, 0 below 2^32 elements.
    index = sum(jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
                for axis, stride in enumerate(math.prod(shape[a + 1:]) for a in range(len(shape))))
    x0, x1 = jnp.zeros(shape, jnp.uint32) + keys[0], index + keys[1]
    for injection in range(5):
        for r in _THREEFRY_ROTATIONS[injection % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + keys[(injection + 1) % 3]
        x1 = x1 + keys[(injection + 2) % 3] + np.uint32(injection + 1)
    return x0 ^ x1


class Dropout(nnx.Module):
    """Inverted dropout (nnx.Dropout's interface) drawing 16 random bits per element, where
    nnx.Dropout draws a 32-bit uniform float: each 32-bit threefry output serves two elements,
    which halves the random numbers a step generates (on the 2-core CPU a [32, 274, 128] mask
    took 3.0 ms instead of 6.1; the raw MER-Cross step draws 4.5M of them). An element is kept
    with probability round((1 - rate) * 2^16) / 2^16, within 2^-17 of 1 - rate, and kept values
    are scaled by the inverse of that probability, so the expectation is exact."""

    def __init__(self, rate):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1); found {rate}")
        self.rate = rate

    def __call__(self, x, *, deterministic, rngs=None):
        if deterministic or self.rate == 0.0:
            return x
        threshold = round((1.0 - self.rate) * 65536)
        if threshold == 65536:  # a rate under 2^-17 keeps every element, scaled by 1; its
            rngs.dropout()  # key is still drawn, so the stream advances as for any other rate
            return x
        # Bits for half of the last axis, split into their high and low halves: the leading
        # (batch-sharded) axes keep their shape, so each device draws only its own bits.
        half = -(-x.shape[-1] // 2)
        bits = random_bits(rngs.dropout(), x.shape[:-1] + (half,))
        # Each half compared in place (high half < t iff bits < t * 2^16; low half < t iff
        # (bits << 16) < t * 2^16), so only booleans are concatenated: the same mask as
        # concatenating the two 16-bit halves first, where XLA:CPU materialised the uint32
        # concatenation (a [32, 274, 128] dropout fwd+bwd: 3.2 ms -> 1.9; the raw MER-Cross
        # step 1.06x, 12 alternated rounds).
        limit = np.uint32(threshold << 16)
        keep = jnp.concatenate([bits < limit, (bits << 16) < limit], axis=-1)[..., :x.shape[-1]]
        scale = jnp.asarray(65536 / threshold, x.dtype)
        return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))


class Mlp(nnx.Module):
    def __init__(self, width, hidden, dropout, *, rngs, dtype=jnp.float32):
        self.up = dense(width, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.down = dense(hidden, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.dropout = Dropout(dropout)

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
        # Keys and values are made [B, H, K, T]: every product with a [T, T] operand is then
        # one XLA:CPU runs as a fast (YNNPACK) dot, where the [B, H, T, K] layout's dK = dS^T Q
        # was 2x slower. The 1/sqrt(K) logit scale goes into the (small) query kernel.
        q_kernel = self.q[...] * self.q.shape[-1] ** -0.5
        if x.shape[1] <= _FEW_QUERIES:
            return self._few_tokens(x, mask, q_kernel)
        q = jnp.einsum("btd,dhk->bhtk", x, q_kernel.astype(dtype))
        kt = jnp.einsum("btd,dhk->bhkt", x, self.k[...].astype(dtype))
        vt = jnp.einsum("btd,dhk->bhkt", x, self.v[...].astype(dtype))
        return jnp.einsum("bhtk,hkd->btd", attend(q, kt, vt, mask), self.out[...].astype(dtype))

    def _few_tokens(self, x, mask, q_kernel):
        """__call__ for at most _FEW_QUERIES tokens: q, k and v from one [B, T, D] x [D, 3, H, K]
        product with x on the left, and the output from one [B, T, H, K] x [H, K, D]. Why: the
        einsums above make the kernel the left operand, and with few tokens their outputs' and
        gradients' transposes and the three small products cost more than the matmuls. With
        this and `_sum_over_queries`, train steps on the 2-core CPU (each against the einsums,
        alternated in one process): MER-PS (12 tokens) 1.17x, MER-Cross on utterance features
        1.19x, MER-FG 1.11x (a first version: 1.18-1.22x, 1.15x, 1.10x, MER-Prefer 0.99x); the
        raw MER-Cross step (274 tokens) ran 0.96x and 0.98x that way, so it keeps the einsums.
        The kernels are stacked on a new axis, not concatenated, so they keep their heads'
        `model` sharding; and x is not reshaped to [B T, D]: that way training on batches
        gathered on the devices differed from host batches in the 8th digit (8 CPU devices,
        tests/test_train.py asks for the same bits)."""
        kernel = jnp.stack([q_kernel, self.k[...], self.v[...]], axis=1).astype(self.dtype)
        # [B, T, D] x [D, 3, H, K] -> [B, T, 3, H, K]
        qkv = jax.lax.dot_general(x, kernel, (((2,), (0,)), ((), ())))
        q = qkv[:, :, 0].transpose(0, 2, 1, 3)
        kt, vt = (qkv[:, :, i].transpose(0, 2, 3, 1) for i in (1, 2))
        out = attend(q, kt, vt, mask).transpose(0, 2, 1, 3)  # [B, T, H, K]
        return jax.lax.dot_general(out, self.out[...].astype(self.dtype),
                                   (((2, 3), (0, 1)), ((), ())))


# jax.nn.dot_product_attention's logit for a masked key: finite, so a query with no key left
# gets a uniform softmax, not NaN.
_MASKED_LOGIT = -0.7 * float(np.finfo(np.float32).max)
# The float32 logits of one group of examples ([examples, H, T, T]) stay near this size per
# device (in cache). On the 2-core CPU (B 32, H 4, T 274: 1.2 MB an example) groups of 2 and 4
# examples ran fwd+bwd fastest (44 and 45 ms), 1 example 47, 8 examples 56, all 32 at once 135.
_GROUP_BYTES = 3 << 20
# Up to this many tokens, Attention takes its `_few_tokens` way, and on CPU
# `_sum_over_queries` multiplies and sums instead of calling a dot.
_FEW_QUERIES = 32


def attend(q, kt, vt, mask):
    """softmax(q kt + masked) vt^T per head: q [B, H, T, K] (pre-scaled), kt and vt [B, H, K, T],
    mask [B, T] -> [B, H, T, K] in q's dtype (logits and softmax in float32).

    The backward (a custom VJP) keeps no [T, T] tensor from the forward: it recomputes the
    probabilities P from the logits and each row's max and log-sum, then dS = P * (dP -
    rowsum(dO * O)), fewer passes over [B, H, T, T] than autodiff of the masked softmax. On CPU
    the examples go through in groups (a lax.map), so that a group's [T, T] tensors stay in
    cache and the backward accumulates nothing across groups.

    Group g of G holds examples g, g + G, g + 2G, ...: the batch is reshaped [B / G, G] and
    mapped over its minor axis, so a batch sharded in contiguous slices over the mesh stays
    sharded on the major one and each device maps over its own examples (a map over a sharded
    axis would all-gather it: every device would compute every example). Hence G divides the
    examples of each device: B / (devices of the mesh being traced under; 1 without one).

    Measured on the 2-core CPU, one layer's attention core fwd+bwd, B 32, T 274, H 4, K 16,
    float32 (medians of variants alternated in one process; the machine is shared, so ratios):
    jax.nn.dot_product_attention's with its projections 167 ms; a custom VJP saving P 144;
    recomputing P 133; K and V as [B, H, K, T] 126; the core alone in 8 blocks of query rows
    71, one block 135; in groups of 2 examples 44 (this function).
    """
    B, H, T, _ = q.shape
    return _attend(q, kt, vt, mask, _groups(B, H * T * T * 4))


def _groups(batch, example_bytes):
    """How many groups the examples go through in: 1 off CPU (on an H200 one block ran fwd+bwd
    in 0.51 ms, 7 blocks in 0.68) and for an exported program's symbolic batch; else the most
    groups whose per-device examples keep near _GROUP_BYTES of logits."""
    if jax.default_backend() != "cpu" or not isinstance(batch, int):
        return 1
    mesh = jax.sharding.get_abstract_mesh()
    devices = 1 if mesh.empty else mesh.size
    if batch % devices:
        return 1
    local = batch // devices
    # The fewest examples per device and group that fill the budget, and divide `local`.
    want = min(local, max(1, _GROUP_BYTES // example_bytes))
    return local // next(n for n in range(want, local + 1) if local % n == 0)


def _group(t, groups):
    """[B, ...] -> [groups, B / groups, ...]: group g holds examples g, g + groups, ..."""
    return jnp.moveaxis(t.reshape(t.shape[0] // groups, groups, *t.shape[1:]), 1, 0)


def _ungroup(t):
    groups, per_group = t.shape[:2]
    return jnp.moveaxis(t, 0, 1).reshape(groups * per_group, *t.shape[2:])


def _grouped(fn, groups, *args):
    """fn over the examples in `groups` groups (a lax.map; fn itself for one group)."""
    if groups == 1:
        return fn(*args)
    out = jax.lax.map(lambda xs: fn(*xs), tuple(_group(a, groups) for a in args))
    return jax.tree.map(_ungroup, out)


def _logits(q, kt, mask):
    bias = jnp.where(mask, 0.0, _MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
    return jnp.einsum("bhtk,bhks->bhts", q, kt, preferred_element_type=jnp.float32) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q, kt, vt, mask, groups):
    return _attend_fwd(q, kt, vt, mask, groups)[0]


def _attend_fwd(q, kt, vt, mask, groups):
    def group(q, kt, vt, mask):
        s = _logits(q, kt, mask)
        peak = jnp.max(s, -1, keepdims=True)
        e = jnp.exp(s - peak)
        total = jnp.sum(e, -1, keepdims=True)
        # Normalised after the product: a [T, K] divide instead of a [T, T] one.
        o = jnp.einsum("bhts,bhks->bhtk", e.astype(vt.dtype), vt,
                       preferred_element_type=jnp.float32) / total
        return o.astype(vt.dtype), peak, jnp.log(total)

    # Each row's max and log-sum are kept apart, not summed into a logsumexp: in a row with
    # every key masked the max is -2.4e38, and log(sum) would vanish in the sum.
    o, peak, log_total = _grouped(group, groups, q, kt, vt, mask)
    return o, (q, kt, vt, mask, o, peak, log_total)


def _attend_bwd(groups, res, do):
    q, kt, vt, mask, o, peak, log_total = res
    f32 = jnp.float32
    rowsum = jnp.sum(do.astype(f32) * o.astype(f32), -1, keepdims=True)

    def group(q, kt, vt, mask, do, rowsum, peak, log_total):
        dtype = q.dtype
        # jnp.where's gradient: a masked logit gets none, even in a row with every key masked.
        live = jnp.any(mask, -1).astype(f32)[:, None, None, None]
        p = jnp.exp(_logits(q, kt, mask) - peak - log_total)  # no divide: 15% faster
        dp = jnp.einsum("bhtk,bhks->bhts", do, vt, preferred_element_type=f32)
        ds = (p * (dp - rowsum) * live).astype(dtype)
        dq = jnp.einsum("bhts,bhks->bhtk", ds, kt)
        dkt = _sum_over_queries(q, ds)
        dvt = _sum_over_queries(do, p.astype(dtype))
        return dq, dkt, dvt

    dq, dkt, dvt = _grouped(group, groups, q, kt, vt, mask, do, rowsum, peak, log_total)
    return dq, dkt, dvt, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _sum_over_queries(a, b):
    """einsum("bhtk,bhts->bhks", a, b), the backward's dK and dV: a sum over the queries t, as
    a dot, or on CPU with at most _FEW_QUERIES queries as float32 products added one query
    after another (one loop fusion). Why: XLA:CPU runs this dot, which contracts both operands
    on a major axis, far below its other small dots: at MER-PS's shapes (B 64, H 4, T 12, K 16)
    2-3 GFLOP/s against 14-23 for its other [T, T] products, 17-23% of the step's matmul time
    for 1.3% of its FLOPs (`python -m merjax.bench`'s `matmuls_alone`). On the 2-core CPU at
    B 64, H 4, K 16 the sums ran 44x, 3.9x and 1.9x faster than the dot for T 4, 12 and 32
    (and 2x and 13x faster than a multiply-and-reduce at 12 and 4). Off CPU the dot stays: an
    accelerator's batched matmuls have not been measured against the sums."""
    if a.shape[2] > _FEW_QUERIES or jax.default_backend() != "cpu":
        return jnp.einsum("bhtk,bhts->bhks", a, b)
    dtype, a, b = a.dtype, a.astype(jnp.float32), b.astype(jnp.float32)
    out = a[:, :, 0, :, None] * b[:, :, 0, None, :]
    for t in range(1, a.shape[2]):
        out = out + a[:, :, t, :, None] * b[:, :, t, None, :]
    return out.astype(dtype)


class TransformerBlock(nnx.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width, heads, mlp_dim, dropout, *, rngs, dtype=jnp.float32):
        self.norm1 = layer_norm(width, rngs=rngs, dtype=dtype)
        self.attn = Attention(width, heads, rngs=rngs, dtype=dtype)
        self.norm2 = layer_norm(width, rngs=rngs, dtype=dtype)
        self.mlp = Mlp(width, mlp_dim, dropout, rngs=rngs, dtype=dtype)
        self.dropout = Dropout(dropout)

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
