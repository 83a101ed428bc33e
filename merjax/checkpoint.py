"""Checkpoints: the only module that imports orbax.

A training checkpoint at <workdir>/checkpoints/<step>/ holds the model and optimizer state (one
nnx.State, each process writing its shards), the grain iterator position of every process, and a
small JSON of run facts. Restores always pass an abstract target carrying the shardings wanted
now, so a checkpoint written on one mesh restores onto another.
"""
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:

    def __init__(self, workdir, *, keep=2, async_save=True, subdir="checkpoints"):
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        # Several processes meet at barriers named by step; two managers saving the same step
        # at once (the latest and the best checkpoint) need names of their own.
        processes = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=subdir)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                multiprocessing_options=processes))

    def latest_step(self):
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step, state, data_iterator, meta):
        import grain  # here, not at the top: load_params (an export's loader) must not need grain
        args = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(self, step, abstract_state, data_iterator=None):
        """Returns (state, meta); restores `data_iterator` in place when given."""
        import grain  # here, not at the top: load_params (an export's loader) must not need grain
        args = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"], restored["meta"]

    def meta(self, step):
        """The JSON saved with `step`, without touching the arrays."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(state, shardings):
    """ShapeDtypeStructs carrying the target shardings: orbax's restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


def save_params(directory, params):
    """A params-only checkpoint: a nested dict of host arrays, readable without model code."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(directory), params, force=True)


def load_params(directory):
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(directory))
