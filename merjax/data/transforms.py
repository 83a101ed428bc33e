"""Numpy-only per-example and per-batch operations (no JAX: they run in the input pipeline)."""
import numpy as np


def select(example, fields, dtypes=None):
    """Keeps `fields` of a decoded TFDS example as numpy arrays (TFDS gives ints and lists too)."""
    dtypes = dtypes or {}
    out = {}
    for name in fields:
        if name not in example:
            raise KeyError(f"Example has no field {name!r}; it has {sorted(example)}")
        out[name] = np.asarray(example[name], dtype=dtypes.get(name))
    return out


def pad_batch(rows, size):
    """Stacks up to `size` examples and pads with zeros to exactly `size`.

    Adds `mask` (True for real rows), so an evaluation sees every example exactly once while every
    batch keeps the one compiled shape.
    """
    if not rows:
        raise ValueError("pad_batch needs at least one row to know the shapes")
    if len(rows) > size:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {size}")
    batch = {}
    for name in rows[0]:
        stacked = np.stack([row[name] for row in rows])
        pad = np.zeros((size - len(rows),) + stacked.shape[1:], stacked.dtype)
        batch[name] = np.concatenate([stacked, pad])
    batch["mask"] = np.arange(size) < len(rows)
    return batch
