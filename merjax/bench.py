"""Throughput benchmark: python -m merjax.bench --config=configs/ps.py [--synthetic] [--steps=50]

Prints one JSON line, alone on stdout (logs go to stderr; it pipes into `jq`): the model's
parameter count, train steps/s and samples/s at the config's global batch and input shapes (one
fixed batch, so only the compiled step is timed), the compiled step's costs as the train loop
writes them (merjax/costs.py: flops_per_step, matmul_flops_per_step, bytes_accessed_per_step,
peak_memory_bytes_per_device, param_bytes, optimizer_bytes, peak_flops_per_s and peak_source)
with the MFU they give, and the input pipeline's samples/s on its own. With --synthetic no
dataset is built: random inputs of the dataset's feature shapes are used (variable-length dims
take --length), e.g. the MER-Cross baseline shapes with `--config=configs/cross.py:bench
--synthetic`. Shapes and device are printed with the numbers so other stacks can be compared on
the same work. Nothing here asserts a speed.
"""
import contextlib
import json
import sys
import time

import jax
import numpy as np
from absl import flags

from merjax import cli, costs, sharding, tasks, train
from merjax import main as train_command  # the same --config flag as training
from merjax.data import pipeline, prepare

_STEPS = flags.DEFINE_integer("steps", 50, "Timed train steps (after one warm-up step).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 50, "Timed input-pipeline batches.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Random inputs of the dataset's shapes.")
_LENGTH = flags.DEFINE_integer("length", 32, "Length of variable-length dims with --synthetic.")


def synthetic_examples(features, n, length, seed=0):
    """n random examples matching a TFDS FeaturesDict (None dims -> `length`)."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        ex = {}
        for name, feature in features.items():
            shape = tuple(length if d is None else d for d in feature.shape)
            dtype = np.dtype(feature.np_dtype) if hasattr(feature, "np_dtype") else None
            if dtype is None or dtype.kind in "OSU":  # Text
                ex[name] = f"synthetic_{i:06d}".encode()
            elif dtype == bool:
                ex[name] = np.ones(shape, bool)
            elif dtype.kind in "iu":
                ex[name] = rng.integers(0, 6 if dtype.kind == "i" else 256, shape).astype(dtype)
            elif name in ("label", "prior"):  # MER-PS targets and priors live on [1, 255]
                ex[name] = rng.uniform(1, 255, shape).astype(dtype)
            else:
                ex[name] = rng.normal(size=shape).astype(dtype)
        examples.append(ex)
    return examples


def main(argv):
    del argv  # cli.run refuses stray arguments
    config = train_command.CONFIG.value
    task = tasks.load(config.task)
    mesh = sharding.make_mesh(config.mesh)
    if _SYNTHETIC.value:
        data = prepare.describe(config, task)
        train_source = synthetic_examples(data.info.features, config.batch_size, _LENGTH.value)
    else:
        # stdout carries the JSON line alone: whatever a first dataset build prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            data = prepare.prepare(config, task, announce=False)
        train_source = task.folds(config, data)[0].train
    model_state = train.ModelState(config, mesh, task, data,
                                   task.input_stats(train_source, config))
    state = model_state.init()
    # A measured peak (CPU) is taken now: not in the timed compile, and before the input
    # pipeline's prefetch threads compete with it for the cores.
    costs.peak_flops(config.model.get("dtype", "float32"), mesh.size)

    it = pipeline.train_iterator(train_source, task.make_transform(config, data),
                                 global_batch_size=config.batch_size, seed=config.seed)
    start = time.perf_counter()
    for _ in range(_PIPELINE_BATCHES.value):
        local = next(it)
    pipeline_s = time.perf_counter() - start

    batch = sharding.to_global(local, mesh, config)
    start = time.perf_counter()
    compiled = model_state.compiled_train_step(state, batch)
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / _STEPS.value

    report = dict(
        task=config.task, device=jax.devices()[0].device_kind, devices=jax.device_count(),
        mesh=dict(mesh.shape), params=model_state.num_params, global_batch=config.batch_size,
        input_shapes={k: list(v.shape[1:]) for k, v in local.items()},
        compile_s=round(compile_s, 2), train_steps_per_s=round(1 / step_s, 2),
        train_samples_per_s=round(config.batch_size / step_s, 1),
        pipeline_samples_per_s=round(_PIPELINE_BATCHES.value * config.batch_size / pipeline_s, 1),
        data=data.release, **compiled.cost,
        mfu=costs.mfu(compiled.cost["flops_per_step"], 1 / step_s,
                      compiled.cost["peak_flops_per_s"]))
    print(json.dumps(report))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
