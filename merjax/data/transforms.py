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


def pad_batch(arrays, size):
    """Examples stacked as {field: [n, ...]} (1 <= n <= size), padded with zeros to exactly
    `size` rows, with `mask` (True for real rows): an evaluation sees every example exactly once
    while every batch keeps the one compiled shape."""
    n = len(next(iter(arrays.values()))) if arrays else 0
    if not 1 <= n <= size:
        raise ValueError(f"a padded batch of {size} takes 1 to {size} rows; found {n}")
    batch = {name: np.concatenate([value, np.zeros((size - n,) + value.shape[1:], value.dtype)])
             for name, value in arrays.items()}
    batch["mask"] = np.arange(size) < n
    return batch
