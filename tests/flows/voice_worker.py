"""One worker process that renders one voice track on the Prefect API named by PREFECT_API_URL.

``python -m tests.flows.voice_worker <job.json> <workspace> <go file>``: imports everything, prints ``READY``,
waits until ``<go file>`` exists (so several processes start their requests together), renders through
``generate_voice`` (the production task), prints ``RESULT <VoiceStem JSON>``. Settings come from the
environment, as in a deployed worker.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from prefect import flow

from mindscript.job import RenderJob, parse_job
from mindscript.voice import VoiceStem
from tasks.render import generate_voice


@flow(name="voice-worker")
def voice_only(job: RenderJob, workspace: str) -> VoiceStem:
    return generate_voice.submit(job, workspace).result()


def main(argv: list[str]) -> int:
    job_path, workspace, go = argv
    job = parse_job(json.loads(Path(job_path).read_text()))
    Path(workspace).mkdir(parents=True, exist_ok=True)
    print("READY", flush=True)
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            print("NO GO", flush=True)
            return 2
        time.sleep(0.01)
    stem = voice_only(job, workspace)
    print("RESULT " + json.dumps(stem.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
