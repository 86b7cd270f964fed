"""The allocator setting of featstore/memory.py: freed batch-sized buffers leave the process's RSS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from featstore.memory import bound_heap_growth

# Allocate, fill and free a 20 MiB buffer twice, then print (set?, RSS growth in KiB). glibc's default
# raises its mmap threshold after the first free, so the second buffer comes from the heap and stays
# resident; with the threshold fixed at 16 MiB both are unmapped on free.
PROBE = """
import sys
from featstore.memory import bound_heap_growth
def rss():
    return int(next(line for line in open('/proc/self/status') if line.startswith('VmRSS')).split()[1])
ok = bound_heap_growth() if sys.argv[1] == 'bound' else None
before = rss()
for _ in range(2):
    block = bytearray(20 * 2**20)
    del block
print(ok, rss() - before)
"""


def _probe(mode: str, **env: str) -> tuple[str, int]:
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), **env}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=environment
    )
    ok, growth = done.stdout.split()
    return ok, int(growth)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_freed_large_buffers_leave_rss_once_the_threshold_is_fixed():
    assert _probe("default")[1] > 15 * 1024  # the creep this guards against: 20 MiB kept after the free
    ok, growth = _probe("bound")
    assert ok == "True" and growth < 4 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_users_own_threshold_wins(monkeypatch):
    assert _probe("bound", MALLOC_MMAP_THRESHOLD_="131072")[0] == "False"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert bound_heap_growth() is False
