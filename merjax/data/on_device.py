"""Training batches gathered on the accelerators, from a copy of a cached split in their memory.

For a small model on a GPU the host's share of a step (a numpy gather per field, then the
batch's transfer) can take as long as the step itself: on an H200 the host pipeline delivered
only 2.7-4.3x what the small default configs' steps consume. A split the run's TransformCache
holds is copied once to every device of the mesh; batches are then jitted gathers there, whose
outputs are already sharded along the batch as the train step takes it, and only the batches'
row indices cross from the host. Every process gathers the same global batch from the same
global order (pipeline.EpochOrder), so it is the batch the processes' host rows side by side
would make.

The copy holds the fields of one dtype side by side, one [N, width] array per dtype, and a
gather makes several consecutive batches at once, as one [k, B, width] array per dtype: a
`Packed` batch is such a group with the batch's position in it, and the train step reads its
fields with `unpack`. On an H200 a gather's cost grew with the arrays it returned (MER-Prefer's
15 fields, 16 batches a gather: 240 arrays, 236 us a batch); packed, its gather returns 3
arrays (int32, float32, bool), and its step takes 4 arrays for a batch instead of 15.
"""
import dataclasses
import math

import jax
import numpy as np
from absl import logging

from merjax import sharding


def device_budget(device_cache_bytes):
    """Bytes of each device's memory a held split may take: `device_cache_bytes`, where -1 is a
    quarter of an accelerator's memory and nothing on a CPU (whose devices are the host's
    memory, which the host cache uses already)."""
    if device_cache_bytes != -1:
        if int(device_cache_bytes) != device_cache_bytes or device_cache_bytes < 0:
            raise ValueError(f"config.pipeline.device_cache_bytes must be -1 (a quarter of an "
                             f"accelerator's memory), 0 (never) or a number of bytes; found "
                             f"{device_cache_bytes!r}")
        return int(device_cache_bytes)
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return 0
    limit = (device.memory_stats() or {}).get("bytes_limit", 0)
    return int(limit) // 4


def for_run(config, mesh):
    """The run's OnDevice (config.pipeline.device_cache_bytes over `mesh`), or None: none."""
    budget = device_budget(config.pipeline.device_cache_bytes)
    if budget <= 0:
        return None
    return OnDevice(budget, sharding.replicated(mesh), sharding.batch_sharding(mesh, config),
                    config.pipeline.device_gather_batches)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packed:
    """A training batch in its group of consecutive batches, as the devices gathered it:
    `groups` {dtype name: [k, B, width]} (each example's fields of that dtype side by side,
    sharded along B), `index` the batch's position among the k (a scalar on the devices, so a
    step sends nothing from the host), and `layout` ((field, dtype name, start, stop, shape of
    one example's value), ...) the fields' columns, static: part of the step's tree structure."""
    groups: dict
    index: jax.Array
    layout: tuple = dataclasses.field(metadata=dict(static=True))


def unpack(batch):
    """{field: [B, ...]}: the batch as the train step reads it (a `Packed` batch's fields,
    traced into the step; a batch of fields as it is)."""
    if not isinstance(batch, Packed):
        return batch
    rows = {kind: jax.lax.dynamic_index_in_dim(group, batch.index, keepdims=False)
            for kind, group in batch.groups.items()}
    return {name: rows[kind][:, start:stop].reshape(rows[kind].shape[:1] + shape)
            for name, kind, start, stop, shape in batch.layout}


def layout(arrays):
    """The `Packed` layout of {field: [N, ...]}: each dtype's fields side by side in their
    order, each field in the dtype a transfer to a device gives it (no 64-bit types unless
    jax_enable_x64), as a host batch's would have."""
    out, widths = [], {}
    for name, column in arrays.items():
        kind = np.dtype(jax.dtypes.canonicalize_dtype(column.dtype)).name
        shape = tuple(int(n) for n in column.shape[1:])
        start = widths.get(kind, 0)
        widths[kind] = start + math.prod(shape)
        out.append((name, kind, start, widths[kind], shape))
    return tuple(out)


def packed(arrays, fields):
    """Yields (dtype name, [N, width]) of {field: [N, ...]} in the layout `fields`, one dtype
    at a time, so that only one dtype's copy is made at once (a dtype of one field is a view)."""
    kinds = dict.fromkeys(kind for _, kind, *_ in fields)
    for kind in kinds:
        parts = [np.asarray(arrays[name], kind).reshape(len(arrays[name]), stop - start)
                 for name, k, start, stop, _ in fields if k == kind]
        yield kind, parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


