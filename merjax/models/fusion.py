"""Multimodal fusion transformer (MER-Cross and the other video tracks).

Each modality enters through a stem that turns it into tokens of the model width:
- `dense`: pre-extracted features [T, D] (MERTools utterance features are T = 1);
- `mel`: log-mel frames [T, M], `group` frames per token;
- `faces`: uint8 RGB face crops [K, S, S, 3], one token per face (a patch embedding, pooled);
- `bytes`: UTF-8 subtitle bytes [L] (models/text.py).
Tokens get a modality embedding and a per-modality position embedding, then fuse either
- `joint`: one transformer over [CLS, all tokens]; or
- `bottleneck`: per-modality transformer streams that exchange information only through a few
  shared bottleneck tokens, averaged across modalities after every layer (Nagrani et al. 2021,
  "Attention Bottlenecks for Multimodal Fusion").
Modality dropout removes whole modalities per training example (never all of them), so the model
copes with a missing stream. Padding never takes part: every stem returns a token mask.

`wide=True` adds a linear path straight from the standardised dense / log-mel inputs, each
averaged over its real steps, to the logits (zero-initialised, so training starts it at the
class-mean directions). Why: a stem projects D-dim inputs to `width` dims through a random
matrix that must first learn where the label lives; with few clips and D >> width the deep path
memorises the train set first (train accuracy 1.0 after ~100 steps), and measured on independent
releases it stayed far below a logistic read-out of the same inputs (cv WAF 0.69 vs 0.84). The
linear path is that read-out inside the model, so the transformer only has to add to it.

Precision (`dtype`): inputs are standardised (and the wide path's features pooled) in float32;
stems, tokens and the transformer compute in `dtype`; the head and the wide path read their
inputs in float32, so logits (and the pooled vector of a headless model) are float32.
`remat` and `scan_layers` are layers.Encoder's; the bottleneck fusion has no scanned form.
"""
import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from merjax.models import layers, text


class DenseStem(nnx.Module):
    """Features standardised with train statistics, projected, normalised. Without the
    standardisation a large shared offset dominates every token after the LayerNorm and the class
    signal becomes a tiny perturbation (measured: candidate WAF 0.53 vs 0.68)."""

    def __init__(self, in_dim, width, *, stats=None, rngs, dtype=jnp.float32):
        self.standardize = layers.Standardize(in_dim, stats)
        self.proj = layers.dense(in_dim, width, ("features", "embed"), rngs=rngs, dtype=dtype)
        self.norm = layers.layer_norm(width, rngs=rngs, dtype=dtype)

    def __call__(self, x, mask):
        return self.norm(self.proj(self.standardize(x))), mask

    def pooled(self, x, mask):
        """[B, D]: the standardised input averaged over its real steps (0 when missing)."""
        return standardized_mean(self.standardize, x, mask)


def masked_mean(x, mask):
    """[B, T, D] -> [B, D], the mean over the steps where `mask` [B, T]; 0 where none.
    A product with the mask, not a sum of x * mask: XLA:CPU materialised the [B, T, D]
    broadcast of the mask for that (raw MER-Cross audio: 8 MB; this stem and mean 10.7 -> 8.4
    ms fwd+bwd)."""
    weights = mask.astype(x.dtype)
    count = jnp.maximum(weights.sum(axis=1), 1.0)[:, None]
    return (jnp.einsum("btd,bt->bd", x, weights, preferred_element_type=jnp.float32)
            / count).astype(x.dtype)


def standardized_mean(standardize, x, mask):
    """masked_mean(standardize(x), mask), standardising the mean instead of every step (it is
    affine): one pass over x, where the stem's own standardised copy was a second full pass
    (XLA computes it again for each consumer; 8 MB a raw MER-Cross batch)."""
    return jnp.where(mask.any(axis=1)[:, None], standardize(masked_mean(x, mask)), 0.0)


class MelStem(nnx.Module):
    def __init__(self, n_mels, width, *, group=4, stats=None, rngs, dtype=jnp.float32):
        self.group = group
        self.standardize = layers.Standardize(n_mels, stats)  # per mel band, from train frames
        self.proj = layers.dense(group * n_mels, width, ("features", "embed"), rngs=rngs,
                                 dtype=dtype)
        self.norm = layers.layer_norm(width, rngs=rngs, dtype=dtype)

    def __call__(self, x, mask):
        x = self.standardize(x) * mask[..., None]  # padding stays exactly zero
        x = rearrange(x, "b (n g) m -> b n (g m)", g=self.group)
        mask = rearrange(mask, "b (n g) -> b n g", g=self.group).any(-1)
        return self.norm(self.proj(x)), mask

    def pooled(self, x, mask):
        return standardized_mean(self.standardize, x, mask)


