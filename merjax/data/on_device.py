"""Training batches gathered on the accelerators, from a copy of a cached split in their memory.

For a small model on a GPU the host's share of a step (a numpy gather per field, then the
batch's transfer) can take as long as the step itself: on an H200 the host pipeline delivered
only 2.7-4.3x what the small default configs' steps consume. A split the run's TransformCache
holds is copied once to every device of the mesh; a batch is then one jitted gather there, whose
output already has the batch sharding the train step takes, and only the batch's row indices
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
    return OnDevice(budget, sharding.replicated(mesh), sharding.batch_sharding(mesh, config))


class OnDevice:
    """Copies cached splits to the devices for training batches: `budget` bytes per device
    (device_budget), `replicated` the sharding of the copy (each device holds all of it, as any
    batch may need any row) and `batch` the sharding of the batches gathered from it."""

    def __init__(self, budget, replicated, batch):
        self.budget, self.replicated, self.batch = int(budget), replicated, batch
        # {field: [N, ...]} on every device, global row indices -> the batch, batch-sharded.
        self.gather = jax.jit(_gather, out_shardings=batch)

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
    asked for are copied unset, and this source never gathers them."""

    def __init__(self, on_device, arrays, rows):
        self.on_device, self.arrays, self.rows = on_device, arrays, rows

    def take(self, positions):
        """{field: a global jax.Array with the batch sharding}: the source's examples at
        `positions`, the same on every process (the global batch's)."""
        at = _put(self.rows[positions].astype(np.int32), self.on_device.replicated)
        return self.on_device.gather(self.arrays, at)


def _gather(arrays, rows):
    return {name: column[rows] for name, column in arrays.items()}


def _put(array, sharding):
    """A host array every process holds whole, as a global jax.Array of `sharding` (a
    device_put that also holds where the mesh spans several processes)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