# Consecutive batches gathered together hold at most this many bytes (the global batches'
# sum), so a large batch is gathered alone rather than many at a time.
GATHER_BYTES = 256 << 20
# On a CPU device a gather's outputs are host memory, and glibc maps an allocation over 32 MB
# afresh each time: one [16, 64, 17612] float32 group of MER-PS (72 MB) took 17.6k page faults
# and 2.6-3.8 ms a batch, 0.5-0.9 ms in groups of 7 (32 MB).
CPU_GATHER_BYTES = 32 << 20


class OnDevice:
    """Copies cached splits to the devices for training batches: `budget` bytes per device
    (device_budget), `replicated` the sharding of the copy (each device holds all of it, as any
    batch may need any row), `batch` the sharding of the batches gathered from it, and
    `batches_per_gather` the consecutive batches one gather makes (at most `gather_bytes` of
    them: GATHER_BYTES, CPU_GATHER_BYTES on CPU devices)."""

    def __init__(self, budget, replicated, batch, batches_per_gather):
        if int(batches_per_gather) != batches_per_gather or batches_per_gather < 1:
            raise ValueError(f"config.pipeline.device_gather_batches must be a whole number "
                             f">= 1; found {batches_per_gather!r}")
        self.budget, self.replicated, self.batch = int(budget), replicated, batch
        self.batches_per_gather = int(batches_per_gather)
        self.gather_bytes = GATHER_BYTES
        if batch.mesh.devices.flat[0].platform == "cpu":
            self.gather_bytes = min(GATHER_BYTES, CPU_GATHER_BYTES)
        # {dtype: [N, width]} on every device, [k, B] global row indices -> {dtype: [k, B,
        # width]}, sharded along B as a batch is (k from the indices' shape: one compile per k).
        group = jax.sharding.NamedSharding(batch.mesh,
                                           jax.sharding.PartitionSpec(None, *batch.spec))
        self.gather = jax.jit(_gather_group, out_shardings=group)

    def hold(self, cached, what):
        """A `DeviceSplit` of `cached` (a pipeline.Cached view of a split's arrays), or None
        where its split is over the budget; `what` names it in the log."""
        size = sum(column.nbytes for column in cached.arrays.values())
        if size > self.budget:
            logging.info("%s: training batches gathered on the host (its %.2f GB are over "
                         "config.pipeline.device_cache_bytes, %.2f GB a device here)", what,
                         size / 1e9, self.budget / 1e9)
            return None
        fields = layout(cached.arrays)
        columns = {kind: _put(column, self.replicated)
                   for kind, column in packed(cached.arrays, fields)}
        logging.info("%s: training batches gathered on the devices, from a copy of %.2f GB on "
                     "each (config.pipeline.device_cache_bytes)", what, size / 1e9)
        return DeviceSplit(self, columns, fields, cached.rows)


class DeviceSplit:
    """A split's transformed arrays on every device, one [N, width] array per dtype (`fields`
    their `layout`), and the rows of it a source reads. The copy is made after the cache
    transformed those rows (TransformCache.get); rows no reader had asked for are copied unset,
    and this source never gathers them.

    `batch(b, ...)` returns training batch b in the gather of its group of consecutive
    batches, which it keeps until a batch of another group is asked for: a batch depends only
    on b, so a restored iterator makes the same ones."""

    def __init__(self, on_device, columns, fields, rows):
        self.on_device, self.columns, self.fields, self.rows = on_device, columns, fields, rows
        self.row_bytes = sum(column.nbytes // max(1, len(column)) for column in columns.values())
        self._group, self._gathered, self._indices = None, None, ()

    def batches_per_gather(self, batch_size):
        """Consecutive batches of `batch_size` one gather makes (OnDevice's count, within its
        gather_bytes)."""
        fit = self.on_device.gather_bytes // max(1, self.row_bytes * batch_size)
        return max(1, min(self.on_device.batches_per_gather, fit))

    def batch(self, b, order, batch_size):
        """A `Packed` global batch b of `order` (a pipeline.EpochOrder over this source), the
        same on every process; `unpack` gives its fields with the batch sharding."""
        k = self.batches_per_gather(batch_size)
        group = b // k
        if group != self._group:
            self._gathered = None  # the last group goes before the next is gathered
            positions = order.indices(group * k * batch_size, (group + 1) * k * batch_size)
            at = _put(self.rows[positions].astype(np.int32).reshape(k, batch_size),
                      self.on_device.replicated)
            self._group, self._gathered = group, self.on_device.gather(self.columns, at)
        if len(self._indices) != k:  # put once: a step then sends nothing from the host
            self._indices = tuple(_put(np.asarray(i, np.int32), self.on_device.replicated)
                                  for i in range(k))
        return Packed(self._gathered, self._indices[b - group * k], self.fields)


def _gather_group(columns, rows):
    return {kind: column[rows] for kind, column in columns.items()}


def _put(array, sharding):
    """A host array every process holds whole, as a global jax.Array of `sharding` (a
    device_put that also holds where the mesh spans several processes)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
