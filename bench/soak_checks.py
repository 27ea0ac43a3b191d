"""The soak's verdict (bench/soak.py): what must hold after every fault, checked against the queue rows, the
objects in storage, Prefect's flow runs, the work directory and the TTS servers' request counts.

Each check returns a count of violations plus a few example lines; the soak prints one summary line and exits
non-zero when any count is not zero.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soak_jobs import PlannedJob
from mindscript.queue.base import QueueJob


@dataclass
class Verdict:
    counts: dict[str, int] = field(default_factory=dict)  # check -> violations
    info: dict[str, Any] = field(default_factory=dict)  # figures that are not pass/fail
    examples: list[str] = field(default_factory=list)

    def fail(self, check: str, example: str) -> None:
        self.counts[check] = self.counts.get(check, 0) + 1
        if len(self.examples) < 40:
            self.examples.append(f"{check}: {example}")

    def ok(self, check: str) -> None:
        self.counts.setdefault(check, 0)

    @property
    def passed(self) -> bool:
        return not any(self.counts.values())


def check_outcomes(v: Verdict, jobs: dict[str, PlannedJob], rows: dict[str, QueueJob]) -> None:
    """Valid jobs completed with a successful result; invalid ones failed with a message naming the field;
    nothing left pending or processing."""
    v.ok("wrong_outcome")
    v.ok("stuck")
    for job_id, job in jobs.items():
        row = rows.get(job_id)
        if row is None:
            v.fail("wrong_outcome", f"{job_id} ({job.shape}): row missing")
            continue
        if row.status in ("pending", "processing"):
            v.fail("stuck", f"{job_id} ({job.shape}): {row.status} stage={row.stage} attempts={row.attempts} "
                            f"worker={row.worker_id} message={row.message!r}")
            continue
        if job.valid:
            ok = row.status == "completed" and isinstance(row.result, dict) and row.result.get("success") is True
            if not ok:
                v.fail("wrong_outcome", f"{job_id} ({job.shape}): {row.status} after {row.attempts} attempt(s): "
                                        f"{(row.error or '')[:300]}")
        elif not (row.status == "failed" and job.invalid_field and job.invalid_field in (row.error or "")):
            v.fail("wrong_outcome", f"{job_id} (invalid {job.invalid_field}): {row.status}: {row.error!r}")
    # what the completed renders say they used (not pass/fail: a skipped layer is a warning, not an error)
    meta = {j: ((rows[j].result or {}).get("data") or {}).get("metadata") or {} for j in jobs
            if j in rows and rows[j].status == "completed"}
    with_bed = [j for j in meta if jobs[j].background]
    used = sum(1 for j in with_bed if (meta[j].get("layers") or {}).get("background"))
    v.info["background_used"] = f"{used}/{len(with_bed)}"
    cloud = [j for j in meta if jobs[j].provider in ("openai", "elevenlabs")]
    revoiced = sum(1 for j in cloud if (meta[j].get("tts") or {}).get("provider") != jobs[j].provider)
    v.info["voice_fallbacks"] = f"{revoiced}/{len(cloud)}"


def check_storage(v: Verdict, jobs: dict[str, PlannedJob], rows: dict[str, QueueJob],
                  objects: list[tuple[str, str, int]]) -> None:
    """Every completed row points at a stored object; no job has objects under two different keys; failed
    jobs stored nothing that a row would not explain."""
    v.ok("two_keys")
    v.ok("missing_object")
    by_job: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for bucket, key, _size in objects:
        parts = key.split("/")
        if len(parts) == 6 and parts[0] == "renders":
            by_job[parts[4]].add((bucket, key))
    strays = 0
    for job_id, stored in by_job.items():
        keys = {k for _, k in stored}
        if len(keys) > 1:
            v.fail("two_keys", f"{job_id}: {sorted(stored)}")
        row = rows.get(job_id)
        result = row.result if row is not None and row.status == "completed" else None
        meta = ((result or {}).get("data") or {}).get("metadata") or {}
        where = (meta.get("storage") or {}).get("bucket"), (meta.get("storage") or {}).get("key")
        strays += len(stored - {where})
    for job_id, row in rows.items():
        if row.status != "completed" or job_id not in jobs:
            continue
        storage = (((row.result or {}).get("data") or {}).get("metadata") or {}).get("storage") or {}
        if (storage.get("bucket"), storage.get("key")) not in by_job.get(job_id, set()):
            v.fail("missing_object", f"{job_id}: row says {storage.get('bucket')}/{storage.get('key')}, stored "
                                     f"{sorted(by_job.get(job_id, set()))}")
    v.info["objects"] = len(objects)
    v.info["stray_objects"] = strays  # e.g. a copy in the first bucket from an attempt killed before it finished
    v.info["fallback"] = sum(1 for r in rows.values() if r.status == "completed" and
                             (((r.result or {}).get("data") or {}).get("metadata") or {})
                             .get("storage", {}).get("fallbackFrom"))


def check_flow_runs(v: Verdict, jobs: dict[str, PlannedJob], rows: dict[str, QueueJob],
                    runs: list[tuple[str, str, str, str]]) -> None:
    """(flow run id, job id, state name, message) of every render flow run: at most one Completed run per job.
    Also counted (not a failure): completed rows whose own flow run does not say Completed in Prefect."""
    v.ok("completed_twice")
    completed = Counter(job_id for _, job_id, state, _ in runs if state == "Completed")
    for job_id, n in completed.items():
        if n > 1:
            v.fail("completed_twice", f"{job_id} ({jobs[job_id].shape if job_id in jobs else '?'}): {n} "
                                      "Completed render flow runs")
    state_of = {run_id: state for run_id, _, state, _ in runs}
    v.info["completed_row_run_not_completed"] = [
        f"{job_id}: {state_of.get(str(row.flow_run_id))}" for job_id, row in rows.items()
        if row.status == "completed" and state_of.get(str(row.flow_run_id)) != "Completed"]
    v.info["flow_runs"] = dict(Counter(state for _, _, state, _ in runs))
    v.info["run_messages"] = dict(Counter(f"{state}: {message[:160]}" for _, _, state, message in runs
                                          if state != "Completed").most_common(12))


def check_workspaces(v: Verdict, work_dir: Path) -> None:
    v.ok("workspaces_left")
    for child in sorted(work_dir.iterdir()) if work_dir.is_dir() else []:
        v.fail("workspaces_left", child.name)


def check_tts_requests(v: Verdict, provider: str, by_chunk: dict[str, tuple[int, str, str]],
                       jobs: dict[str, PlannedJob], rows: dict[str, QueueJob], retries: int) -> None:
    """Requests per chunk <= (1 + retries) for one render attempt. A chunk needs a new round only when an
    attempt that used it was cut short (killed, requeued: ``attempts - 1`` of its jobs) or when every try of it
    failed and the job fell back to another voice (the next job that needs it asks again). So the bound is
    (1 + retries) x (1 + those rounds); ``over_single`` counts chunks past 1 + retries (each explained).
    A server chunk is (voice, text, context): ElevenLabs requests carry the neighbouring paragraphs, so one
    paragraph in two scripts can be two chunks; both count the rounds of every job whose script has the text."""
    v.ok("tts_over_bound")
    users: dict[tuple[str, str], list[str]] = defaultdict(list)
    for job_id, job in jobs.items():
        if job.provider == provider and job.voice is not None:
            for paragraph in job.paragraphs:
                users[(job.voice, paragraph)].append(job_id)
    worst, over_single = 0, 0
    for n, voice, text in by_chunk.values():
        used_by = users.get((voice, text), [])
        rounds = 1
        for job_id in used_by:
            row = rows.get(job_id)
            if row is None:
                continue
            rounds += max(0, row.attempts - 1)
            tts = ((((row.result or {}).get("data") or {}).get("metadata") or {}).get("tts") or {})
            if row.status == "completed" and tts.get("provider") not in (None, provider):
                rounds += 1  # this job's tries of the chunk all failed: it was re-voiced by the fallback
        worst = max(worst, n)
        over_single += n > 1 + retries
        if not used_by:
            v.fail("tts_over_bound", f"{provider} chunk {voice}|{text[:40]!r}: {n} requests for no job's script")
        elif n > (1 + retries) * rounds:
            v.fail("tts_over_bound", f"{provider} chunk {voice}|{text[:40]!r}: {n} requests > (1 + {retries}) x "
                                     f"{rounds} round(s) (jobs {used_by[:4]})")
    v.info[f"{provider}_chunks"] = len(by_chunk)
    v.info[f"{provider}_requests"] = sum(n for n, _, _ in by_chunk.values())
    v.info[f"{provider}_max_per_chunk"] = worst
    v.info[f"{provider}_over_1+retries"] = over_single
