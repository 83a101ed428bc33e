"""grain input pipelines over prepared TFDS data sources, one process's share at a time.

Training: seeded shuffle of the whole split (a new order each epoch) -> repeat -> this process's
rows of each global batch -> numpy transform -> batch. The iterator's position is checkpointable
(checkpoint.py saves it).
Evaluation: every example of the split exactly once, in order, padded and masked in the last
batch; every process runs the same number of batches so none waits alone in a collective.
"""
import math

import grain
import jax
import numpy as np

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
                   process_count=None):
    """An endless, checkpointable iterator of this process's training batches.

    The order is global: one seeded shuffle of the whole split (a new order each epoch) cut into
    global batches, of which each process transforms and yields only its rows (process p: rows
    p*L..(p+1)*L-1 of every batch of L*processes). So the model sees the same batches whatever
    the number of processes: 2 processes x 4 devices train as 1 x 8 do.
    """
    if len(source) == 0:
        raise ValueError("The training split is empty")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    per_process = local_batch_size(global_batch_size, process_count)
    ds = grain.MapDataset.source(source).seed(seed * 1009).shuffle().repeat()
    # Lazy: a process reads and transforms only the examples of its own rows.
    ds = ds.map(transform).batch(per_process, drop_remainder=True)
    return iter(ds[process_index::process_count].to_iter_dataset())


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
