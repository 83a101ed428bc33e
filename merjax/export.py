"""Inference artifacts of a trained state, for serving and for code submissions.

<dir>/predict.jax      jax.export of the task's predict(params, inputs), unsharded (portable to any
                       device count) with a symbolic batch dimension `b`, lowered for CPU and CUDA
<dir>/params/          the parameters only (no optimizer state), an orbax checkpoint of a plain
                       nested dict of arrays (checkpoint.save_params / load_params)
<dir>/signature.json   inputs (name, shape with "b", dtype), output, task facts (e.g. the MER-PS
                       label prior, the MER-Cross label names), step and release

Loading needs jax and orbax only, no flax and no merjax model code:
    exported = jax.export.deserialize(open("predict.jax", "rb").read())
    outputs = exported.call(checkpoint.load_params(".../params"), inputs)
"""
import json
import os

import jax
import numpy as np

from merjax import checkpoint

PLATFORMS = ("cpu", "cuda")


def export(directory, *, task, graphdef, state, example, input_names, meta):
    """Writes the three artifacts for `state` (model + optimizer) into `directory`. Every
    process calls it; with several, the state is gathered and process 0 writes.

    `example` is one transformed example; its `input_names` fields, with a leading symbolic
    batch dim, become the exported signature.
    """
    # Here, not at the top: `load` needs jax, numpy and orbax only (flax need not be installed).
    from absl import logging
    from flax import nnx
    os.makedirs(directory, exist_ok=True)
    model, _ = nnx.merge(graphdef, state)
    model_graphdef, model_state = nnx.split(model)
    pure = _to_host(nnx.to_pure_dict(model_state))
    params = _string_keys(pure)  # nnx.List gives int keys; serialized pytrees need strings
    # Every process takes part in orbax's save (it writes host arrays from process 0 only);
    # the other files are process 0's.
    checkpoint.save_params(os.path.join(directory, "params"), params)
    if jax.process_index() != 0:
        return directory

    def predict(params, inputs):
        # A fresh copy of the template per trace; its leaves are replaced by the arguments.
        filled = jax.tree.map(lambda x: x, model_state)
        nnx.replace_by_pure_dict(filled, _keys_like(params, pure))
        return task.predict(nnx.merge(model_graphdef, filled), inputs)

    (batch,) = jax.export.symbolic_shape("b")
    inputs = {k: jax.ShapeDtypeStruct((batch,) + np.shape(example[k]), np.asarray(example[k]).dtype)
              for k in input_names}
    params_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    exported = jax.export.export(jax.jit(predict), platforms=PLATFORMS)(params_spec, inputs)
    with open(os.path.join(directory, "predict.jax"), "wb") as f:
        f.write(exported.serialize())
    (out,) = exported.out_avals
    signature = dict(
        meta,
        inputs={k: dict(shape=["b", *v.shape[1:]], dtype=str(v.dtype)) for k, v in inputs.items()},
        output=dict(shape=["b", *[int(d) for d in out.shape[1:]]], dtype=str(out.dtype)),
        platforms=list(PLATFORMS), files=["predict.jax", "params", "signature.json"])
    with open(os.path.join(directory, "signature.json"), "w") as f:
        json.dump(signature, f, indent=1, sort_keys=True)
    logging.info("exported %s step %s to %s", meta.get("task"), meta.get("step"), directory)
    return directory


def _to_host(tree):
    """Numpy copies of a state's arrays. With several processes the arrays are gathered first:
    a shard that only another process holds cannot be read here otherwise."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _string_keys(tree):
    return {str(k): _string_keys(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _keys_like(tree, like):
    """Undoes _string_keys, taking the key types from `like`."""
    return {k: _keys_like(tree[str(k)], v) if isinstance(v, dict) else tree[str(k)]
            for k, v in like.items()}


def load(directory):
    """(exported function, params, signature) from an export directory."""
    with open(os.path.join(directory, "predict.jax"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with open(os.path.join(directory, "signature.json")) as f:
        signature = json.load(f)
    return exported, checkpoint.load_params(os.path.join(directory, "params")), signature
