"""Tests for probes.allocator: freed large blocks are reused, not faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocate, touch and free a 64 MB tensor eight times and count each round's minor page
# faults. With glibc's default every round faults all its ~16k 4 KiB pages in again; with
# the setting the heap settles after a round or two (where a freed block lands next
# varies from run to run) and later rounds reuse pages already touched.
_SCRIPT = """
import resource, sys, torch
from probes.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else None
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20); del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, sum(f < 1000 for f in faults))
"""

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _quiet_rounds(apply: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, "1" if apply else "0"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@glibc
def test_keep_freed_memory__large_allocations_stop_faulting_once_the_heap_settles():
    applied, quiet = _quiet_rounds(True)
    assert applied == "True"
    assert _quiet_rounds(False)[1] == 0  # glibc's default: every round faults again
    assert quiet >= 5, quiet  # of 8 rounds


@glibc
def test_keep_freed_memory__is_idempotent():
    from probes.allocator import keep_freed_memory

    assert keep_freed_memory() and keep_freed_memory()


_TRIM = """
import resource, sys, torch
from probes.allocator import keep_freed_memory, release_free_memory
keep_freed_memory()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
xs = [torch.ones(16 << 20) for _ in range(4)]  # 256 MB
del xs
kept = rss_mb()
trimmed = release_free_memory()
print(trimmed, round(kept), round(rss_mb()))
"""


@glibc
def test_release_free_memory__returns_kept_heap_pages_to_the_os():
    out = subprocess.run([sys.executable, "-c", _TRIM], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    trimmed, kept, after = out[0], int(out[1]), int(out[2])
    assert trimmed == "True"
    assert kept - after >= 200, (kept, after)  # the freed 256 MB left the process
