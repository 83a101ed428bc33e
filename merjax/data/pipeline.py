"""grain input pipelines over prepared TFDS data sources, one process's share at a time.

Training: a seeded permutation of the whole split each epoch -> global batches -> this process's
rows of each, transformed (gathered from the split transformed once in memory when it fits
`config.pipeline.cache_bytes`). The iterator's position is checkpointable (checkpoint.py saves
it).
Evaluation: every example of the split exactly once, in order, padded and masked in the last
batch; every process runs the same number of batches so none waits alone in a collective.
"""
import functools
import math
import os
import time

import grain
import jax
import numpy as np
from absl import logging

from merjax.data import transforms


def process_slice(source, process_index=None, process_count=None):
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    return grain.MapDataset.source(source)[process_index::process_count]


def local_batch_size(global_batch_size, process_count=None):
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"Batch size {global_batch_size} does not divide over "
                         f"{process_count} processes")
    return global_batch_size // process_count


class Subset:
    """Examples `indices` of a random-access source, as a source (e.g. a cross-validation fold)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[int(self.indices[i])]


def train_iterator(source, transform, *, global_batch_size, seed, process_index=None,
                   process_count=None, cache_bytes=0, read_threads=1, prefetch_batches=4):
    """An endless, checkpointable iterator of this process's training batches.

    The order is global: epoch e visits the split in a seeded permutation of its own, and the
    epochs' concatenation is cut into global batches, of which each process yields only its rows
    (process p: rows p*L..(p+1)*L-1 of every batch of L*processes). So the model sees the same
    batches whatever the number of processes: 2 processes x 4 devices train as 1 x 8 do.

    One grain element is one batch, not one example: grain's per-element map and shuffle cost
    ~30-900 us an element here (the shuffle more on short splits), several times the train step
    of a small model. With `cache_bytes`, a split whose transformed examples fit in that many
    bytes is transformed once, here, into stacked arrays, and a batch is one gather from them
    (transforms are pure functions of the example). A larger split is read and transformed per
    batch in `read_threads` threads, at most `prefetch_batches` batches ahead (grain's default
    of 500 elements held 5 GB of raw MER-Cross batches). The position (a batch count) is
    checkpointed by checkpoint.py through grain.
    """
    if len(source) == 0:
        raise ValueError("The training split is empty")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    per_process = local_batch_size(global_batch_size, process_count)
    order = EpochOrder(len(source), seed)
    # Every batch has the first example's fields, shapes and dtypes (one compiled step).
    first = transform(source[0])
    arrays = materialise(source, transform, first, cache_bytes)

    def batch(b):
        start = b * global_batch_size + process_index * per_process
        rows = order.indices(start, start + per_process)
        if arrays is not None:
            return {name: column[rows] for name, column in arrays.items()}
        return stack([transform(source[int(i)]) for i in rows], rows, first)

    # range(2**62): endless for any run, and random access, so grain checkpoints the position.
    ds = grain.MapDataset.range(2 ** 62).map(batch)
    # A gather (~10 us) runs best in the calling thread (a prefetch thread's hand-off costs more
    # than it); reading and transforming overlap the train step in threads.
    options = (grain.ReadOptions(num_threads=0) if arrays is not None else
               grain.ReadOptions(num_threads=max(1, int(read_threads)),
                                 prefetch_buffer_size=max(1, int(prefetch_batches))))
    return iter(ds.to_iter_dataset(options))


class EpochOrder:
    """The global training order: epoch e is np.random.default_rng([seed, e]).permutation(n)
    (a new order each epoch, the same on every process)."""

    def __init__(self, n, seed):
        self.n, self.seed = n, int(seed)

    @functools.lru_cache(maxsize=4)  # a batch spans at most two epochs; threads share them
    def epoch(self, e):
        return np.random.default_rng([self.seed, e]).permutation(self.n)

    def indices(self, start, stop):
        """Split indices at global positions start..stop-1 of the epochs' concatenation."""
        epoch, offset = divmod(start, self.n)
        if offset + stop - start <= self.n:  # one epoch (most batches): a slice of its order
            return self.epoch(epoch)[offset:offset + stop - start]
        positions = np.arange(start, stop)
        epochs = positions // self.n
        out = np.empty(len(positions), np.int64)
        for e in np.unique(epochs):
            at = epochs == e
            out[at] = self.epoch(int(e))[positions[at] % self.n]
        return out


