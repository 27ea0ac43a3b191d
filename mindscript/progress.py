"""Weighted progress of one render, reported to injected sinks.

The seed's stages and weights (they sum to 100) are kept. A stage advances automatically when a later one
starts; ``update()`` reports sub-progress inside the current stage. Sinks are plain callables, so the same
tracker drives a Prefect progress artifact, Prefect events, the log, a queue row or the CLI bar, and none of
them is imported here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger(__name__)


class Stage(StrEnum):
    INITIALIZING = "INITIALIZING"
    DOWNLOADING_ASSETS = "DOWNLOADING_ASSETS"
    GENERATING_VOICE = "GENERATING_VOICE"
    GENERATING_TONES = "GENERATING_TONES"
    MIXING_AUDIO = "MIXING_AUDIO"
    NORMALIZING = "NORMALIZING"
    UPLOADING = "UPLOADING"


STAGE_WEIGHTS: dict[Stage, int] = {
    Stage.INITIALIZING: 5,
    Stage.DOWNLOADING_ASSETS: 10,
    Stage.GENERATING_VOICE: 30,
    Stage.GENERATING_TONES: 10,
    Stage.MIXING_AUDIO: 25,
    Stage.NORMALIZING: 10,
    Stage.UPLOADING: 10,
}
assert sum(STAGE_WEIGHTS.values()) == 100
STAGES: tuple[Stage, ...] = tuple(STAGE_WEIGHTS)


@dataclass(frozen=True)
class ProgressEvent:
    """What a sink receives. ``percent`` is overall progress 0-100."""

    kind: str  # "started" | "progress" | "stage_completed" | "failed" | "completed"
    stage: Stage
    percent: float
    stage_fraction: float
    message: str
    stage_elapsed_s: float
    elapsed_s: float


ProgressSink = Callable[[ProgressEvent], None]


@dataclass
class _StageRecord:
    started: float | None = None
    finished: float | None = None
    error: str | None = None


@dataclass
class ProgressTracker:
    """Tracks the current stage and fraction; thread-safe (tasks report from worker threads)."""

    sinks: list[ProgressSink] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._records = {stage: _StageRecord() for stage in STAGES}
        self._current: Stage | None = None
        self._fraction = 0.0
        self._t0 = self.clock()

    # -- reporting -----------------------------------------------------------------------------------
    def start(self, stage: Stage, message: str | None = None) -> None:
        """Enter ``stage``; every earlier stage not yet finished is completed first (auto-advance).

        Stages only move forward: entering a stage earlier than the current one does nothing (a task may
        already have reported a later stage while the flow still waits on an earlier one).
        """
        with self._lock:
            if self._current == stage or self._is_behind(stage):
                return
            for earlier in STAGES[: STAGES.index(stage)]:
                rec = self._records[earlier]
                if rec.finished is None:
                    if rec.started is None:
                        rec.started = self.clock()
                    self._current = earlier
                    self._finish_current(f"{_label(earlier)} done")
            self._current = stage
            self._fraction = 0.0
            self._records[stage].started = self.clock()
            self._emit("started", message or f"{_label(stage)}...")

    def update(self, fraction: float, message: str | None = None, *, stage: Stage | None = None) -> None:
        """Sub-progress inside the current stage (``fraction`` in 0..1; never goes backwards).

        With ``stage`` given, a report for a later stage advances to it and one for an earlier stage
        (e.g. a re-master after verification) is ignored, so the bar never runs backwards.
        """
        with self._lock:
            if stage is not None and stage != self._current:
                if self._is_behind(stage):
                    return
                self.start(stage)
            if self._current is None:
                self.start(STAGES[0])
            self._fraction = min(1.0, max(self._fraction, float(fraction)))
            self._emit("progress", message or f"{_label(self._current)} {self._fraction:.0%}")

    def complete(self, stage: Stage, message: str | None = None) -> None:
        with self._lock:
            if self._is_behind(stage):
                return
            self.start(stage)
            self._finish_current(message or f"{_label(stage)} done")

    def fail(self, error: str, stage: Stage | None = None) -> None:
        with self._lock:
            if stage is not None:
                self.start(stage)
            current = self._current or STAGES[0]
            rec = self._records[current]
            rec.error = error
            rec.finished = self.clock()
            self._current = current
            self._emit("failed", error)

    def finish(self, message: str = "Render complete") -> None:
        with self._lock:
            self.complete(STAGES[-1])
            self._emit("completed", message)

    # -- reading -------------------------------------------------------------------------------------
    @property
    def current(self) -> Stage | None:
        return self._current

    def percent(self) -> float:
        with self._lock:
            done = sum(STAGE_WEIGHTS[s] for s, r in self._records.items() if r.finished is not None and not r.error)
            if self._current is not None and self._records[self._current].finished is None:
                done += STAGE_WEIGHTS[self._current] * self._fraction
            return round(min(100.0, done), 2)

    def timings(self) -> dict[str, float]:
        """Seconds spent in each stage that ran (the result's per-stage timings)."""
        with self._lock:
            now = self.clock()
            return {
                stage.value: round((rec.finished or now) - rec.started, 3)
                for stage, rec in self._records.items()
                if rec.started is not None
            }

    def errors(self) -> dict[str, str]:
        return {s.value: r.error for s, r in self._records.items() if r.error}

    # -- internals -----------------------------------------------------------------------------------
    def _is_behind(self, stage: Stage) -> bool:
        return self._current is not None and STAGES.index(stage) < STAGES.index(self._current)

    def _finish_current(self, message: str) -> None:
        assert self._current is not None
        rec = self._records[self._current]
        if rec.finished is None:
            rec.finished = self.clock()
            self._fraction = 1.0
            self._emit("stage_completed", message)

    def _emit(self, kind: str, message: str) -> None:
        stage = self._current or STAGES[0]
        rec = self._records[stage]
        now = self.clock()
        event = ProgressEvent(
            kind=kind,
            stage=stage,
            percent=self.percent(),
            stage_fraction=self._fraction,
            message=message,
            stage_elapsed_s=round(now - (rec.started or now), 3),
            elapsed_s=round(now - self._t0, 3),
        )
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:  # a broken sink (UI, network) must never fail the render
                log.exception("progress sink %r failed", sink)


def log_sink(logger: logging.Logger | None = None) -> ProgressSink:
    """A sink that logs stage transitions (not every sub-step, to keep logs readable)."""
    target = logger or log

    def sink(event: ProgressEvent) -> None:
        if event.kind != "progress":
            target.info("[%5.1f%%] %s: %s", event.percent, event.stage.value, event.message)

    return sink


def throttled(
    sink: ProgressSink, min_interval_s: float = 0.5, clock: Callable[[], float] = time.monotonic
) -> ProgressSink:
    """Pass stage transitions through; rate-limit sub-progress updates (for sinks that cost a request)."""
    last = [float("-inf")]

    def wrapper(event: ProgressEvent) -> None:
        now = clock()
        if event.kind == "progress" and now - last[0] < min_interval_s:
            return
        last[0] = now
        sink(event)

    return wrapper


def _label(stage: Stage) -> str:
    return stage.value.replace("_", " ").capitalize()
