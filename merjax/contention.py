"""How much of the machine's CPU other processes take while we time something (Linux).

On a shared host a timed window can run 20% slower than the next because another process held
the cores. The benchmark (merjax/bench.py) waits for a quiet moment before each window and
counts a window only when others used less than a given share of all cores during it: the
protocol of ../shared/peer_bench, so that merjax and the PyTorch baseline are timed alike.
Without /proc/stat (not Linux) nothing can be told: every window counts and none waits.
"""
import os
import time

_CORES = os.cpu_count() or 1
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_s():
    """CPU seconds the whole machine has spent busy (all cores), or None without /proc/stat.
    Busy includes steal: time a hypervisor gave this VM's cores to another."""
    try:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / _TICK


def own_cpu_s():
    """CPU seconds this process (every thread of it) has used."""
    times = os.times()
    return times.user + times.system


class Window:
    """Times a block: `.seconds`, and `.foreign`, the share of all cores other processes used
    meanwhile (None where it cannot be told)."""

    def __enter__(self):
        self._busy, self._own, self._start = busy_cpu_s(), own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        busy = busy_cpu_s()
        # Clipped to [0, 1]: the two clocks tick at 10 ms, a short window's shares are rough.
        self.foreign = None if busy is None or self._busy is None else min(1.0, max(
            0.0, (busy - self._busy) - (own_cpu_s() - self._own)) / (self.seconds * _CORES))
        return False


def wait_for_quiet(max_foreign, max_wait_s, span_s=0.25, spans=2):
    """Waits (at most `max_wait_s`) until others used less than `max_foreign` of the cores for
    `spans` spans of `span_s` in a row; returns the seconds waited."""
    start, quiet = time.perf_counter(), 0
    while quiet < spans and time.perf_counter() - start < max_wait_s:
        with Window() as window:
            time.sleep(span_s)
        if window.foreign is None:
            break
        quiet = quiet + 1 if window.foreign < max_foreign else 0
    return time.perf_counter() - start
