"""merjax/hugepages.py: where a command starts again with huge pages requested, and that it
does so once, in the same process, keeping the command line and the user's tunables."""
import os
import subprocess
import sys

import pytest

from merjax import hugepages

GLIBC = ("glibc", "2.36")
MADVISE = "always [madvise] never\n"


def mode_file(tmp_path, text):
    path = tmp_path / "enabled"
    path.write_text(text)
    return str(path)


def test_huge_pages_are_requested_only_where_the_kernel_gives_them_on_request(tmp_path):
    madvise = mode_file(tmp_path, MADVISE)
    assert hugepages.wanted({}, madvise, GLIBC)
    assert hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, madvise, GLIBC)
    # The user's own choice, either way, stands; so does the opt-out.
    assert not hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:"
                                 "glibc.malloc.hugetlb=0"}, madvise, GLIBC)
    assert not hugepages.wanted({"MERJAX_HUGEPAGES": "0"}, madvise, GLIBC)
    # THP for every mapping already, or never: a request changes nothing.
    for text in ("[always] madvise never\n", "always madvise [never]\n"):
        assert not hugepages.wanted({}, mode_file(tmp_path, text), GLIBC)
    assert not hugepages.wanted({}, str(tmp_path / "missing"), GLIBC)
    # The tunable came with glibc 2.35; musl and others have none.
    assert not hugepages.wanted({}, madvise, ("glibc", "2.34"))
    assert not hugepages.wanted({}, madvise, ("", ""))
    assert hugepages.has_tunable(("glibc", "2.35")) and not hugepages.has_tunable(("glibc", "2.9"))
    assert not hugepages.has_tunable(("glibc", ""))


def test_active_reads_the_tunable_among_others():
    assert hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"})
    assert not hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert not hugepages.active({})
    assert not hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})


# The child records each start (its pid and tunables) and then re-executes where wanted; the
# mode file is the test's, so the kernel's own THP setting does not decide the outcome.
CHILD = """
import os, sys
from merjax import hugepages
hugepages.THP_MODE_FILE = sys.argv[1]
with open(sys.argv[2], "a") as f:
    f.write(f"{os.getpid()} {os.environ.get('GLIBC_TUNABLES', '')} {sys.argv[3]}\\n")
hugepages.reexec()
"""


@pytest.mark.skipif(sys.platform != "linux" or not hugepages.has_tunable(),
                    reason="needs Linux with glibc >= 2.35")
@pytest.mark.parametrize("opt_out", [False, True])
def test_a_command_starts_again_once_with_huge_pages_requested(tmp_path, opt_out):
    starts = tmp_path / "starts"
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.arena_max=4",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env.pop("MERJAX_HUGEPAGES", None)
    if opt_out:
        env["MERJAX_HUGEPAGES"] = "0"
    subprocess.run([sys.executable, "-c", CHILD, mode_file(tmp_path, MADVISE), str(starts),
                    "--config=x"], env=env, check=True, timeout=60)
    lines = [line.split(" ") for line in starts.read_text().splitlines()]
    if opt_out:
        assert [tunables for _, tunables, _ in lines] == ["glibc.malloc.arena_max=4"]
        return
    assert [tunables for _, tunables, _ in lines] == [
        "glibc.malloc.arena_max=4", "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"]
    assert lines[0][0] == lines[1][0]  # the same process: exec, not a child
    assert [arg for _, _, arg in lines] == ["--config=x", "--config=x"]
