"""The mesh, the logical-axis rules and every NamedSharding the loop needs, in one place.

Weights carry logical axis names (`embed`, `mlp`, `heads`, ...) given in models/layers.py;
`config.sharding.rules` maps those names to the mesh axes `(data, fsdp, model)`. Batches shard
their leading dim over the `batch` rule. Nothing else in the code names a mesh axis.
"""
import contextlib
import math
import os

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")


def mesh_shape(mesh_config, num_devices):
    """Resolves the config's axis sizes; one -1 takes the remaining devices."""
    sizes = [int(mesh_config[name]) for name in MESH_AXES]
    mesh_config = {name: mesh_config[name] for name in MESH_AXES}
    if sizes.count(-1) > 1:
        raise ValueError(f"At most one mesh axis may be -1; config.mesh is {dict(mesh_config)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"Mesh axis sizes must be positive or -1; config.mesh is {dict(mesh_config)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"config.mesh {dict(mesh_config)} needs a multiple of {known} devices; "
                f"found {num_devices}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh {dict(mesh_config)} covers {math.prod(sizes)} devices; "
            f"found {num_devices} (use -1 on one axis to take the rest)")
    return tuple(sizes)


def split_host_cpu(mesh_config):
    """Gives JAX's CPU backend `mesh_config.cpu_devices` devices (when > 0), if nothing else
    chose their number (XLA_FLAGS' --xla_force_host_platform_device_count, jax_num_cpu_devices)
    and the backends have not started; returns whether it did. Accelerators are unaffected.

    Why: XLA:CPU runs a program's ops mostly one after another, each spread over the cores, and
    many are too small to keep them all busy; split over devices, each device steps through its
    part of the batch beside the others. On the 2-core CPU the raw MER-Cross step ran 1.4x
    faster on 2 devices (1.23x without huge pages, merjax/hugepages.py) and MER-PS's 0.9x as
    fast (configs/clips.py: cpu_devices)."""
    wanted = int(mesh_config.get("cpu_devices", -1))
    if (wanted <= 0 or jax.config.jax_num_cpu_devices >= 0
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return False
    try:
        jax.config.update("jax_num_cpu_devices", wanted)
    except RuntimeError:  # JAX ran something already: its CPU devices are fixed
        logging.warning("config.mesh.cpu_devices=%d not applied: JAX's backends started "
                        "before the mesh was made", wanted)
        return False
    logging.info("a CPU backend has %d devices (config.mesh.cpu_devices)", wanted)
    return True


def make_mesh(mesh_config, devices=None):
    """A (data, fsdp, model) mesh over all devices, or the first `mesh_config.devices` of them
    (after `split_host_cpu`)."""
    split_host_cpu(mesh_config)
    if devices is None:
        devices = jax.devices()
        wanted = int(mesh_config.get("devices", -1))
        if wanted > 0:
            if jax.process_count() > 1 or wanted > len(devices):
                raise ValueError(f"config.mesh.devices={wanted} needs a single process with at "
                                 f"least that many devices; found {len(devices)} devices in "
                                 f"{jax.process_count()} processes")
            devices = devices[:wanted]
    shape = mesh_shape(mesh_config, len(devices))
    # jax 0.10's make_mesh defaults to Explicit axes, which ordinary model code (gathers,
    # reshapes) cannot compile under without out_sharding annotations; Auto lets GSPMD propagate.
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def rules(config):
    return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                 for name, axes in config.sharding.rules)


@contextlib.contextmanager
def context(mesh, config):
    """Mesh + logical rules: models built inside are born sharded."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules(config)):
        yield


def batch_axes(config):
    return dict(rules(config))["batch"]


def batch_sharding(mesh, config):
    """Leading (example) dim over the `batch` rule, everything else replicated."""
    return NamedSharding(mesh, P(batch_axes(config)))


def batch_shards(mesh, config):
    """How many ways a global batch is split; batch sizes must divide by it."""
    axes = batch_axes(config)
    axes = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[a] for a in axes if a is not None)


def replicated(mesh):
    return NamedSharding(mesh, P())


def state_shardings(abstract_state, mesh, config):
    with context(mesh, config):
        return nnx.get_named_sharding(abstract_state, mesh)


def to_global(local_batch, mesh, config):
    """Host-local numpy batch -> one global jax.Array per field, sharded along the batch. A
    batch gathered on the devices (data/on_device.py: its arrays are jax.Arrays) is global
    already and passes as it is."""
    sharding = batch_sharding(mesh, config)

    def put(x):
        if isinstance(x, jax.Array):
            return x
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local_batch)


def log_parameters(state, shardings):
    """Every parameter's path, shape and resolved PartitionSpec at debug level (`-v 1`), and a
    one-line summary; returns the parameter count."""
    flat_state = nnx.to_flat_state(state)
    flat_sh = dict(nnx.to_flat_state(shardings))
    total = sharded = 0
    for path, var in flat_state:
        value = var.get_value() if hasattr(var, "get_value") else var
        size = int(np.prod(value.shape))
        spec = getattr(flat_sh.get(path), "spec", None)
        total += size
        sharded += size if spec is not None and any(a is not None for a in spec) else 0
        logging.debug("param %-60s %-18s %s", "/".join(map(str, path)), tuple(value.shape), spec)
    logging.info("%s parameters in %d arrays, %s of them sharded (per-parameter specs: -v 1)",
                 f"{total:,}", len(flat_state), f"{sharded:,}")
    return total


def memory_summary(compiled):
    """The compiled step's memory per device in bytes (None where the backend gives none):
    XLA's argument, output, temp, alias and generated-code sizes, and `peak`, the larger of
    arguments + outputs + temporaries - aliased (donated buffers reused for outputs) and XLA's
    own peak where it reports one (the CPU's leaves temporaries out; neither may undercount).
    The one place memory_analysis() is read (merjax/costs.py reports `peak`)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    fields = ("argument", "output", "temp", "alias", "generated_code")
    summary = {f: int(getattr(analysis, f"{f}_size_in_bytes", 0) or 0) for f in fields}
    live = summary["argument"] + summary["output"] + summary["temp"] - summary["alias"]
    summary["peak"] = max(live, int(getattr(analysis, "peak_memory_in_bytes", 0) or 0))
    return summary


def log_memory(compiled):
    summary = memory_summary(compiled)
    if summary is not None:
        logging.info("compiled train step, memory per device: %s",
                     ", ".join(f"{k} {v / 1e6:.3g} MB" for k, v in summary.items()))
