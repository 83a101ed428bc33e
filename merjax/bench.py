"""Throughput benchmark: python -m merjax.bench --config=configs/ps.py [--synthetic] [--steps=50]

Prints one JSON line, alone on stdout (logs go to stderr; it pipes into `jq`): the model's
parameter count, train steps/s and samples/s at the config's global batch and input shapes (one
fixed batch, so only the compiled step is timed; the median of --repeats clean windows of
--steps steps, with their range: on a shared host one window can be 20% off another, so each
window waits for a quiet moment and counts only if other processes used under --max_foreign of
the cores during it, as ../shared/peer_bench times PyTorch (merjax/contention.py);
`train_foreign_cpu` gives every window's share and `train_contended` says when too few were
clean and all were used), the
compiled step's costs as the train loop writes them (merjax/costs.py: flops_per_step,
matmul_flops_per_step, bytes_accessed_per_step, peak_memory_bytes_per_device, param_bytes,
optimizer_bytes, peak_flops_per_s and peak_source) with the MFU they give (a measured peak,
on CPU, is taken again before each timed window and is the best of those: every one is listed
in `peak_flops_per_s_measured`), and the input
pipeline's samples/s on its own and as a multiple of what training consumes
(`pipeline_over_train`), after its set-up (`pipeline_setup_s`: the one pass that caches a split
fitting config.pipeline.cache_bytes, then its first batch), and whether it gathered them on the
devices as training does (`pipeline_on_device`: config.pipeline.device_cache_bytes). With
--matmuls_alone (default) the step's matmuls are also timed each alone at its shapes
(costs.matmuls_alone): `matmuls_alone_ms_per_step`, and `matmul_ceiling_mfu`, the MFU the step
would reach if all its other work took no time; which shapes set that ceiling prints as a table
on stderr, and the JSON's `matmuls_alone` lists the first --profile_top of them ({op,
executions, ms_per_step, share, gflop_per_s}, the costliest first). Steps are
timed once their rate has settled (`settle_s`: a fresh process runs its first seconds of steps
slower). With --synthetic no dataset is built: random inputs of the dataset's feature shapes
are used (variable-length dims take --length), e.g. the MER-Cross baseline shapes with
`--config=configs/cross.py:bench --synthetic`. Shapes and device are printed with the numbers
so other stacks can be compared on the same work, and `host_hugepages` says whether the process
asked glibc for huge pages (merjax/hugepages.py; the raw MER-Cross step on the 2-core CPU ran
1.0-1.3x faster with them). Nothing here asserts a speed.

With --profile=<dir>, --profile_steps more steps run under jax.profiler after the timed ones:
the trace goes to <dir>/plugins/profile/<run>/ (`tensorboard --logdir <dir>`, Profile tab, with
the profile plugin installed; or its perfetto_trace.json.gz at ui.perfetto.dev), the costliest
ops per step are printed as a table on stderr, and the JSON line gets `profile` (the first
--profile_top ops as {op, ms_per_step, share}, merjax/profiling.py) and `profile_dir` (the run
folder), e.g. `python -m merjax.bench ... --profile=/tmp/prof | jq '.profile[:5]'`.
"""
import contextlib
import json
import sys
import time

import jax
import numpy as np
from absl import flags, logging

from merjax import cli, contention, costs, hugepages, profiling, sharding, tasks, train
from merjax import main as train_command  # the same --config flag as training
from merjax.data import on_device, pipeline, prepare

_STEPS = flags.DEFINE_integer("steps", 50, "Train steps in each timed window.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Clean timed windows of --steps steps (see "
                                "--max_foreign): the report gives their median rate and range.")
_MAX_FOREIGN = flags.DEFINE_float("max_foreign", 0.05, "A timed window is clean when other "
                                  "processes used less than this share of all cores during it.")
_QUIET_WAIT_S = flags.DEFINE_float("quiet_wait_s", 30.0, "Before each timed window, wait up to "
                                   "this long for other processes to go quiet (0: never wait).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 50, "Timed input-pipeline batches.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Random inputs of the dataset's shapes.")
_LENGTH = flags.DEFINE_integer("length", 32, "Length of variable-length dims with --synthetic.")
_PROFILE = flags.DEFINE_string("profile", "", "Folder for a jax.profiler trace of "
                               "--profile_steps steps and their per-op breakdown ('': none).")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 5, "Train steps traced with --profile.")
_MATMULS_ALONE = flags.DEFINE_bool(
    "matmuls_alone", True, "Time the step's matmuls each alone at their shapes and report the "
    "MFU they allow (matmul_ceiling_mfu).")
_PROFILE_TOP = flags.DEFINE_integer("profile_top", 20, "Ops listed in the JSON's `profile` "
                                    "and `matmuls_alone`.")


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


