"""TTS voice-stem benchmark: a 20,000-character script through the Prefect chunk tasks and the real OpenAI SDK.

    python bench/tts_bench.py                 # print the figures (one JSON line)
    python bench/tts_bench.py --record        # and append a dated section to bench/RESULTS.md

A local server speaking OpenAI's speech wire format (tests/servers/openai_server.py) answers every request
after ``--latency`` seconds (default 1 s) with ``--seconds-per-char`` of audio per character (default 0.067,
i.e. about 15 characters per second, a natural speaking rate: the 20,000 characters become ~22 minutes of
speech). Two renders of the same script run one after the other in a fresh cache: ``cold_s`` (every chunk
synthesized, TTS_CONCURRENCY_OPENAI at a time) and ``cached_s`` (every chunk from the cache). Both are wall
times of the voice stage as the render flow runs it (chunk tasks, assembly with exact pauses, analysis and
levelling of the stem), measured inside one flow run on a temporary Prefect server (its start is not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "RESULTS.md"
KEY = "sk-bench-not-a-real-key"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chars", type=int, default=20_000)
    p.add_argument("--latency", type=float, default=1.0)
    p.add_argument("--seconds-per-char", type=float, default=0.067)
    p.add_argument("--record", action="store_true")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tts-bench-"))
    # The server runs in its own process, so generating its audio does not compete with the render for the GIL.
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.openai_server", KEY, str(args.latency), str(args.seconds_per_char)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()

        def stats() -> dict[str, int]:
            with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats", timeout=10) as resp:
                return json.loads(resp.read())

        os.environ.update({
            "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": base_url, "TTS_CACHE_DIR": str(tmp / "cache"),
            "WORK_DIR": str(tmp / "work"), "STORAGE_DIR": str(tmp / "out"), "TTS_FALLBACK": "",
        })
        from prefect import flow
        from prefect.testing.utilities import prefect_test_harness

        from mindscript.job import parse_job
        from mindscript.settings import get_settings
        from tasks.render import generate_voice
        from tests.flows.test_voice import long_script

        get_settings.cache_clear()
        script, pauses = long_script(args.chars)
        job = parse_job({"id": "bench", "payload": {"projectData": {
            "scriptText": script, "voiceRef": "openai:nova", "durationMin": 60}}})

        @flow(name="tts-bench")
        def bench_flow() -> dict[str, float | int]:
            figures: dict[str, float | int] = {}
            for label in ("cold", "cached"):
                ws = tmp / label
                ws.mkdir()
                before = stats()["requests"]
                t0 = time.perf_counter()
                stem = generate_voice.submit(job, str(ws)).result()
                figures[f"{label}_s"] = round(time.perf_counter() - t0, 3)
                figures[f"{label}_requests"] = stats()["requests"] - before
                figures[f"{label}_cache_hits"] = stem.cache_hits
                figures.update(chunks=stem.chunks, characters=stem.characters, stem_s=round(stem.duration_s, 1))
            figures["max_concurrent_requests"] = stats()["max_active"]
            return figures

        with prefect_test_harness(server_startup_timeout=180):
            figures = bench_flow()
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=30)
    figures.update(script_chars=len(script), pauses=len(pauses), latency_s=args.latency,
                   concurrency=get_settings().tts_concurrency_openai, chunk_size=get_settings().tts_chunk_size)
    print(json.dumps(figures))
    if args.record:
        cmd = f"python bench/tts_bench.py --seconds-per-char {args.seconds_per_char:g} --record"
        section = (
            f"## TTS voice stem ({date.today().isoformat()}, {os.cpu_count()} cores, {platform.python_version()})\n\n"
            f"`{cmd}`: a {figures['script_chars']}-character script with {figures['pauses']} pause markers, "
            f"OpenAI wire-format test server answering each request after {args.latency:g} s, "
            f"{args.seconds_per_char:g} s of audio per character ({figures['stem_s']} s stem), "
            f"TTS_CHUNK_SIZE {figures['chunk_size']}, TTS_CONCURRENCY_OPENAI {figures['concurrency']}.\n\n"
            "| render | wall s | provider requests | cache hits / chunks |\n|---|---|---|---|\n"
            f"| first (cold cache) | {figures['cold_s']} | {figures['cold_requests']} | "
            f"{figures['cold_cache_hits']} / {figures['chunks']} |\n"
            f"| second (same script) | {figures['cached_s']} | {figures['cached_requests']} | "
            f"{figures['cached_cache_hits']} / {figures['chunks']} |\n\n"
            f"At most {figures['max_concurrent_requests']} requests were in flight at once.\n"
        )
        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
        RESULTS.write_text(text.rstrip("\n") + "\n\n" + section)
        print(f"recorded in {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
