"""grain input pipelines over prepared TFDS data sources, one process's share at a time.

Training: a seeded permutation of the whole split each epoch -> global batches -> this process's
rows of each, transformed. The iterator's position is checkpointable (checkpoint.py saves it).
Evaluation: every example of the split exactly once, in order, padded and masked in the last
batch; every process runs the same number of batches so none waits alone in a collective.
A run's `TransformCache` transforms each split that fits `config.pipeline.cache_bytes` once, for
every fold's training, evaluation and reference read-out; a split that does not fit is read and
transformed per batch.
"""
import functools
import math
import os
import time
from typing import NamedTuple

import grain
import jax
import numpy as np
from absl import logging

from merjax.data import transforms


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
                   process_count=None, cache_bytes=0, cache=None, read_threads=1,
                   prefetch_batches=4, on_device=None):
    """An endless, checkpointable iterator of this process's training batches.

    The order is global: epoch e visits the split in a seeded permutation of its own, and the
    epochs' concatenation is cut into global batches, of which each process yields only its rows
    (process p: rows p*L..(p+1)*L-1 of every batch of L*processes). So the model sees the same
    batches whatever the number of processes: 2 processes x 4 devices train as 1 x 8 do.

    One grain element is one batch, not one example: grain's per-element map and shuffle cost
    ~30-900 us an element here (the shuffle more on short splits), several times the train step
    of a small model. When `cache` (a TransformCache: the run's, shared with evaluation and the
    other folds; without one, this iterator's own of `cache_bytes` bytes) holds the split, a
    batch is one gather from its transformed arrays; with `on_device` (a data.on_device.OnDevice)
    and a split within its budget, that gather runs on the devices, several consecutive batches
    at a time, and yields the whole global batch (every process the same) as an
    on_device.Packed batch, whose fields the train step unpacks with the batch sharding.
    Otherwise it is read and transformed per batch in `read_threads` threads, at most
    `prefetch_batches` batches ahead (grain's default of 500 elements held 5 GB of raw
    MER-Cross batches); every way gives the same batches.
    The position (a batch count) is checkpointed by checkpoint.py through grain.
    """
    if len(source) == 0:
        raise ValueError("The training split is empty")
    if cache is not None and cache_bytes:
        raise ValueError(f"train_iterator takes cache_bytes (for a cache of its own) or a cache "
                         f"(which has its budget), not both; found cache_bytes={cache_bytes}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    per_process = local_batch_size(global_batch_size, process_count)
    order = EpochOrder(len(source), seed)
    cache = TransformCache(cache_bytes) if cache is None else cache
    cached = cache.get(source, transform)
    # Every batch has the first example's fields, shapes and dtypes (one compiled step).
    first = cache.first(source, transform)
    held = (None if cached is None or on_device is None else
            on_device.hold(cached, f"{cache.name(source)} ({len(source)} examples read)"))

    def batch(b):
        if held is not None:
            return held.batch(b, order, global_batch_size)
        start = b * global_batch_size + process_index * per_process
        rows = order.indices(start, start + per_process)
        if cached is not None:
            return cached.take(rows)
        return stack([transform(source[int(i)]) for i in rows], rows, first)

    # range(2**62): endless for any run, and random access, so grain checkpoints the position.
    ds = grain.MapDataset.range(2 ** 62).map(batch)
    # A gather (~10 us) runs best in the calling thread (a prefetch thread's hand-off costs more
    # than it); reading and transforming overlap the train step in threads.
    options = (grain.ReadOptions(num_threads=0) if cached is not None else
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


class TransformCache:
    """Splits transformed once into memory, then gathered from by every reader: in a run (one
    cache, made by train.run), each fold's training, evaluation and reference read-out.

    Valid because a task's transform is a pure function of the example (merjax/tasks/__init__.py):
    the transforms a run makes for its folds are one function, so whichever transforms a split,
    each reader gets what its own transform would give. Keyed by the underlying split: a
    `Subset` (a cross-validation fold) is its rows of its source's arrays, so the folds share one
    copy. A split's arrays are made for all its examples when it is first read, and an example is
    transformed when a reader first asks for it: only the examples some fold reads are ever
    transformed (MER-Cross's folds leave out the train clips that have no input), each once. A
    process that evaluates only its slice of a split still trains on rows from anywhere in it.

    `cache_bytes` bounds all the splits held together, per process (-1: a quarter of this host's
    physical memory; 0: none), counted whole: a split is held if it fits what the splits read
    before it left; one that does not is never held, and its readers transform it per batch as
    without a cache. `id_field`: the field whose decoded value is kept per example for
    evaluation's ids (None: no ids). `names`: {name: split}, for the log.
    """

    def __init__(self, cache_bytes, id_field=None, names=None):
        if cache_bytes == -1:
            cache_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
        self.budget, self.used, self.id_field = int(cache_bytes), 0, id_field
        self._names = {id(split): name for name, split in (names or {}).items()}
        self._splits = {}  # id(split) -> (split, _Entry); holding the split keeps its id its own

    def get(self, source, transform, id_field=None):
        """`source` (a split or a Subset of one) as a `Cached` view of its split's arrays, its
        examples transformed (with `transform`) where no reader had asked for them before; None
        when the split is not held. `id_field`: the field whose ids the caller reads from the
        view (the cache's own)."""
        if id_field is not None and id_field != self.id_field:
            raise ValueError(f"the cache keeps the ids of field {self.id_field!r}; its reader "
                             f"asks for {id_field!r}")
        split, rows = _underlying(source)
        entry = self._entry(split, transform)
        if entry.arrays is None:
            return None
        self._fill(split, entry, rows, transform)
        return Cached(entry.arrays, entry.ids, rows)

    def first(self, source, transform):
        """The first transformed example of `source`'s split: the fields, shapes and dtypes every
        example of it has."""
        return self._entry(_underlying(source)[0], transform).first

    def name(self, source):
        """The log's name of `source`'s split ("train split")."""
        split = _underlying(source)[0]
        return f"{self._names[id(split)]} split" if id(split) in self._names else "split"

    def _entry(self, split, transform):
        if id(split) not in self._splits:
            self._splits[id(split)] = (split, self._allocate(split, transform))
        return self._splits[id(split)][1]

    def _allocate(self, split, transform):
        if not len(split):
            return _Entry(None, None, None, None)
        first = transform(split[0])
        size = sum(np.asarray(v).nbytes for v in first.values()) * len(split)
        if self.used + size > self.budget:
            logging.info("%s of %d examples (%.2f GB transformed) read per batch: over "
                         "config.pipeline.cache_bytes=%d (%.2f GB of it hold other splits)",
                         self.name(split), len(split), size / 1e9, self.budget, self.used / 1e9)
            return _Entry(first, None, None, None)
        self.used += size
        entry = _Entry(first, empty_like(first, len(split)),
                       [None] * len(split) if self.id_field else None, np.zeros(len(split), bool))
        put(entry.arrays, 0, first, f"{self.name(split)} example 0")
        if entry.ids is not None:
            entry.ids[0] = decode_id(split[0], self.id_field)
        entry.filled[0] = True
        return entry

    def _fill(self, split, entry, rows, transform):
        """Transforms the examples at `rows` of `split` that no reader has asked for before."""
        todo = np.unique(rows[~entry.filled[rows]])
        if not len(todo):
            return
        name, start = self.name(split), time.perf_counter()
        for i in todo:
            example = split[int(i)]
            put(entry.arrays, i, transform(example), f"{name} example {i}")
            if entry.ids is not None:
                entry.ids[i] = decode_id(example, self.id_field)
        entry.filled[todo] = True
        logging.info("%s: %d examples transformed into memory in %.1f s (%d of %d now held; "
                     "%.2f GB of config.pipeline.cache_bytes=%d reserved for the cached splits)",
                     name, len(todo), time.perf_counter() - start, entry.filled.sum(),
                     len(split), self.used / 1e9, self.budget)


class _Entry(NamedTuple):
    first: dict | None  # the split's first transformed example (None: an empty split)
    arrays: dict | None  # {field: [N, ...]} for every example, or None: not held
    ids: list | None  # [N] decoded ids (None where not yet read)
    filled: np.ndarray | None  # [N] bool: the example is transformed into `arrays`


class Cached(NamedTuple):
    """A source's transformed examples: rows `rows` of its split's arrays (and ids)."""
    arrays: dict  # {field: [N, ...]}: the whole split's
    ids: list | None  # the whole split's decoded ids (TransformCache.id_field)
    rows: np.ndarray  # [len(source)] positions of the source's examples in the split

    def take(self, positions):
        """{field: value}: the source's examples at `positions` (an index array: a batch, one
        gather per field) or its example at one position."""
        at = self.rows[positions]
        return {name: column[at] for name, column in self.arrays.items()}

    def id(self, position):
        """The decoded id of the source's example at `position`."""
        return self.ids[self.rows[position]]


def _underlying(source):
    """(the split under `source`'s Subsets, the positions of source's examples in it)."""
    rows = np.arange(len(source))
    while isinstance(source, Subset):
        rows, source = source.indices[rows], source.source
    return source, rows


def put(arrays, row, example, what):
    """arrays[name][row] = example[name] for the transformed example `what` names ("training
    example 4"), refusing what would broadcast or leave a field out."""
    if example.keys() != arrays.keys():
        raise ValueError(f"{what} has fields {sorted(example)}; the first had {sorted(arrays)}")
    for name, value in example.items():
        if np.shape(value) != arrays[name].shape[1:]:
            raise ValueError(f"{what}: field {name!r} has shape {np.shape(value)}, the first "
                             f"example's is {arrays[name].shape[1:]} (transforms must give "
                             f"fixed shapes)")
        arrays[name][row] = value


def stack(examples, indices, first):
    """One batch of the transformed training examples `indices`, checked against the split's
    first example as a cached split's examples are."""
    arrays = empty_like(first, len(examples))
    for row, (example, index) in enumerate(zip(examples, indices)):
        put(arrays, row, example, f"training example {index}")
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


def eval_batches(source, transform, *, global_batch_size, id_field="sample_id", cache=None):
    """Yields (batch, ids): padded numpy batches with `mask` and `index`, and their sample ids.

    `index` is the example's position in the split, so gathered results can be put back in order.
    When `cache` (a TransformCache keeping `id_field`) holds the split, the examples and ids are
    read from it, as the same batches.
    """
    per_process = local_batch_size(global_batch_size)
    cached = None if cache is None else cache.get(source, transform, id_field)
    # This process's examples: every process_count-th, from its own index.
    indices = np.arange(len(source))[jax.process_index()::jax.process_count()]
    for b in range(num_eval_batches(len(source), global_batch_size)):
        at = indices[b * per_process:(b + 1) * per_process]
        # A process that ran out before the others (or had no example) keeps them in step
        # with a fully masked batch of the split's first example.
        real = len(at) > 0
        at = at if real else np.zeros(1, np.int64)
        arrays, ids = read_examples(source, at, transform, id_field, cached)
        arrays["index"] = at.astype(np.int32)
        batch = transforms.pad_batch(arrays, per_process)
        if not real:
            batch["mask"][:] = False
        yield batch, ids if real else []


def read_examples(source, positions, transform, id_field, cached=None):
    """({field: [n, ...]}: the transformed examples of `source` at `positions`, stacked; their
    decoded ids): from `cached` (the source's view of a TransformCache) one gather per field,
    else read and transformed here."""
    if cached is not None:
        return cached.take(positions), [cached.id(i) for i in positions]
    raw = [source[int(i)] for i in positions]
    examples = [transform(r) for r in raw]
    return ({name: np.stack([e[name] for e in examples]) for name in examples[0]},
            [decode_id(r, id_field) for r in raw])


def decode_id(example, id_field):
    value = example[id_field]
    return value.decode() if isinstance(value, bytes) else str(value)
