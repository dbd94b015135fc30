"""Tests for probes.allocator: freed large blocks are reused, not faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocate, touch and free a 64 MB tensor twice (the heap settles), then once more and
# count the minor page faults of that round: with fresh mmaps every page faults again (~16k 4 KiB pages).
_SCRIPT = """
import resource, sys, torch
from probes.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else None
for _ in range(2):
    x = torch.ones(16 << 20); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(16 << 20); del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def _faults(apply: bool) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, "1" if apply else "0"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@glibc
def test_keep_freed_memory__second_large_allocation_does_not_fault_again():
    applied, faults = _faults(True)
    assert applied == "True"
    default = _faults(False)[1]
    assert default > 10_000  # glibc's default: the 64 MB block was unmapped and faults again
    assert faults < 1_000, (faults, default)


@glibc
def test_keep_freed_memory__is_idempotent():
    from probes.allocator import keep_freed_memory

    assert keep_freed_memory() and keep_freed_memory()
