"""EEG + fNIRS encoder for MER-PS: two signal branches, a fusion transformer, a V/A head.

Tokens, in order: [CLS, prior, EEG x (context_s * eeg_patches_per_s), fNIRS x (context_s * bins)].
- EEG branch: each channel's patch is scaled by its train-set RMS, Hann-windowed, and reduced to
  the log mean power of the five classic bands (delta, theta, alpha, beta, gamma: what EEG
  emotion work reads, and far less noisy than single periodogram bins); each (channel, band) log
  power is standardised with train-set statistics, so no offset swamps the signal before the
  projection and its LayerNorm; all channels' bands of a patch become one token.
- fNIRS branch: per time bin, the (type x channel) haemoglobin values are standardised with
  train-set statistics, bad channels zeroed (the mask comes with every example), and projected.
- The per-(video, second) mean label of the training subjects enters as its own token and the
  head predicts a residual on top of it, so an untrained model already predicts the prior.
Outputs are on the [0, 1] scale: (label - 1) / 254.

Precision (`dtype`): the band powers (an FFT and a log) and the standardisations are computed in
float32 whatever the dtype; projections, tokens and the transformer compute in `dtype`; the V/A
head reads its input in float32, so outputs are float32.
"""
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from merjax.models import layers

LABEL_MIN, LABEL_MAX = 1.0, 255.0


BANDS = ((1.0, 4.0), (4.0, 8.0), (8.0, 13.0), (13.0, 30.0), (30.0, 45.0))  # Hz


def band_weights(patch, samples_per_s):
    """[patch // 2 + 1, bands]: averaging weights of each band's FFT bins (numpy, constant)."""
    freqs = np.fft.rfftfreq(patch, 1.0 / samples_per_s)
    weights = np.stack([(freqs >= lo) & (freqs < hi) for lo, hi in BANDS], axis=1)
    if not weights.any(axis=0).all() or BANDS[-1][1] > samples_per_s / 2:
        raise ValueError(f"EEG patches of {patch} samples at {samples_per_s} Hz cannot resolve "
                         f"the bands {BANDS} Hz; use longer patches or a higher data.eeg_rate_hz")
    return (weights / weights.sum(axis=0)).astype(np.float32)


def band_log_power(eeg, scale, patches, samples_per_s):
    """[B, C, T] EEG -> [B, patches, C, bands] log mean band power of each Hann-windowed patch,
    after dividing each channel by `scale` (its train RMS). jnp, so input statistics and the
    model compute it with the same code."""
    x = rearrange(eeg / scale[None, :, None], "b c (n p) -> b n c p", n=patches)
    patch = x.shape[-1]
    x = (x - x.mean(axis=-1, keepdims=True)) * jnp.asarray(np.hanning(patch), x.dtype)
    power = jnp.abs(jnp.fft.rfft(x, axis=-1)) ** 2 / patch
    return jnp.log(power @ band_weights(patch, samples_per_s) + 1e-6)


def to_unit(raw):
    return (raw - LABEL_MIN) / (LABEL_MAX - LABEL_MIN)


def from_unit(unit):
    return unit * (LABEL_MAX - LABEL_MIN) + LABEL_MIN


