"""The render's malloc thresholds: block-sized temporaries stop page-faulting once they are set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocate, touch and free 512 KB blocks the way a render's block loop does; count the minor page faults.
_PROBE = """
import resource, sys
import numpy as np
from mindscript import allocator
tuned = allocator.keep_block_buffers() if sys.argv[1] == "tuned" else False
x = np.ones(65536 * 2, dtype=np.float32)
for _ in range(20):
    (x * 2.0).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(300):
    y = x * 2.0  # fresh 512 KB arrays, written in full, then freed together (glibc then trims the heap)
    z = y + 1.0
    del y, z
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_block_temporaries_stop_page_faulting() -> None:
    tuned, faults_tuned = _probe("tuned")
    _, faults_default = _probe("default")
    assert tuned == "True"
    # glibc's default returns the freed pair to the system and faults 2 x 128 pages back in every time
    # (here 67,104 faults); tuned, the heap keeps them (here 128: the first touch only)
    assert faults_tuned < 300 * 8, faults_tuned
    assert faults_default > 20 * max(faults_tuned, 1), (faults_default, faults_tuned)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_environment_wins() -> None:
    tuned, _ = _probe("tuned", MALLOC_MMAP_THRESHOLD_="131072")
    assert tuned == "False"
