"""Byte-level text stem: UTF-8 bytes -> tokens, with no tokenizer or pretrained vocabulary.

Chinese subtitles are 3 bytes a character, so `group` adjacent byte embeddings are concatenated
and projected into one token (a strided patch over bytes), keeping sequences short.
"""
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

# The numpy side (bytes -> ids and mask) lives with the other clip inputs; kept importable here.
from merjax.data.clip_inputs import PAD, encode  # noqa: F401
from merjax.models import layers


class ByteStem(nnx.Module):
    def __init__(self, width, *, group=4, byte_dim=32, rngs, dtype=jnp.float32):
        self.group = group
        self.embed = layers.Embedding(257, byte_dim, rngs=rngs, names=("tokens", None),
                                      dtype=dtype)
        self.proj = layers.dense(group * byte_dim, width, ("features", "embed"), rngs=rngs,
                                 dtype=dtype)

    def __call__(self, ids, mask):
        """ids, mask: [B, L] (L divisible by group) -> tokens [B, L/group, W], mask."""
        x = rearrange(self.embed(ids), "b (n g) e -> b n (g e)", g=self.group)
        token_mask = rearrange(mask, "b (n g) -> b n g", g=self.group).any(-1)
        return self.proj(x), token_mask