class FaceStem(nnx.Module):
    """Per face: non-overlapping patches -> shared projection -> GELU -> mean -> projection."""

    def __init__(self, face_size, width, *, patch=8, rngs, dtype=jnp.float32):
        if face_size % patch:
            raise ValueError(f"face size {face_size} must divide by the patch size {patch}")
        self.patch = patch
        self.patches = layers.dense(patch * patch * 3, width, ("features", "embed"), rngs=rngs,
                                    dtype=dtype)
        self.out = layers.dense(width, width, ("features", "embed"), rngs=rngs, dtype=dtype)
        self.norm = layers.layer_norm(width, rngs=rngs, dtype=dtype)

    def __call__(self, faces, mask):
        dtype, p = self.patches.dtype, self.patch
        x = (faces.astype(jnp.float32) / 255.0 - 0.5).astype(dtype)
        # One einsum over the faces reshaped to [b, k, h, p, w, (q c)], with the same kernel
        # (its rows are (p, q, c)): XLA lays the patches out for the dot itself. With einops
        # gathering each patch's pixels into a row first, fwd+bwd took 15.8 ms instead of 12.5
        # (32 x 8 faces of 48 px, 2-core CPU).
        x = x.reshape(*x.shape[:2], x.shape[2] // p, p, x.shape[3] // p, p * x.shape[4])
        kernel = self.patches.kernel[...].astype(dtype).reshape(p, -1, self.patches.out_features)
        x = jnp.einsum("bkhpwr,pre->bkhwe", x, kernel) + self.patches.bias[...].astype(dtype)
        x = jax.nn.gelu(x).mean(axis=(2, 3))
        return self.norm(self.out(x)), mask


def make_stem(kind, in_dim, width, *, stats=None, rngs, dtype=jnp.float32):
    """`stats`: (mean, std) over the input's last axis for the dense and mel stems."""
    if kind == "dense":
        return DenseStem(in_dim, width, stats=stats, rngs=rngs, dtype=dtype)
    if kind == "mel":
        return MelStem(in_dim, width, stats=stats, rngs=rngs, dtype=dtype)
    if kind == "faces":
        return FaceStem(in_dim, width, rngs=rngs, dtype=dtype)
    if kind == "bytes":
        return text.ByteStem(width, rngs=rngs, dtype=dtype)
    raise ValueError(f"Unknown modality stem {kind!r}; expected dense, mel, faces or bytes")


def tokens_per_input(kind, length):
    """How many tokens a stem makes from `length` input steps (positions to embed)."""
    return length // 4 if kind in ("mel", "bytes") else length


class FusionTransformer(nnx.Module):
    """`modalities`: ordered {name: (stem kind, input dim, input length)}; logits [B, classes].
    `stats`: {name: (mean, std)} train statistics of the dense and mel inputs (None: zeros and
    ones, as placeholders for a restore)."""

    def __init__(self, *, modalities, width, depth, heads, mlp_dim, dropout, num_classes,
                 fusion="joint", bottlenecks=4, modality_dropout=0.0, wide=False, stats=None,
                 dtype="float32", remat=False, scan_layers=False, rngs):
        if fusion not in ("joint", "bottleneck"):
            raise ValueError(f"fusion must be 'joint' or 'bottleneck'; found {fusion!r}")
        if fusion == "bottleneck" and scan_layers:
            raise ValueError("config.model.scan_layers needs fusion='joint': the bottleneck "
                             "fusion's layers mix per-modality streams between blocks and have "
                             "no scanned form; set scan_layers=False (remat works with both)")
        self.names = tuple(modalities)
        self.fusion = fusion
        self.modality_dropout = modality_dropout
        self.remat = remat
        dtype = layers.compute_dtype(dtype)
        stats = stats or {}
        self.stems = nnx.Dict({m: make_stem(kind, dim, width, stats=stats.get(m), rngs=rngs,
                                            dtype=dtype)
                               for m, (kind, dim, _) in modalities.items()})
        self.positions = nnx.Dict({
            m: layers.Embedding(tokens_per_input(kind, length), width, rngs=rngs, dtype=dtype)
            for m, (kind, _, length) in modalities.items()})
        self.modality = layers.Embedding(len(self.names), width, rngs=rngs, dtype=dtype)
        if fusion == "joint":
            self.cls = layers.Embedding(1, width, rngs=rngs, dtype=dtype)
            self.encoder = layers.Encoder(width, depth, heads, mlp_dim, dropout, rngs=rngs,
                                          dtype=dtype, remat=remat, scan_layers=scan_layers)
        else:
            self.cls = layers.Embedding(len(self.names), width, rngs=rngs, dtype=dtype)
            self.bottleneck = layers.Embedding(bottlenecks, width, rngs=rngs, dtype=dtype)
            self.streams = nnx.List([
                nnx.List([layers.TransformerBlock(width, heads, mlp_dim, dropout, rngs=rngs,
                                                  dtype=dtype)
                          for _ in self.names]) for _ in range(depth)])
            self.final_norm = layers.layer_norm(width, rngs=rngs, dtype=dtype)
        # num_classes=0: no head; the model returns its pooled [B, width] vector, for a task that
        # builds its own read-out on it (MER-Prefer's clip encoder, models/prefer.py).
        self.head = (layers.dense(width, num_classes, ("embed", "outputs"), rngs=rngs)
                     if num_classes else None)
        # The linear path reads the inputs whose stems standardise them (dense, mel).
        self.wide_inputs = tuple(m for m, (kind, _, _) in modalities.items()
                                 if wide and kind in ("dense", "mel"))
        if self.wide_inputs and num_classes:
            self.wide = layers.dense(sum(modalities[m][1] for m in self.wide_inputs), num_classes,
                                     ("features", "outputs"), rngs=rngs,
                                     kernel_init=nnx.initializers.zeros_init())

    def _modality_tokens(self, batch, train, rngs):
        """[(tokens [B, T_m, W], mask [B, T_m])] per modality, with modality dropout applied."""
        out = []
        for i, m in enumerate(self.names):
            x, mask = self.stems[m](batch[m], batch[f"{m}_mask"])
            pos = self.positions[m](jnp.arange(x.shape[1]))
            x = x + pos + self.modality(jnp.full((1,), i))
            out.append((x, mask))
        if train and self.modality_dropout > 0:
            batch_size = out[0][0].shape[0]
            n = len(self.names)
            keep = jax.random.uniform(rngs.dropout(), (batch_size, n)) >= self.modality_dropout
            # One modality per example, chosen at random among those it has, is never dropped
            # (sparing an absent one would leave an example with no input at all).
            present = jnp.stack([mask.any(axis=1) for _, mask in out], axis=1)
            draw = jnp.where(present, jax.random.uniform(rngs.dropout(), (batch_size, n)), -1.0)
            keep = keep | jax.nn.one_hot(draw.argmax(axis=1), n, dtype=bool)
            out = [(x, mask & keep[:, i:i + 1]) for i, (x, mask) in enumerate(out)]
        return out

    def __call__(self, batch, *, train=False, rngs=None):
        streams = self._modality_tokens(batch, train, rngs)
        batch_size, width = streams[0][0].shape[0], streams[0][0].shape[-1]
        if self.fusion == "joint":
            cls = jnp.broadcast_to(self.cls(jnp.zeros((1,), jnp.int32)), (batch_size, 1, width))
            tokens = jnp.concatenate([cls] + [x for x, _ in streams], axis=1)
            mask = jnp.concatenate([jnp.ones((batch_size, 1), bool)] + [m for _, m in streams],
                                   axis=1)
            pooled = self.encoder(tokens, mask, train=train, rngs=rngs)[:, 0]
        else:
            pooled = self._bottleneck_fusion(streams, train, rngs)
        if self.head is None:
            return pooled.astype(jnp.float32)
        logits = self.head(pooled)
        if self.wide_inputs:
            logits = logits + self.wide(self.wide_features(batch))
        return logits

    def wide_features(self, batch):
        """[B, sum of D]: the standardised dense / log-mel inputs, each averaged over its real
        steps (0 when missing): what the linear path reads."""
        return jnp.concatenate(
            [self.stems[m].pooled(batch[m], batch[f"{m}_mask"]) for m in self.wide_inputs],
            axis=-1)

    def _bottleneck_fusion(self, streams, train, rngs):
        batch_size, width = streams[0][0].shape[0], streams[0][0].shape[-1]
        n_b = self.bottleneck.table.shape[0]
        z = jnp.broadcast_to(self.bottleneck(jnp.arange(n_b)), (batch_size, n_b, width))
        # A modality with no valid token this example (missing, or dropped) does not vote on z.
        present = jnp.stack([m.any(axis=1) for _, m in streams], axis=1).astype(jnp.float32)
        xs = [jnp.concatenate([jnp.broadcast_to(self.cls(jnp.full((1,), i)), (batch_size, 1, width)),
                               x], axis=1) for i, (x, _) in enumerate(streams)]
        masks = [jnp.concatenate([jnp.ones((batch_size, 1 + n_b), bool), m], axis=1)
                 for _, m in streams]
        # In the tokens' dtype, so the averages do not promote a bfloat16 stream to float32.
        weights = (present / jnp.maximum(present.sum(axis=1, keepdims=True), 1.0)).astype(z.dtype)
        for layer in self.streams:
            new_z = []
            for i, block in enumerate(layer):
                # Stream layout: [CLS, bottlenecks, tokens]; the bottlenecks are re-inserted
                # each layer so every stream sees the shared, updated z.
                seq = jnp.concatenate([xs[i][:, :1], z, xs[i][:, 1:]], axis=1)
                seq = layers.apply_block(block, seq, masks[i], train=train, rngs=rngs,
                                         remat=self.remat)
                xs[i] = jnp.concatenate([seq[:, :1], seq[:, 1 + n_b:]], axis=1)
                new_z.append(seq[:, 1:1 + n_b])
            z = jnp.einsum("bm,mbnw->bnw", weights, jnp.stack(new_z))
        cls = jnp.stack([x[:, 0] for x in xs], axis=1)  # [B, M, W]
        return self.final_norm(jnp.einsum("bm,bmw->bw", weights, cls))