# The synthetic split's length: a real MER-Cross fold's train split (9,395 clips, 5 folds), so
# the pipeline caches or streams it as it would the real one (config.pipeline.cache_bytes).
SYNTHETIC_RECORDS = 7_516


class Repeated:
    """A random-access source of `length` records cycling through `examples` (no copies)."""

    def __init__(self, examples, length):
        self.examples, self.length = examples, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.examples[i % len(self.examples)]


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
    dtype = config.model.get("dtype", "float32")
    remeasure = costs.peak_flops(dtype, mesh.size)[1].startswith(costs.MEASURED)

    source = Repeated(train_source, SYNTHETIC_RECORDS) if _SYNTHETIC.value else train_source
    start = time.perf_counter()
    devices = on_device.for_run(config, mesh)
    it = pipeline.train_iterator(source, task.make_transform(config, data),
                                 global_batch_size=config.batch_size, seed=config.seed,
                                 cache_bytes=config.pipeline.cache_bytes,
                                 read_threads=config.pipeline.read_threads,
                                 prefetch_batches=config.pipeline.prefetch_batches,
                                 on_device=devices)
    local = jax.block_until_ready(next(it))
    setup_s = time.perf_counter() - start  # the cache's one pass over the split, if it fits
    start = time.perf_counter()
    for _ in range(_PIPELINE_BATCHES.value):
        local = next(it)
    jax.block_until_ready(local)  # batches gathered on the devices are dispatched, not done
    pipeline_s = time.perf_counter() - start

    batch = sharding.to_global(local, mesh, config)
    start = time.perf_counter()
    compiled = model_state.compiled_train_step(state, batch)
    compile_s = time.perf_counter() - start
    del it  # its prefetch threads would compete with the timed steps for the cores
    start = time.perf_counter()
    # The state's leaves, as the train loop holds them between steps.
    leaves = settle(compiled, compiled.flatten(state), batch)
    settle_s = time.perf_counter() - start
    # ../shared/peer_bench's protocol: windows until --repeats are clean (others used under
    # --max_foreign of the cores) or 3x as many ran; the median of the clean ones (of all,
    # reported as contended, where fewer were clean).
    repeats, rates, foreign, waited = max(1, _REPEATS.value), [], [], 0.0
    while sum(map(clean, foreign)) < repeats and len(rates) < 3 * repeats:
        waited += contention.wait_for_quiet(_MAX_FOREIGN.value, _QUIET_WAIT_S.value)
        if remeasure:  # the peak is the best of these (costs.measured_matmul_flops)
            costs.measure_matmul_flops()
        leaves, seconds, share = timed_steps(compiled, leaves, batch, _STEPS.value)
        rates.append(1 / seconds)
        foreign.append(share)
    used = [r for r, f in zip(rates, foreign) if clean(f)]
    contended = len(used) < repeats
    used = rates if contended else used
    step_s = 1 / float(np.median(used))
    profile = {}
    if _PROFILE.value:
        profile = profiled_steps(model_state, compiled, compiled.unflatten(leaves), batch)

    cost = {k: v for k, v in compiled.cost.items() if not k.startswith("mesh_")}  # as `mesh`
    # The compiled step's cost holds the peak known when it compiled; a measured one may have
    # risen since.
    cost["peak_flops_per_s"], _ = costs.peak_flops(dtype, mesh.size)
    peaks = dict(peak_flops_per_s_measured=[
        float(f"{r:.4g}") for r in costs.matmul_flops_measured()]) if remeasure else {}
    ceiling = {}
    if _MATMULS_ALONE.value:
        try:
            matmuls = costs.matmuls_alone(compiled.jaxpr)
        except jax.errors.JaxRuntimeError as error:
            # The step's matmuls run alone at global shapes on one device: a model sharded
            # over many may not fit there. The timings above stand; the ceiling is unknown.
            logging.warning("matmuls alone not measured (%s): matmul_ceiling_mfu is null; "
                            "--nomatmuls_alone skips this", str(error).splitlines()[0])
            matmuls = None
        alone_ms = None if matmuls is None else sum(m["ms_per_step"] for m in matmuls)
        if matmuls:
            columns = (("executions", "calls", "d"), ("gflop_per_s", "GFLOP/s", ".1f"))
            print(f"the step's matmuls, each alone at its shapes:\n"
                  f"{profiling.table(matmuls, columns=columns)}", file=sys.stderr, flush=True)
        one_device_peak, _ = costs.peak_flops(dtype, 1)
        ceiling = dict(
            matmuls_alone_ms_per_step=None if alone_ms is None else round(alone_ms, 2),
            matmul_ceiling_mfu=costs.mfu(cost["matmul_flops_per_step"],
                                         1e3 / alone_ms if alone_ms else None, one_device_peak),
            matmuls_alone=None if matmuls is None else matmuls[:_PROFILE_TOP.value])
    pipeline_rate = _PIPELINE_BATCHES.value * config.batch_size / pipeline_s
    report = dict(
        task=config.task, device=jax.devices()[0].device_kind, devices=jax.device_count(),
        host_hugepages=hugepages.active(),
        mesh=dict(mesh.shape), global_batch=config.batch_size,
        input_shapes={k: list(v.shape[1:]) for k, v in on_device.unpack(local).items()},
        compile_s=round(compile_s, 2), settle_s=round(settle_s, 2),
        train_steps_per_s=round(1 / step_s, 2),
        train_steps_per_s_range=[round(min(used), 2), round(max(used), 2)],
        # Each timed window's share of the cores other processes used (null: not measurable).
        train_foreign_cpu=[None if f is None else round(f, 3) for f in foreign],
        train_contended=contended, quiet_wait_s=round(waited, 1),
        train_samples_per_s=round(config.batch_size / step_s, 1),
        pipeline_setup_s=round(setup_s, 2), pipeline_records=len(source),
        pipeline_on_device=isinstance(local, on_device.Packed),
        pipeline_samples_per_s=round(pipeline_rate, 1),
        # The input pipeline's headroom: how many times what training consumes it delivers.
        pipeline_over_train=round(pipeline_rate * step_s / config.batch_size, 2),
        data=data.release, **cost,
        mfu=costs.mfu(cost["flops_per_step"], 1 / step_s, cost["peak_flops_per_s"]), **peaks,
        **ceiling, **profile)
    print(json.dumps(report))


