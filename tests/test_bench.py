"""Where a step's time goes (merjax/profiling.py, `python -m merjax.bench --profile`): self times of
nested trace events, the per-op table of a traced program, and what the benchmark's --profile
gives (checked on tests/test_cross.py's benchmark run). And how busy other processes keep the
machine while the benchmark times a window (merjax/contention.py)."""
import glob
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from merjax import contention, profiling


def test_a_nested_event_counts_once_as_its_own_time():
    # A while loop (0-100) holding two body ops (10-30, 40-90), then a lone op (100-105).
    events = [(40, 50, "body_b"), (0, 100, "while"), (10, 20, "body_a"), (100, 5, "add")]
    assert sorted(profiling._self_times(events)) == [
        ("add", 5), ("body_a", 20), ("body_b", 50), ("while", 30)]


def test_the_ops_of_a_traced_program_add_up_to_no_more_than_its_time(tmp_path):
    """A chain of dependent matmuls on one device cannot overlap: the ops' time per step is
    most of the step's wall time, and never more."""
    w = jnp.full((768, 768), 1e-3, jnp.float32)

    @jax.jit
    def chain(x):
        for _ in range(4):
            x = jnp.tanh(x @ w)
        return x

    x = jnp.ones((768, 768), jnp.float32)
    chain(x).block_until_ready()  # compiled outside the trace
    steps, seconds = 3, []

    def step():
        # Each step's own wall time: the profiler's start and stop (seconds, the first time in
        # a process) are not steps.
        start = time.perf_counter()
        out = chain(x).block_until_ready()
        seconds.append(time.perf_counter() - start)
        return out

    run_dir = profiling.trace(str(tmp_path), steps, step)
    wall_ms_per_step = sum(seconds) * 1e3 / steps
    assert os.path.dirname(run_dir) == str(tmp_path / "plugins" / "profile")
    assert glob.glob(os.path.join(run_dir, "*.xplane.pb"))
    ops = profiling.op_times(run_dir, steps)
    total = sum(o["ms_per_step"] for o in ops)
    assert 0.3 * wall_ms_per_step < total <= wall_ms_per_step
    assert sum(o["share"] for o in ops) == pytest.approx(1.0)
    assert [o["ms_per_step"] for o in ops] == sorted((o["ms_per_step"] for o in ops),
                                                     reverse=True)
    table = profiling.table(ops, top=2)
    assert table.splitlines()[1].startswith(ops[0]["op"]) and "other ops" in table


def test_the_table_takes_extra_columns():
    rows = [dict(op="f32[64,12] . f32[12,16] contract (1; 0)", ms_per_step=2.0, share=0.8,
                 executions=4, gflop_per_s=2.34),
            dict(op="conv", ms_per_step=0.4, share=0.16, executions=12, gflop_per_s=None),
            dict(op="rest", ms_per_step=0.1, share=0.04, executions=1, gflop_per_s=9.0)]
    lines = profiling.table(rows, top=2, columns=(("executions", "calls", "d"),
                                                  ("gflop_per_s", "GFLOP/s", ".1f"))).splitlines()
    assert lines[0].split() == ["op", "ms/step", "share", "calls", "GFLOP/s"]
    assert lines[1].split()[-4:] == ["2.000", "80.0%", "4", "2.3"]
    assert lines[2].split() == ["conv", "0.400", "16.0%", "12", "-"]  # unknown rate
    assert lines[3].split() == ["(1", "other", "ops)", "0.100", "4.0%"]
    assert len({len(line) for line in lines[:3]}) == 1  # aligned


def check_profile(report, stderr, log_dir, top):
    """The benchmark's --profile output (its run is tests/test_cross.py's benchmark test, whose
    compile it shares): the JSON's costliest ops, the trace where TensorBoard's profile plugin
    reads it (<log_dir>/plugins/profile/<run>/<host>.xplane.pb), the table on stderr."""
    profile = report["profile"]
    assert len(profile) == top and all(set(o) == {"op", "ms_per_step", "share"} for o in profile)
    assert all(o["ms_per_step"] > 0 and 0 < o["share"] <= 1 for o in profile)
    assert sum(o["share"] for o in profile) <= 1
    assert [o["ms_per_step"] for o in profile] == sorted((o["ms_per_step"] for o in profile),
                                                         reverse=True)
    run_dir = report["profile_dir"]
    assert os.path.dirname(run_dir) == os.path.join(str(log_dir), "plugins", "profile")
    assert glob.glob(os.path.join(run_dir, "*.xplane.pb"))
    assert os.path.exists(os.path.join(run_dir, "perfetto_trace.json.gz"))  # ui.perfetto.dev
    lines = stderr.splitlines()
    # The profile's table (the matmuls' one follows it, with the same columns).
    title = next(i for i, line in enumerate(lines) if line.startswith("per-op time of "))
    assert lines[title + 1].split()[:2] == ["op", "ms/step"]
    assert lines[title + 2].split()[0] == profile[0]["op"]


def _spinning_child(seconds):
    """Another process keeping one core busy for `seconds`."""
    return subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {seconds}\n"
                             "while time.time() < end: pass"])


def test_a_window_counts_the_cores_other_processes_use():
    child = _spinning_child(1.5)
    try:
        time.sleep(0.2)  # the child is running
        with contention.Window() as window:
            time.sleep(0.6)
    finally:
        child.wait()
    assert window.seconds >= 0.6
    # One of this machine's cores spun by another process: at least ~1/cores of them.
    assert window.foreign >= 0.5 / os.cpu_count()
    with contention.Window() as own:  # this process's own work is not foreign
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass
    assert 0.0 <= own.foreign <= 1.0


def test_waiting_for_quiet_gives_up_after_its_limit():
    assert contention.wait_for_quiet(max_foreign=2.0, max_wait_s=30) < 5  # always quiet
    child = _spinning_child(3)
    try:
        time.sleep(0.2)
        waited = contention.wait_for_quiet(max_foreign=0.0, max_wait_s=1.0)
    finally:
        child.wait()
    assert 1.0 <= waited < 2.0