def materialise(source, transform, first, cache_bytes):
    """{field: [N, ...] array} of every transformed example (`first`: the first one), or None
    when the split would take more than `cache_bytes` (-1: a quarter of this host's physical
    memory)."""
    if cache_bytes == -1:
        cache_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    size = sum(np.asarray(v).nbytes for v in first.values()) * len(source)
    if size > cache_bytes:
        logging.info("training split of %d examples (%.2f GB transformed) read per batch: over "
                     "config.pipeline.cache_bytes=%d", len(source), size / 1e9, cache_bytes)
        return None
    arrays = empty_like(first, len(source))
    start = time.perf_counter()
    for i in range(len(source)):
        put(arrays, i, first if i == 0 else transform(source[i]), i)
    logging.info("training split of %d examples transformed into memory (%.2f GB) in %.1f s",
                 len(source), size / 1e9, time.perf_counter() - start)
    return arrays


def put(arrays, row, example, index):
    """arrays[name][row] = example[name] for the split's example `index`, refusing what would
    broadcast or leave a field out."""
    if example.keys() != arrays.keys():
        raise ValueError(f"training example {index} has fields {sorted(example)}; the first "
                         f"had {sorted(arrays)}")
    for name, value in example.items():
        if np.shape(value) != arrays[name].shape[1:]:
            raise ValueError(f"training example {index}: field {name!r} has shape "
                             f"{np.shape(value)}, the first example's is "
                             f"{arrays[name].shape[1:]} (transforms must give fixed shapes)")
        arrays[name][row] = value


def stack(examples, indices, first):
    """One batch of the transformed examples `indices`, checked against the split's first
    example as materialise() checks them."""
    arrays = empty_like(first, len(examples))
    for row, (example, index) in enumerate(zip(examples, indices)):
        put(arrays, row, example, index)
    return arrays


def empty_like(example, n):
    """{field: an empty [n, ...] array of the example's field shape and dtype}."""
    return {name: np.empty((n,) + np.shape(v), np.asarray(v).dtype) for name, v in example.items()}


def num_eval_batches(num_examples, global_batch_size, process_count=None):
    """Batches every process runs: enough for the process with the most examples."""
    process_count = jax.process_count() if process_count is None else process_count
    per_process = local_batch_size(global_batch_size, process_count)
    largest_share = math.ceil(num_examples / process_count)
    return max(1, math.ceil(largest_share / per_process))


def eval_batches(source, transform, *, global_batch_size, id_field="sample_id"):
    """Yields (batch, ids): padded numpy batches with `mask` and `index`, and their sample ids.

    `index` is the example's position in the split, so gathered results can be put back in order.
    """
    per_process = local_batch_size(global_batch_size)
    ds = process_slice(source)
    indices = np.arange(len(source))[jax.process_index()::jax.process_count()]
    n_batches = num_eval_batches(len(source), global_batch_size)
    for b in range(n_batches):
        lo, hi = b * per_process, min((b + 1) * per_process, len(ds))
        rows, ids = [], []
        for i in range(lo, hi):
            example = ds[i]
            ids.append(decode_id(example, id_field))
            row = transform(example)
            row["index"] = np.int32(indices[i])
            rows.append(row)
        if not rows:
            # This process ran out before the others; a fully masked batch keeps them in step.
            template = transform(ds[0])
            template["index"] = np.int32(0)
            batch = transforms.pad_batch([template], per_process)
            batch["mask"][:] = False
        else:
            batch = transforms.pad_batch(rows, per_process)
        yield batch, ids


def decode_id(example, id_field):
    value = example[id_field]
    return value.decode() if isinstance(value, bytes) else str(value)