class PhysioEncoder(nnx.Module):

    def __init__(self, *, eeg_channels, eeg_window, context_s, fnirs_steps, fnirs_types,
                 fnirs_channels, width, depth, heads, mlp_dim, dropout, eeg_patches_per_s,
                 stats, use_prior=True, dtype="float32", remat=False, scan_layers=False, rngs):
        if eeg_window % (context_s * eeg_patches_per_s):
            raise ValueError(f"EEG window {eeg_window} does not split into "
                             f"{context_s} s x {eeg_patches_per_s} patches per second")
        self.context_s = context_s
        self.eeg_patches = context_s * eeg_patches_per_s
        self.fnirs_steps = fnirs_steps
        self.use_prior = use_prior
        self.samples_per_s = eeg_window // context_s
        band_weights(eeg_window // self.eeg_patches, self.samples_per_s)  # fails early if unfit
        self.eeg_scale = layers.InputStats(jnp.asarray(stats["eeg_scale"], jnp.float32))
        self.band_standardize = layers.Standardize(
            (eeg_channels, len(BANDS)), (stats["band_mean"], stats["band_std"]))
        self.fnirs_standardize = layers.Standardize(
            (fnirs_types, fnirs_channels), (stats["fnirs_mean"], stats["fnirs_std"]))

        dtype = layers.compute_dtype(dtype)
        self.eeg_proj = layers.dense(eeg_channels * len(BANDS), width, ("features", "embed"),
                                     rngs=rngs, dtype=dtype)
        self.fnirs_proj = layers.dense(fnirs_types * fnirs_channels, width, ("features", "embed"),
                                       rngs=rngs, dtype=dtype)
        self.prior_proj = layers.dense(2, width, ("outputs", "embed"), rngs=rngs, dtype=dtype)
        self.cls = layers.Embedding(1, width, rngs=rngs, dtype=dtype)
        num_tokens = 2 + self.eeg_patches + fnirs_steps
        self.position = layers.Embedding(num_tokens, width, rngs=rngs, dtype=dtype)
        # cls, prior, eeg, fnirs
        self.token_type = layers.Embedding(4, width, rngs=rngs, dtype=dtype)
        self.eeg_norm = layers.layer_norm(width, rngs=rngs, dtype=dtype)
        self.fnirs_norm = layers.layer_norm(width, rngs=rngs, dtype=dtype)
        self.encoder = layers.Encoder(width, depth, heads, mlp_dim, dropout, rngs=rngs,
                                      dtype=dtype, remat=remat, scan_layers=scan_layers)
        # Zero-initialised so training starts from the prior, not from noise around it. Float32
        # (the default), so the residual on the prior is not rounded to bfloat16.
        self.head = layers.dense(width, 2, ("embed", "outputs"), rngs=rngs,
                                 kernel_init=nnx.initializers.zeros_init())

    def _eeg_tokens(self, eeg):
        bands = band_log_power(eeg, self.eeg_scale[...], self.eeg_patches, self.samples_per_s)
        bands = self.band_standardize(bands)
        return self.eeg_norm(self.eeg_proj(rearrange(bands, "b n c k -> b n (c k)")))

    def _fnirs_tokens(self, fnirs, fnirs_mask):
        x = self.fnirs_standardize(fnirs)
        x = x * fnirs_mask[:, None, None, :]  # bad channels contribute nothing
        return self.fnirs_norm(self.fnirs_proj(rearrange(x, "b t k c -> b t (k c)")))

    def __call__(self, batch, *, train=False, rngs=None):
        """Returns [B, 2] valence/arousal on the unit scale."""
        batch_size = batch["eeg"].shape[0]
        prior = to_unit(batch["prior"]) if self.use_prior else jnp.full((batch_size, 2), 0.5)
        eeg = self._eeg_tokens(batch["eeg"])
        fnirs = self._fnirs_tokens(batch["fnirs"], batch["fnirs_mask"])
        cls = jnp.broadcast_to(self.cls(jnp.zeros((1,), jnp.int32)), (batch_size, 1, eeg.shape[-1]))
        prior_token = self.prior_proj(prior)[:, None]
        tokens = jnp.concatenate([cls, prior_token, eeg, fnirs], axis=1)
        types = np.concatenate([[0, 1], np.full(self.eeg_patches, 2),
                                np.full(self.fnirs_steps, 3)])
        tokens = tokens + self.position(jnp.arange(tokens.shape[1])) + self.token_type(types)

        # A token is valid when its second lies inside the recording (context_mask).
        seconds = batch["context_mask"]
        eeg_valid = jnp.repeat(seconds, self.eeg_patches // self.context_s, axis=1)
        fnirs_valid = jnp.repeat(seconds, self.fnirs_steps // self.context_s, axis=1)
        always = jnp.ones((batch_size, 2), bool)
        mask = jnp.concatenate([always, eeg_valid, fnirs_valid], axis=1)

        out = self.encoder(tokens, mask, train=train, rngs=rngs)
        return prior + self.head(out[:, 0])
