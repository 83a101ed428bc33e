"""Transparent huge pages for the buffers XLA:CPU allocates on every step (Linux, glibc).

XLA:CPU allocates a program's temporaries, one block per execution (157 MB for the raw
MER-Cross train step), with posix_memalign, and frees it when the step ends. glibc serves a
block over 32 MB (the most its mmap threshold can rise to) with a fresh mmap and unmaps it on
free, so every step touches ~38k new 4 KB pages, and the kernel faults in and zeroes each one.
Measured with perf on the 2-core CPU during the raw MER-Cross bench: 135k page faults a second
and 27% of the process's CPU time in the kernel.

glibc 2.35 and later can madvise such blocks as transparent huge pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`; numpy does the same for its own large arrays): then
2.5k faults a second instead of 135k, and the step ran 1.0-1.3x faster (alternated runs).
glibc reads its tunables only when a process starts, so `reexec()` (called by every merjax
command, merjax/cli.py) starts the command again, once, in the same process with the tunable
set. It does nothing where the kernel gives no huge pages on request (THP `never`,
or `always`, which needs no request), on other C libraries, where GLIBC_TUNABLES already sets
`glibc.malloc.hugetlb`, or with MERJAX_HUGEPAGES=0.
"""
import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
OPT_OUT = "MERJAX_HUGEPAGES"  # "0": never re-execute


def active(environ=None):
    """Whether this process's glibc was started with huge pages requested (the tunable set to
    anything but 0)."""
    return _setting(environ) not in (None, "0")


def _setting(environ=None):
    """The tunable's value in GLIBC_TUNABLES (None: not set)."""
    environ = os.environ if environ is None else environ
    values = [item.split("=", 1)[1] for item in environ.get("GLIBC_TUNABLES", "").split(":")
              if item.startswith(TUNABLE + "=")]
    return values[-1] if values else None


def has_tunable(libc=None):
    """Whether the C library (name, version; this process's by default) reads the tunable."""
    name, version = libc or platform.libc_ver()
    try:
        return name == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (2, 35)
    except ValueError:  # a version Python could not read
        return False


def wanted(environ=None, mode_file=None, libc=None):
    """Whether starting again with the tunable would change how big blocks are backed."""
    environ = os.environ if environ is None else environ
    mode_file = mode_file or THP_MODE_FILE
    if sys.platform != "linux" or environ.get(OPT_OUT) == "0" or _setting(environ) is not None:
        return False
    if not has_tunable(libc):
        return False
    try:
        with open(mode_file) as f:
            mode = f.read()
    except OSError:  # no THP in this kernel
        return False
    return "[madvise]" in mode


def reexec():
    """Replaces this process by the same command with huge pages requested, if `wanted()`;
    else returns. Call it before any work: nothing done so far survives."""
    if not wanted():
        return
    environ = dict(os.environ)
    environ["GLIBC_TUNABLES"] = ":".join(
        t for t in (environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1") if t)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)
