"""MER-Prefer's preference (reward) model: which of two descriptions fits a clip better.

    u = clip encoder (batch)                the fusion transformer's pooled vector, plus a
                                            linear path from the standardised pooled inputs
    v(d), b(d) = description encoder (d)    a byte transformer's CLS vector, plus a linear path
                                            from the standardised byte histogram and length
    s(clip, d) = <u, v(d)> + b(d)           a bilinear match in a `joint_dim` space, and a
                                            description-only term (some descriptions are just
                                            better written: longer, more specific)
    P(a1 preferred) = sigmoid(s(clip, a1) - s(clip, a2))                    (Bradley-Terry)

The model returns the logit s(a1) - s(a2): swapping a1 and a2 negates it exactly, so
P(a1 > a2) = 1 - P(a2 > a1) holds by construction, with no swap augmentation to learn it.

Why the linear paths: a fold of the demo trains on ~86 judged pairs, and a bilinear form of the
standardised inputs is what a logistic read-out already separates them with (tasks/prefer.py's
reference); the transformers, trained from scratch, add to it (as models/fusion.py's wide path).

Precision: `clip` may carry dtype / remat / scan_layers (models/fusion.py); the description
encoder follows them; the joint-space read-outs compute in float32, so the logit is float32.
"""
import jax.numpy as jnp
from flax import nnx

from merjax.models import fusion, layers, text

HISTOGRAM = 257  # byte frequencies (256) and the length in bytes


def byte_histogram(ids, mask):
    """[B, L] byte ids (byte + 1, 0 = padding) -> [B, 257]: each byte's frequency among the
    real bytes, and the count of real bytes."""
    count = mask.sum(axis=1).astype(jnp.float32)
    rows = jnp.broadcast_to(jnp.arange(ids.shape[0])[:, None], ids.shape)
    hist = jnp.zeros((ids.shape[0], 257), jnp.float32).at[rows, ids].add(
        mask.astype(jnp.float32))[:, 1:]
    return jnp.concatenate([hist / jnp.maximum(count, 1.0)[:, None], count[:, None]], axis=1)


class DescriptionEncoder(nnx.Module):
    """UTF-8 bytes of a description -> [B, width]: a CLS token over ByteStem tokens (`group`
    bytes a token; `length` divides by it) with learned positions, through a small
    transformer. English descriptions of up to 1 KB: 8 bytes (a word or two) a token keeps the
    sequence at 128 tokens."""

    def __init__(self, length, *, width, depth, heads, mlp_dim, group, dropout, rngs,
                 dtype="float32", remat=False, scan_layers=False):
        if length % group:
            raise ValueError(f"description length {length} must divide by group {group}")
        dtype = layers.compute_dtype(dtype)
        self.stem = text.ByteStem(width, group=group, rngs=rngs, dtype=dtype)
        self.positions = layers.Embedding(length // group, width, rngs=rngs, dtype=dtype)
        self.cls = layers.Embedding(1, width, rngs=rngs, dtype=dtype)
        self.encoder = layers.Encoder(width, depth, heads, mlp_dim, dropout, rngs=rngs,
                                      dtype=dtype, remat=remat, scan_layers=scan_layers)

    def __call__(self, ids, mask, *, train, rngs):
        x, token_mask = self.stem(ids, mask)
        x = x + self.positions(jnp.arange(x.shape[1]))
        batch, width = x.shape[0], x.shape[-1]
        cls = jnp.broadcast_to(self.cls(jnp.zeros((1,), jnp.int32)), (batch, 1, width))
        x = jnp.concatenate([cls, x], axis=1)
        token_mask = jnp.concatenate([jnp.ones((batch, 1), bool), token_mask], axis=1)
        return self.encoder(x, token_mask, train=train, rngs=rngs)[:, 0]


class PreferenceModel(nnx.Module):
    """`clip`: FusionTransformer keyword arguments (num_classes is set to 0 here); `length`:
    the padded description bytes; `text`: width, depth, heads, mlp_dim, group of the
    description encoder; `stats`: {clip input: (mean, std)} and "description": (mean, std) of
    byte_histogram over train descriptions (None: placeholders for a restore)."""

    def __init__(self, *, clip, length, text, joint_dim, dropout, stats=None, rngs):
        stats = dict(stats or {})
        described = stats.pop("description", None)
        self.clip = fusion.FusionTransformer(**clip, num_classes=0, stats=stats, rngs=rngs)
        precision = {k: clip[k] for k in ("dtype", "remat", "scan_layers") if k in clip}
        self.description = DescriptionEncoder(length, dropout=dropout, rngs=rngs, **text,
                                              **precision)
        self.histogram = layers.Standardize(HISTOGRAM, described)
        width, text_width = clip["width"], text["width"]
        self.clip_deep = layers.dense(width, joint_dim, ("embed", "outputs"), rngs=rngs)
        self.wide_dim = sum(clip["modalities"][m][1] for m in self.clip.wide_inputs)
        if self.wide_dim:
            self.clip_wide = layers.dense(self.wide_dim, joint_dim, ("features", "outputs"),
                                          rngs=rngs)
        # The description side starts at zero (the clip side does not, so its gradient is not
        # zero): the first logits are 0, P = 0.5, instead of products of two random maps.
        zeros = nnx.initializers.zeros_init()
        self.text_deep = layers.dense(text_width, joint_dim, ("embed", "outputs"), rngs=rngs,
                                      kernel_init=zeros)
        self.text_wide = layers.dense(HISTOGRAM, joint_dim, ("features", "outputs"), rngs=rngs,
                                      kernel_init=zeros)
        # The description-only term starts at zero: a match has to be earned from the clip.
        self.bias_deep = layers.dense(text_width, 1, ("embed", "outputs"), rngs=rngs,
                                      kernel_init=zeros)
        self.bias_wide = layers.dense(HISTOGRAM, 1, ("features", "outputs"), rngs=rngs,
                                      kernel_init=zeros)

    def embed_clip(self, batch, *, train=False, rngs=None):
        """u: [B, joint_dim]."""
        u = self.clip_deep(self.clip(batch, train=train, rngs=rngs))
        if self.wide_dim:
            u = u + self.clip_wide(self.clip.wide_features(batch))
        return u

    def describe(self, ids, mask, *, train=False, rngs=None):
        """(v [B, joint_dim], b [B]) of descriptions given as byte ids and mask [B, L]."""
        deep = self.description(ids, mask, train=train, rngs=rngs)
        hist = self.histogram(byte_histogram(ids, mask))
        v = self.text_deep(deep) + self.text_wide(hist)
        b = (self.bias_deep(deep) + self.bias_wide(hist))[:, 0]
        return v, b

    def scores(self, batch, *, train=False, rngs=None):
        """(s(clip, a1), s(clip, a2)), each [B]; both descriptions in one encoder pass."""
        u = self.embed_clip(batch, train=train, rngs=rngs)
        ids = jnp.concatenate([batch["a1"], batch["a2"]], axis=0)
        mask = jnp.concatenate([batch["a1_mask"], batch["a2_mask"]], axis=0)
        v, b = self.describe(ids, mask, train=train, rngs=rngs)
        s = jnp.einsum("bj,bj->b", jnp.concatenate([u, u], axis=0), v) + b
        return jnp.split(s, 2)

    def __call__(self, batch, *, train=False, rngs=None):
        """The Bradley-Terry logit s(a1) - s(a2) [B]: P(a1 preferred) = sigmoid of it."""
        s1, s2 = self.scores(batch, train=train, rngs=rngs)
        return s1 - s2
