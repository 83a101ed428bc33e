"""MERTools' `attention` model (the MER2026 track-1 baseline, MER2026.md §2.6), in NNX.

Per modality an MLPEncoder (Dropout(p) -> Linear(D, h) -> ReLU -> Linear(h, h) -> ReLU ->
Linear(h, h) -> ReLU); the encodings, concatenated [B, M h], go through another MLPEncoder and a
Linear(h, M) that gives one raw weight per modality (no softmax); the fused vector is the weighted
sum of the encodings, and Linear(h, outputs) gives the logits. No normalisation anywhere, as in
the original. MERTools' empty valence head (Linear(h, 0)) has no parameters and is left out, so
hidden 128 at feature dims 1024/1024/768 with 6 outputs is the original's 543,369 parameters.

Inputs are the clip tracks' feature inputs (merjax/data/clip_inputs.py): per modality [B, T, D]
with a mask [B, T]. MERTools' utterance features are averaged over time to (D,); so is each input
here, over its real steps, so utterance features (T = 1) enter as they are and a missing input
(mask all false) enters as zeros. MERTools reads frame-level features with an LSTM encoder
instead; that variant is not this model (build_model refuses it).

Weights start as PyTorch's nn.Linear starts them (kernel and bias uniform in +-1/sqrt(fan_in)),
so training starts where the baseline's does. Every weight has logical axis names
(models/layers.py's vocabulary), so the model shards with the config's rules.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from merjax.models import layers
from merjax.models.fusion import masked_mean

# nn.Linear's default kernel init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
_torch_kernel = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias(fan_in):
    bound = 1 / fan_in ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(in_features, out_features, names, *, dtype, rngs):
    """nn.Linear as PyTorch initialises it, kernel named `names` (in, out), bias (out,);
    parameters float32, computed in `dtype`."""
    return nnx.Linear(
        in_features, out_features, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nnx.with_partitioning(_torch_kernel, names),
        bias_init=nnx.with_partitioning(_torch_bias(in_features), (names[1],)),
        rngs=rngs)


class MLPEncoder(nnx.Module):
    """Dropout(p) -> three Linear + ReLU. The input axis is `features` (raw features, or the
    concatenated encodings); the hidden axes alternate `embed` / `mlp`, so no kernel names one
    mesh axis twice."""

    def __init__(self, in_dim, hidden, dropout, *, dtype, rngs):
        self.dropout = layers.Dropout(dropout)
        self.layers = nnx.List([
            linear(in_dim, hidden, ("features", "embed"), dtype=dtype, rngs=rngs),
            linear(hidden, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs),
            linear(hidden, hidden, ("mlp", "embed"), dtype=dtype, rngs=rngs)])

    def __call__(self, x, *, train, rngs):
        # layers.Dropout, not nnx.Dropout: its bits are one fusion on XLA:CPU, where jax's
        # threefry is a loop (layers.random_bits); at the baseline's shapes on 2 CPU cores the
        # train step ran ~15% faster (in-process, 16 alternated windows: medians 526 -> 619
        # steps/s). It keeps an element with probability 1 - p to within 2^-17.
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x


class AttentionFusion(nnx.Module):
    """`modalities`: ordered {name: (stem kind, input dim, input length)}, all `dense`;
    returns float32 logits [B, num_outputs]. `dtype`: the computation dtype's name
    (config.model.dtype: "float32" or "bfloat16"); parameters are float32 either way."""

    def __init__(self, *, modalities, hidden, dropout, num_outputs, dtype="float32", rngs):
        odd = {m: kind for m, (kind, _, _) in modalities.items() if kind != "dense"}
        if odd:
            raise ValueError(f"the MERTools attention model reads pre-extracted features; the "
                             f"inputs {odd} are not (config.data.input_kind must be 'features')")
        dtype = layers.compute_dtype(dtype)
        self.names = tuple(modalities)
        self.dtype = dtype
        self.encoders = nnx.Dict({m: MLPEncoder(dim, hidden, dropout, dtype=dtype, rngs=rngs)
                                  for m, (_, dim, _) in modalities.items()})
        n = len(self.names)
        self.attention_mlp = MLPEncoder(n * hidden, hidden, dropout, dtype=dtype, rngs=rngs)
        self.attention = linear(hidden, n, ("embed", "outputs"), dtype=dtype, rngs=rngs)
        self.head = linear(hidden, num_outputs, ("embed", "outputs"), dtype=dtype, rngs=rngs)

    def __call__(self, batch, *, train=False, rngs=None):
        hidden = [self.encoders[m](utterance(batch[m], batch[f"{m}_mask"], self.dtype),
                                   train=train, rngs=rngs) for m in self.names]
        weights = self.attention(self.attention_mlp(jnp.concatenate(hidden, axis=-1),
                                                    train=train, rngs=rngs))  # [B, M], raw
        fused = jnp.einsum("bmh,bm->bh", jnp.stack(hidden, axis=1), weights)
        return self.head(fused).astype(jnp.float32)


def utterance(x, mask, dtype):
    """[B, T, D] -> [B, D] in `dtype`: the mean over the real steps (MERTools' utterance
    pooling; the input itself for T = 1), zeros where the input is missing."""
    return masked_mean(x, mask).astype(dtype)
