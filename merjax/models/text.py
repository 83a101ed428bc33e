"""Byte-level text stem: UTF-8 bytes -> tokens, with no tokenizer or pretrained vocabulary.

Chinese subtitles are 3 bytes a character, so `group` adjacent byte embeddings are concatenated
and projected into one token (a strided patch over bytes), keeping sequences short.
"""
import numpy as np
from einops import rearrange
from flax import nnx

from merjax.models import layers

PAD = 0  # byte ids are shifted by one so 0 can mean padding


def encode(text, max_bytes):
    """str or bytes -> (ids [max_bytes] int32, mask [max_bytes] bool), numpy side."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    raw = raw[:max_bytes]
    ids = np.zeros(max_bytes, np.int32)
    ids[:len(raw)] = np.frombuffer(raw, np.uint8).astype(np.int32) + 1
    return ids, ids != PAD


class ByteStem(nnx.Module):
    def __init__(self, width, *, group=4, byte_dim=32, rngs):
        self.group = group
        self.embed = layers.Embedding(257, byte_dim, rngs=rngs, names=("tokens", None))
        self.proj = layers.dense(group * byte_dim, width, ("features", "embed"), rngs=rngs)

    def __call__(self, ids, mask):
        """ids, mask: [B, L] (L divisible by group) -> tokens [B, L/group, W], mask."""
        x = rearrange(self.embed(ids), "b (n g) e -> b n (g e)", g=self.group)
        token_mask = rearrange(mask, "b (n g) -> b n g", g=self.group).any(-1)
        return self.proj(x), token_mask
