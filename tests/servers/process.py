"""Start a test server module in its own process and read the port it prints (``PORT <n>``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def server_process(module: str, *args: str, timeout_s: float = 60.0) -> Iterator[int]:
    """Runs ``python -m module args`` on loopback; yields its port; stops it (by its own pid) afterwards.

    Its own process keeps the server's memory (moto holds objects in RAM) out of the test's measurements.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{module} did not start (printed {line!r}, exit code {proc.poll()})")
        yield int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
