"""`python flows/render.py` as a user runs it: exit codes, --json, and clean-up on SIGTERM."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SAMPLE = json.loads((ROOT / "examples" / "jobs" / "sample.json").read_text())


def _env(tmp: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WORK_DIR", "STORAGE_DIR"))}
    env.update(PREFECT_API_URL=api_url, WORK_DIR=str(tmp / "work"), PYTHONUNBUFFERED="1")
    return env


def _write(tmp: Path, job: dict) -> Path:
    path = tmp / "job.json"
    path.write_text(json.dumps(job))
    return path


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "flows" / "render.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def test_invalid_job_exits_2_with_the_field_named(tmp_path: Path, prefect_server: str) -> None:
    job = copy.deepcopy(SAMPLE)
    job["payload"]["projectData"]["durationMin"] = -5
    proc = _cli(str(_write(tmp_path, job)), "--json", env=_env(tmp_path, prefect_server))
    assert proc.returncode == 2
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["success"] is False and result["error"]["code"] == "INVALID_JOB"
    assert "payload.projectData.durationMin" in result["error"]["message"] and "-5" in result["error"]["message"]
    assert "durationMin" in proc.stderr


def test_render_with_json_and_output_dir(tmp_path: Path, prefect_server: str) -> None:
    from examples.make_assets import ambient_pad, write_mp3

    write_mp3(tmp_path / "pad.mp3", ambient_pad(10.0))
    job = copy.deepcopy(SAMPLE)
    job["payload"]["projectData"].update(durationMin=0.5, scriptText="Breathe in. [pause 2s] Breathe out.")
    job["payload"]["projectData"]["layers"]["background"]["trackUrl"] = "pad.mp3"  # relative to the job file
    out = tmp_path / "delivered"
    proc = _cli(str(_write(tmp_path, job)), "--output-dir", str(out), "--json", env=_env(tmp_path, prefect_server))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    delivered = Path(result["data"]["outputUrl"].removeprefix("file://"))
    assert delivered.is_file() and delivered.is_relative_to(out)
    assert "Render complete" in proc.stdout and "true peak" in proc.stdout
    assert result["data"]["metadata"]["layers"]["used"] == ["voice", "background", "solfeggio", "binaural"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_signal_removes_the_workspace(tmp_path: Path, prefect_server: str, sig: int, code: int) -> None:
    job = copy.deepcopy(SAMPLE)
    job["payload"]["projectData"]["durationMin"] = 30  # long enough to be caught mid-render
    job["payload"]["projectData"]["layers"]["background"]["enabled"] = False
    env = _env(tmp_path, prefect_server)
    proc = subprocess.Popen([sys.executable, str(ROOT / "flows" / "render.py"), str(_write(tmp_path, job))],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    work = tmp_path / "work"
    deadline = time.monotonic() + 120
    master_started = False
    while time.monotonic() < deadline and proc.poll() is None:
        spaces = list(work.iterdir()) if work.is_dir() else []
        if any((ws / "master.mp3").exists() or any(ws.glob(".master*")) for ws in spaces):
            master_started = True
            break
        time.sleep(0.05)
    assert master_started, "the render never reached the master stage"
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("render did not stop after SIGTERM")
    assert proc.returncode == code, stderr[-2000:]
    assert list(work.iterdir()) == []
