"""Where a train step's time goes: a jax.profiler trace of a few steps, in the layout TensorBoard's
profile plugin opens, and the per-op table read back from it (`python -m merjax.bench --profile`).

The table is read from the trace's XSpace (`<run>/<host>.xplane.pb`) with jax's own reader
(`jax.profiler.ProfileData`), so it needs no package beyond jax and works on every backend:

- accelerators (GPU, TPU) have one `/device:...` plane per device; its ops are the events of the
  plane's "XLA Ops" line where the profiler writes one (TPU), else every event carrying an
  `hlo_op` stat (GPU kernels, named by the HLO op that launched them: a fusion of several
  kernels counts once per op);
- CPU has no device plane: XLA's thunks run on host threads, as events with an `hlo_op` stat
  and a `device_ordinal` one.

An op's time is its self time (minus ops nested inside it on the same line, e.g. a while loop's
body), summed over its events and averaged over the devices that ran ops, per step.
"""
import collections
import glob
import os

import jax

OPS_LINE = "XLA Ops"


def trace(log_dir, steps, step_fn):
    """Runs `step_fn()` `steps` times under jax.profiler, waiting for the last result, and
    returns the run folder the trace went to: <log_dir>/plugins/profile/<run>/, holding
    <host>.xplane.pb (TensorBoard's profile plugin: `tensorboard --logdir <log_dir>`) and
    perfetto_trace.json.gz (ui.perfetto.dev)."""
    before = set(_runs(log_dir))
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        out = None
        for _ in range(steps):
            out = step_fn()
        jax.block_until_ready(out)
    new = [r for r in _runs(log_dir) if r not in before] or _runs(log_dir)
    if not new:
        raise FileNotFoundError(f"jax.profiler wrote no trace under {log_dir}/plugins/profile")
    return max(new, key=os.path.getmtime)


def _runs(log_dir):
    return [d for d in glob.glob(os.path.join(log_dir, "plugins", "profile", "*"))
            if os.path.isdir(d)]


def op_times(run_dir, steps):
    """[{op, ms_per_step, share}] of every XLA op in the traces of `run_dir`, costliest first:
    its self time per step on one device (the mean over the devices that ran ops), and its
    share of all ops' time."""
    from jax.profiler import ProfileData  # jaxlib's XSpace reader, loaded only to read one

    paths = sorted(glob.glob(os.path.join(run_dir, "*.xplane.pb")))
    if not paths:
        raise FileNotFoundError(f"No *.xplane.pb trace in {run_dir}")
    totals, devices = collections.Counter(), set()
    for path in paths:
        space = ProfileData.from_file(path)
        for device, line_events in _op_lines(space):
            for name, self_ns in _self_times(line_events):
                totals[name] += self_ns
                devices.add((path, device))
    total = sum(totals.values())
    if not total:
        raise ValueError(f"The trace in {run_dir} holds no XLA op: was a jitted step run "
                         f"inside it?")
    per_step = 1e-6 / steps / len(devices)  # ns summed over devices -> ms per step, per device
    return [dict(op=name, ms_per_step=ns * per_step, share=ns / total)
            for name, ns in totals.most_common()]


def _op_lines(space):
    """(device, [(start_ns, duration_ns, op name)]) for every trace line that holds ops: the
    device planes' where there are any, else the host's (CPU)."""
    device_planes = [p for p in space.planes if p.name.startswith("/device:")]
    found = []
    for plane in device_planes:
        lines = list(plane.lines)
        ops_lines = [line for line in lines if line.name == OPS_LINE]
        for line in ops_lines or lines:
            events = [(e.start_ns, e.duration_ns, dict(e.stats).get("hlo_op", e.name))
                      for e in line.events if ops_lines or "hlo_op" in dict(e.stats)]
            if events:
                found.append((plane.name, events))
    if found:
        return found
    for plane in space.planes:
        for line in plane.lines:
            by_device = collections.defaultdict(list)
            for e in line.events:
                stats = dict(e.stats)
                if "hlo_op" in stats:
                    by_device[stats.get("device_ordinal", 0)].append(
                        (e.start_ns, e.duration_ns, str(stats["hlo_op"])))
            found.extend(by_device.items())
    return found


def _self_times(events):
    """[(op, self time)] of one line's events: a nested event's time is its own, not its
    parent's as well."""
    events = sorted(events, key=lambda e: (e[0], -e[1]))
    out, open_ = [], []  # open_: indices into out of events that enclose the current one
    for start, duration, name in events:
        while open_ and out[open_[-1]][2] <= start:
            open_.pop()
        if open_:
            parent = out[open_[-1]]
            parent[1] -= min(duration, parent[2] - start)
        out.append([name, duration, start + duration])
        open_.append(len(out) - 1)
    return [(name, max(self_ns, 0.0)) for name, self_ns, _ in out]


def table(ops, top=15, columns=()):
    """The first `top` rows of `op_times` (or of any rows with `op`, `ms_per_step` and `share`)
    as aligned text, the rest summed in one row. `columns` adds (key, header, format) columns,
    e.g. ("gflop_per_s", "GFLOP/s", ".1f"); a missing value reads "-", and the summed row
    leaves them blank."""
    shown, rest = ops[:top], ops[top:]
    width = max([len("op")] + [len(o["op"]) for o in shown])

    def cell(o, key, head, spec):
        value = o.get(key)
        return f"  {'-' if value is None else format(value, spec):>{max(len(head), 6)}}"

    lines = [f"{'op':<{width}}  {'ms/step':>9}  {'share':>6}"
             + "".join(f"  {head:>{max(len(head), 6)}}" for _, head, _ in columns)]
    lines += [f"{o['op']:<{width}}  {o['ms_per_step']:>9.3f}  {o['share']:>6.1%}"
              + "".join(cell(o, *column) for column in columns) for o in shown]
    if rest:
        lines.append(f"{f'({len(rest)} other ops)':<{width}}  "
                     f"{sum(o['ms_per_step'] for o in rest):>9.3f}  "
                     f"{sum(o['share'] for o in rest):>6.1%}")
    return "\n".join(lines)
