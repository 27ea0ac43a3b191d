"""What every benchmark here shares: children timed with their own rusage, ebur128 readings, the machine line,
and appending a section to bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


@dataclass(frozen=True)
class ChildRun:
    """One child process: its last stdout line as JSON, and the kernel's accounting of its whole tree.

    ``user_s``/``sys_s`` come from wait4(2), i.e. what getrusage(RUSAGE_CHILDREN) gains when this child is
    reaped: the child and every descendant it waited for (its ffmpeg processes). ``peak_rss_mb`` is the
    largest ru_maxrss in that tree (the kernel keeps a maximum, not a sum; an exec'd ffmpeg also carries the
    RSS its parent had when it forked, so a small process never hides a large one).
    """

    result: dict[str, Any]
    process_s: float
    user_s: float
    sys_s: float
    peak_rss_mb: float
    steal_s: float | None = None  # CPU time the hypervisor gave other guests meanwhile (all CPUs; Linux)


def host_steal_s() -> float | None:
    """The machine's steal time so far, summed over its CPUs (/proc/stat; None where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run_child(args: list[str], *, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``python args...`` from the project root and return its JSON line with its rusage."""
    steal0 = host_steal_s()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        out = proc.stdout.read()  # the JSON line is small; the child ends right after printing it
        _, status, ru = os.wait4(proc.pid, 0)
        process_s = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        proc.stdout.close()
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}:\n{tail}")
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(f"{' '.join(args)} printed nothing")
    steal1 = host_steal_s()
    steal = None if steal0 is None or steal1 is None else round(steal1 - steal0, 2)
    return ChildRun(json.loads(lines[-1]), round(process_s, 3), round(ru.ru_utime, 3), round(ru.ru_stime, 3),
                    round(ru.ru_maxrss / 1024, 1), steal)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ebur128(path: Path | str) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file by ffmpeg's ebur128 filter (4x oversampled true peak)."""
    proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-i", str(path),
                           "-af", "ebur128=peak=true", "-f", "null", "-"], capture_output=True, text=True, check=True)
    summary = proc.stderr[proc.stderr.rfind("Summary:"):]
    integrated = re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary)
    peak = re.search(r"True peak:\s+Peak:\s+(-?[\d.]+|-inf) dBFS", summary)
    if not (integrated and peak):
        raise RuntimeError(f"no ebur128 summary for {path}:\n{proc.stderr[-2000:]}")
    return float(integrated.group(1)), float(peak.group(1))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line saying where and when the figures were taken (load average included: the machine is shared)."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{datetime.now().strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores ({cpu_model()}), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}, load average {load}")


def median_spread(values: list[float], digits: int = 2) -> str:
    import statistics

    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def append_section(text: str) -> None:
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    RESULTS.write_text(current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")
    print(f"recorded in {RESULTS.relative_to(ROOT)}", flush=True)
