"""Training batches gathered on the accelerators, from a copy of a cached split in their memory.

For a small model on a GPU the host's share of a step (a numpy gather per field, then the
batch's transfer) can take as long as the step itself: on an H200 the host pipeline delivered
only 2.7-4.3x what the small default configs' steps consume. A split the run's TransformCache
holds is copied once to every device of the mesh; batches are then jitted gathers there, whose
outputs already have the batch sharding the train step takes, and only the batches' row indices
cross from the host. Every process gathers the same global batch from the same global order
(pipeline.EpochOrder), so it is the batch the processes' host rows side by side would make.
"""
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


# Consecutive batches gathered together hold at most this many bytes (the global batches'
# sum), so a large batch is gathered alone rather than many at a time.
GATHER_BYTES = 256 << 20


class OnDevice:
    """Copies cached splits to the devices for training batches: `budget` bytes per device
    (device_budget), `replicated` the sharding of the copy (each device holds all of it, as any
    batch may need any row), `batch` the sharding of the batches gathered from it, and
    `batches_per_gather` the consecutive batches one gather makes (at most GATHER_BYTES)."""

    def __init__(self, budget, replicated, batch, batches_per_gather):
        if int(batches_per_gather) != batches_per_gather or batches_per_gather < 1:
            raise ValueError(f"config.pipeline.device_gather_batches must be a whole number "
                             f">= 1; found {batches_per_gather!r}")
        self.budget, self.replicated, self.batch = int(budget), replicated, batch
        self.batches_per_gather = int(batches_per_gather)
        # {field: [N, ...]} on every device, [k, B] global row indices -> k batches, each
        # batch-sharded (k from the indices' shape: one compile per k).
        self.gather = jax.jit(_gather_batches, out_shardings=batch)

    def hold(self, cached, what):
        """A `DeviceSplit` of `cached` (a pipeline.Cached view of a split's arrays), or None
        where its split is over the budget; `what` names it in the log."""
        size = sum(column.nbytes for column in cached.arrays.values())
        if size > self.budget:
            logging.info("%s: training batches gathered on the host (its %.2f GB are over "
                         "config.pipeline.device_cache_bytes, %.2f GB a device here)", what,
                         size / 1e9, self.budget / 1e9)
            return None
        arrays = {name: _put(column, self.replicated) for name, column in cached.arrays.items()}
        logging.info("%s: training batches gathered on the devices, from a copy of %.2f GB on "
                     "each (config.pipeline.device_cache_bytes)", what, size / 1e9)
        return DeviceSplit(self, arrays, cached.rows)


class DeviceSplit:
    """A split's transformed arrays on every device, and the rows of it a source reads. The copy
    is made after the cache transformed those rows (TransformCache.get); rows no reader had
    asked for are copied unset, and this source never gathers them.

    `batch(b, ...)` returns training batch b from the gather of its group of consecutive
    batches, which it keeps until a batch of another group is asked for: a batch depends only
    on b, so a restored iterator makes the same ones."""

    def __init__(self, on_device, arrays, rows):
        self.on_device, self.arrays, self.rows = on_device, arrays, rows
        self.row_bytes = sum(column.nbytes // max(1, len(column)) for column in arrays.values())
        self._group, self._batches = None, ()

    def batches_per_gather(self, batch_size):
        """Consecutive batches of `batch_size` one gather makes (OnDevice, GATHER_BYTES)."""
        fit = GATHER_BYTES // max(1, self.row_bytes * batch_size)
        return max(1, min(self.on_device.batches_per_gather, fit))

    def batch(self, b, order, batch_size):
        """{field: a global jax.Array with the batch sharding}: global batch b of `order` (a
        pipeline.EpochOrder over this source), the same on every process."""
        k = self.batches_per_gather(batch_size)
        group = b // k
        if group != self._group:
            self._batches = ()  # the last group's batches go before the next is gathered
            positions = order.indices(group * k * batch_size, (group + 1) * k * batch_size)
            at = _put(self.rows[positions].astype(np.int32).reshape(k, batch_size),
                      self.on_device.replicated)
            self._group, self._batches = group, self.on_device.gather(self.arrays, at)
        return self._batches[b - group * k]


def _gather_batches(arrays, rows):
    return tuple({name: column[r] for name, column in arrays.items()} for r in rows)


def _put(array, sharding):
    """A host array every process holds whole, as a global jax.Array of `sharding` (a
    device_put that also holds where the mesh spans several processes)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
