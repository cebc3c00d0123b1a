"""train.reuse_freed_memory (train/allocator.py): with it, glibc keeps a freed 256 MiB buffer
in the process for the next allocation; without it the pages go back to the kernel. Each case
runs in its own interpreter, since the setting lasts for the life of a process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import sys
import torch
from grpo.train.allocator import reuse_freed_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))

took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
before = rss_mib()
x = torch.ones(64 * 2**20)  # 256 MiB, every page touched
del x
print(took, rss_mib() - before)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt settings exist only in glibc",
)
@pytest.mark.parametrize("mode", ["reuse", "default"])
def test_freed_memory_stays_only_when_asked(mode):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    took, kept_mib = out[0], int(out[1])
    if mode == "reuse":
        assert took == "True"
        assert kept_mib >= 250  # the freed buffer is still resident, ready for reuse
    else:
        assert kept_mib < 16  # unmapped on free (glibc serves it with mmap)
