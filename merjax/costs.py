"""What a run costs, measured: FLOPs and bytes per train step, memory per device, parameter and
optimizer bytes, the accelerator's peak FLOP/s and the model FLOPs utilisation (MFU).

`train_step_costs` reads a compiled train step once (train.ModelState keeps the result beside the
executable); the loop logs it (`describe`), writes it once to metrics.jsonl (`metrics`, keys
`cost/...`) and divides by it at each log flush (`mfu`). The benchmark reports the same numbers,
and a sweep's scale table (launch/scale.py) reads them back, with the parameter count and the
mesh the step was compiled for, which the same dict carries.

FLOPs and bytes accessed are XLA's own counts for the compiled program (`cost_analysis`), not a
hand-derived model formula: they include the backward pass and the optimizer update, and count
work every device repeats (a replicated update) once per device. An SPMD program's counts are
per device; they are summed over the program's devices here, so `flops_per_step` is the step's
total and MFU divides it by the peak of every device in the program.

XLA's GPU backend leaves the library calls that run the matmuls (cuBLAS, Triton gemm fusions) out
of its counts: on an H200 (jax 0.11.2) a jitted 8192^3 matmul reported -1 FLOPs and a 3.0 TFLOP
MLP train step 2 GFLOP (its elementwise work). So `flops_per_step` is the larger of XLA's count
and the matmul and convolution FLOPs of the traced step (`matmul_flops`, the same on every
backend; also written, as `matmul_flops_per_step`). Bytes accessed have no such floor: on GPU
they leave the library calls' traffic out.
"""
import functools
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from merjax import sharding

# Dense (no structured sparsity) peak FLOP/s per chip: (device_kind pattern, name, bf16, f32).
# Matched with re.search on jax.devices()[0].device_kind, first match wins; a kind matching none
# (and every CPU) uses a measured matmul instead (`measured_matmul_flops`).
# The f32 column is what an f32 matmul runs at under jax's default matmul precision: on NVIDIA
# GPUs that is TF32 on the tensor cores (an f32 8192^3 matmul ran at 355 TFLOP/s on an H200,
# 5.3x the 67 TFLOPS FP32 figure), on TPUs one bf16 pass on the MXU. A run that sets
# jax_default_matmul_precision="highest" gets less than this column (FP32 67 / 19.5 TFLOPS on
# the GPUs below), so its MFU reads low.
#   NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100), H100 SXM column:
#     BF16 Tensor Core 1,979 and TF32 Tensor Core 989 TFLOPS "with sparsity", so 989.5 and
#     494.5 dense (FP32 67). The PCIe and NVL cards are slower and not in this table (they fall
#     back to the measured matmul).
#   NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200), H200 SXM column:
#     the same BF16 1,979 and TF32 989 TFLOPS with sparsity, 989.5 and 494.5 dense (FP32 67).
#   NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100), SXM and PCIe alike:
#     BF16 Tensor Core 312 and TF32 Tensor Core 156 TFLOPS dense (624 / 312 with sparsity;
#     FP32 19.5).
#   Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e):
#     BF16 peak per chip v4 275, v5e 197, v5p 459, v6e 918 TFLOPS; Google publishes no FP32
#     figure.
PEAKS = (
    (r"H100(?!.*(PCIe|NVL))", "NVIDIA H100 SXM", 989.5e12, 494.5e12),
    (r"H200(?!.*NVL)", "NVIDIA H200 SXM", 989.5e12, 494.5e12),
    (r"A100", "NVIDIA A100", 312e12, 156e12),
    (r"^TPU v4$", "TPU v4", 275e12, 275e12),
    (r"^TPU v5( lite|e)$", "TPU v5e", 197e12, 197e12),
    (r"^TPU v5p?$", "TPU v5p", 459e12, 459e12),
    (r"^TPU v6( lite|e)$", "TPU v6e", 918e12, 918e12),
)
MEASURED = "measured f32 matmul"


def table_peak(device_kind, dtype="float32"):
    """(peak FLOP/s per chip, name) from PEAKS for `dtype` ("bfloat16" or else f32), or None."""
    for pattern, name, bf16, f32 in PEAKS:
        if re.search(pattern, device_kind, re.IGNORECASE):
            return (bf16, name) if _is_bf16(dtype) else (f32, name)
    return None