def timed_steps(compiled, leaves, batch, steps):
    """(state leaves, seconds per step, the share of the cores other processes used meanwhile)
    over `steps` steps, waiting for the last one."""
    with contention.Window() as window:
        for _ in range(steps):
            leaves, metrics = compiled.leaves(leaves, batch)
        jax.block_until_ready(metrics)
    return leaves, window.seconds / steps, window.foreign


def clean(foreign):
    """Whether a window whose foreign share was `foreign` counts (unknown: it does)."""
    return foreign is None or foreign < _MAX_FOREIGN.value


def settle(compiled, leaves, batch, chunk_s=0.5, agree=0.1, max_s=15.0):
    """Steps until two chunks of about `chunk_s` seconds run within `agree` of each other's rate
    (at most `max_s`); returns the state's leaves. Why: in a fresh process the first steps after
    compiling ran 5-10x slower for a few seconds (the set-up's background threads still hold the
    cores; measured on the MERTools baseline: 19-51 steps/s for ~150 steps, then 370-450), so a
    fixed warm-up timed the start-up instead of the step."""
    leaves, first, _ = timed_steps(compiled, leaves, batch, 1)
    steps = max(1, int(chunk_s / max(first, 1e-6)))
    start, previous = time.perf_counter(), None
    while time.perf_counter() - start < max_s:
        leaves, seconds, _ = timed_steps(compiled, leaves, batch, steps)
        if previous is not None and abs(seconds - previous) <= agree * previous:
            break
        previous = seconds
    return leaves


# XLA:GPU replays most of a step as CUDA graphs ("command buffers"), which a trace shows as one
# op (measured on an H200: `command_buffer_1` 100% of the raw MER-Cross step). The profiled
# steps are compiled without them, so the table names the fusions: the same kernels, each
# launched on its own (the timed steps above keep them).
GPU_PROFILE_OPTIONS = {"xla_gpu_enable_command_buffer": ""}


def profiled_steps(model_state, compiled, state, batch):
    """--profile: traces --profile_steps more steps, logs the per-op table and returns the
    report's `profile` (top ops) and `profile_dir` (the trace's run folder)."""
    if jax.default_backend() == "gpu":
        compiled = model_state.compiled_train_step(state, batch, GPU_PROFILE_OPTIONS)
        state, _ = compiled(state, batch)  # compiled, and its first run, outside the trace
    holder = {"leaves": compiled.flatten(state)}

    def step():
        holder["leaves"], metrics = compiled.leaves(holder["leaves"], batch)
        return metrics

    run_dir = profiling.trace(_PROFILE.value, _PROFILE_STEPS.value, step)
    ops = profiling.op_times(run_dir, _PROFILE_STEPS.value)
    # stderr, not the log: the table is for reading, and stdout carries the JSON line alone.
    print(f"per-op time of {_PROFILE_STEPS.value} traced steps ({run_dir}):\n"
          f"{profiling.table(ops)}", file=sys.stderr, flush=True)
    return dict(profile=ops[:_PROFILE_TOP.value], profile_dir=run_dir)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run(main)