# FLOP/s of every measurement of the f32 matmul taken in this process, by size.
_MATMUL_RATES = {}


def measure_matmul_flops(n=2048, repeats=5):
    """Takes one measurement: FLOP/s of a jitted f32 [n, n] @ [n, n] on the first device, the
    best of `repeats` timed runs after a warm-up. `measured_matmul_flops` keeps the best."""
    x = jax.device_put(jnp.ones((n, n), jnp.float32), jax.devices()[0])
    matmul = jax.jit(jnp.matmul)
    matmul(x, x).block_until_ready()  # compile (once per process) and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x, x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    rate = 2 * n ** 3 / best
    _MATMUL_RATES.setdefault(n, []).append(rate)
    return rate


def measured_matmul_flops(n=2048):
    """The best FLOP/s of every `measure_matmul_flops(n)` taken in this process (one is taken
    when there is none).

    Measured rather than looked up because a CPU's (or an unknown accelerator's) peak depends
    on its cores, vector width and clocks, and XLA reaches only part of that in practice: the
    rate of a large matmul here is the ceiling this machine actually offers, so MFU reads as
    "the share of what a plain big matmul achieves on this host". On CPU every (fake) device
    shares the same cores, so this one device's rate is the whole host's. The best, because one
    measurement can land in a slow second of a shared host: on the 2-core CPU, measurements a
    run takes at its start (best of 5 runs, about a second) read 84-148 GFLOP/s in four
    processes, and 133-178 taken every few seconds in one; the benchmark measures again before
    each timed window (merjax/bench.py). On a GPU this size is too small to reach the peak (58
    TFLOP/s on an H200, whose f32 matmuls reach 355), so an unknown GPU's MFU reads high: add it
    to PEAKS.
    """
    if n not in _MATMUL_RATES:
        measure_matmul_flops(n)
    return max(_MATMUL_RATES[n])


def matmul_flops_measured(n=2048):
    """Every `measure_matmul_flops(n)` of this process, in the order taken (FLOP/s)."""
    return list(_MATMUL_RATES.get(n, ()))


def peak_flops(dtype="float32", num_devices=None, device_kind=None):
    """(peak FLOP/s of the program's devices together, where it comes from).

    Table devices: the spec-sheet peak for `dtype` per chip times `num_devices` (default: every
    device). CPU and unknown kinds: the measured f32 matmul, per process on CPU (its devices
    share the host's cores), else per device.
    """
    device_kind = jax.devices()[0].device_kind if device_kind is None else device_kind
    num_devices = jax.device_count() if num_devices is None else num_devices
    found = table_peak(device_kind, dtype)
    if found is not None:
        per_chip, name = found
        dtype_name = "bf16" if _is_bf16(dtype) else "f32"
        return per_chip * num_devices, f"{name} {dtype_name} spec x {num_devices}"
    copies = jax.process_count() if jax.devices()[0].platform == "cpu" else num_devices
    return measured_matmul_flops() * copies, MEASURED + (f" x {copies}" if copies > 1 else "")


def matmul_flops(jaxpr):
    """FLOPs of the dot_general and conv_general_dilated ops of a (closed) jaxpr, the whole
    program's (not one device's), nested jaxprs included (as `matmul_ops` counts them)."""
    return _total_flops(matmul_ops(jaxpr))


def matmul_ops(jaxpr):
    """[(eqn, executions)]: the dot_general and conv_general_dilated equations of a (closed)
    jaxpr, nested jaxprs included: a scan's body times its length, the costliest branch of a
    cond, a while loop's body once (its trip count is not known)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's Jaxpr
    ops = []
    for eqn in jaxpr.eqns:
        name, params = eqn.primitive.name, eqn.params
        if name in ("dot_general", "conv_general_dilated"):
            ops.append((eqn, 1))
        elif name == "cond":
            ops.extend(max((matmul_ops(branch) for branch in params["branches"]),
                           key=_total_flops))
        else:
            times = params["length"] if name == "scan" else 1
            ops.extend((e, n * times) for v in params.values() if _is_jaxpr(v)
                       for e, n in matmul_ops(v))
    return ops


def _total_flops(ops):
    return sum(_op_flops(eqn) * n for eqn, n in ops)


def _op_flops(eqn):
    out = eqn.outvars[0].aval
    if eqn.primitive.name == "dot_general":
        (contracting, _), _ = eqn.params["dimension_numbers"]
        return 2 * math.prod(out.shape) * math.prod(eqn.invars[0].aval.shape[d]
                                                    for d in contracting)
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial)
    return 2 * math.prod(out.shape) * math.prod(eqn.invars[1].aval.shape[d]
                                                for d in rhs_spec[1:])


def matmuls_alone(jaxpr, repeats=5, calls=10):
    """The program's matmuls (`matmul_ops`), each timed alone, jitted by itself on the first
    device at the program's (global) shapes: [{op, executions, ms_per_step, share,
    gflop_per_s}], the costliest first. `ms_per_step` is the median of `repeats` timings of
    `calls` calls, less the time a call of a jitted scalar add takes (the dispatch; ~8 us on the
    2-core CPU), times the op's executions per call of the program; `share` is of all of them;
    identical ops are timed once. `op` names the operands and dimensions (`describe_matmul`).

    Why: a step's matmuls at its own shapes may run far below the big square matmul the peak
    is measured with (on the 2-core CPU the raw MER-Cross attention's [274, 16] x [16, 274]
    products ran at a third of it, and MER-PS's attention gradients contracting 12 tokens at
    2-3 GFLOP/s), so `flops / total time / peak` is about the MFU the step would reach if
    everything else in it took no time: the ceiling its shapes set on this backend, and the
    rows say which shapes set it. It is approximate: inside the step a matmul may find its
    inputs in cache, or fused with its neighbours. On an accelerator a small op's time alone is
    mostly its launch."""
    device = jax.devices()[0]

    def per_call(fn, *args):
        jax.block_until_ready(fn(*args))  # compile and warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(*args)
            jax.block_until_ready(out)
            times.append((time.perf_counter() - start) / calls)
        return float(np.median(times))

    groups = {}
    for eqn, n in matmul_ops(jaxpr):
        key = (eqn.primitive.name, tuple((v.aval.shape, str(v.aval.dtype)) for v in eqn.invars),
               repr(sorted(eqn.params.items())))
        groups.setdefault(key, [eqn, 0])[1] += n
    dispatch = per_call(jax.jit(lambda x: x + 1), jax.device_put(jnp.ones((1,)), device))
    rows = []
    for eqn, n in groups.values():
        args = [jax.device_put(jnp.ones(v.aval.shape, v.aval.dtype), device) for v in eqn.invars]
        op = jax.jit(functools.partial(eqn.primitive.bind, **eqn.params))
        seconds = max(per_call(op, *args) - dispatch, 0.0) * n
        flops = _op_flops(eqn) * n
        rows.append(dict(op=describe_matmul(eqn), executions=n, ms_per_step=seconds * 1e3,
                         gflop_per_s=flops / seconds / 1e9 if seconds else None))
    total = sum(r["ms_per_step"] for r in rows)
    for row in rows:
        row["share"] = row["ms_per_step"] / total if total else 0.0
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def describe_matmul(eqn):
    """A matmul equation in a line: its operands, and for a dot_general the contracted and the
    batch dimensions of each, lhs; rhs (`f32[64,12,16] . f32[64,12,12] contract (1; 1) batch
    (0; 0)`), for a convolution its strides and feature groups."""
    lhs, rhs = (v.aval.str_short(short_dtypes=True) for v in eqn.invars)
    if eqn.primitive.name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        text = f"{lhs} . {rhs} contract ({_dims(lc)}; {_dims(rc)})"
        return text + (f" batch ({_dims(lb)}; {_dims(rb)})" if lb else "")
    return (f"conv {lhs} * {rhs} strides {_dims(eqn.params['window_strides'])} "
            f"groups {eqn.params['feature_group_count']}")


def _dims(dims):
    return ",".join(map(str, dims))


def _is_jaxpr(value):
    return hasattr(getattr(value, "jaxpr", value), "eqns")


def compiled_costs(compiled, num_devices=1, jaxpr=None):
    """FLOPs and bytes accessed per call of a compiled program, summed over its `num_devices`
    (XLA counts one device's share of an SPMD program), and its peak memory per device. With
    the program's `jaxpr`, FLOPs are at least its matmuls' (`matmul_flops`).

    `cost_analysis()` is a dict in jax 0.10 (a list of dicts, one per computation, in older
    releases: those are summed); a count the backend does not give (or gives as negative, XLA's
    "unknown") is None.
    """
    try:
        analysis = compiled.cost_analysis()
    except (NotImplementedError, RuntimeError):  # a backend without one (XlaRuntimeError)
        analysis = None
    parts = analysis if isinstance(analysis, (list, tuple)) else [analysis]
    parts = [p for p in parts if p]

    def total(key):
        values = [float(p[key]) for p in parts if key in p]
        return sum(values) * num_devices if values and min(values) >= 0 else None

    matmuls = None if jaxpr is None else float(matmul_flops(jaxpr))
    flops = max((f for f in (total("flops"), matmuls) if f is not None), default=None)
    memory = sharding.memory_summary(compiled)
    return dict(flops_per_step=flops, matmul_flops_per_step=matmuls,
                bytes_accessed_per_step=total("bytes accessed"),
                peak_memory_bytes_per_device=None if memory is None else memory["peak"])


def state_sizes(state):
    """(parameter count, parameter bytes, optimizer-state bytes) of a (model, optimizer)
    nnx.State, abstract or not: the model's nnx.Param leaves, and every leaf of the optimizer
    (moments, step counts). Whole arrays, however they are sharded."""
    count = params = optimizer = 0
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if hasattr(var, "get_value") else var
        size = int(np.prod(value.shape))
        if path[0] == 0 and isinstance(var, nnx.Param):
            count += size
            params += size * np.dtype(value.dtype).itemsize
        elif path[0] == 1:
            optimizer += size * np.dtype(value.dtype).itemsize
    return count, params, optimizer


def train_step_costs(compiled, jaxpr, state, mesh, dtype="float32"):
    """Everything `metrics` writes for a compiled train step (traced as `jaxpr`) over `state`
    (model, optimizer) on the devices of `mesh`, with `peak_source` saying where the peak comes
    from. `params` (the parameter count) and `mesh_<axis>` (the mesh's axis sizes) are written
    beside the costs so a sweep's table (launch/scale.py) finds a point's size and layout in
    its metrics.jsonl alone."""
    count, params, optimizer = state_sizes(state)
    peak, source = peak_flops(dtype, mesh.size)
    axes = {f"mesh_{axis}": int(size) for axis, size in mesh.shape.items()}
    return dict(compiled_costs(compiled, mesh.size, jaxpr), params=count, param_bytes=params,
                optimizer_bytes=optimizer, peak_flops_per_s=peak, peak_source=source, **axes)


def mfu(flops_per_step, steps_per_s, peak_flops_per_s):
    """Model FLOPs utilisation: FLOPs/step x steps/s / peak FLOP/s (None if a term is unknown)."""
    if not flops_per_step or not peak_flops_per_s or steps_per_s is None:
        return None
    return flops_per_step * steps_per_s / peak_flops_per_s


def metrics(cost):
    """The `cost/<name>` scalars of a `train_step_costs` dict (unknown ones left out)."""
    return {f"cost/{k}": float(v) for k, v in cost.items()
            if v is not None and not isinstance(v, str)}


def describe(cost):
    """One line: "0.64 GFLOP/step, 2.1 GB accessed, peak 17 MB/device, params 0.85 MB,
    optimizer 1.7 MB; peak 115 GFLOP/s (measured f32 matmul)"."""
    def amount(key, unit):
        value = cost.get(key)
        return "n/a " + unit if value is None else si(value, unit)

    return (f"{amount('flops_per_step', 'FLOP')}/step, "
            f"{amount('bytes_accessed_per_step', 'B')} accessed, "
            f"peak {amount('peak_memory_bytes_per_device', 'B')}/device, "
            f"params {amount('param_bytes', 'B')}, optimizer {amount('optimizer_bytes', 'B')}; "
            f"peak {amount('peak_flops_per_s', 'FLOP/s')} ({cost.get('peak_source', '?')})")


def si(value, unit):
    """2.1e9, "B" -> "2.1 GB": decimal prefixes, three significant digits."""
    scale, prefix = next(((s, p) for s, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                                              (1e3, "k")) if abs(value) >= s), (1, ""))
    text = f"{value / scale:.3g}"
    return f"{value / scale:.0f} {prefix}{unit}" if "e" in text else f"{text} {prefix}{unit}"


def _is_bf16(dtype):
    return jnp.dtype(dtype) == jnp.bfloat16
