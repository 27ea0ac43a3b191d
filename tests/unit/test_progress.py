from __future__ import annotations

import itertools

from mindscript.progress import STAGE_WEIGHTS, STAGES, ProgressEvent, ProgressTracker, Stage, throttled


def _tracker() -> tuple[ProgressTracker, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    ticks = itertools.count()
    return ProgressTracker(sinks=[events.append], clock=lambda: float(next(ticks))), events


def test_weights_sum_to_100_in_seed_order() -> None:
    assert sum(STAGE_WEIGHTS.values()) == 100
    assert [s.value for s in STAGES][:2] == ["INITIALIZING", "DOWNLOADING_ASSETS"]


def test_auto_advance_and_sub_progress() -> None:
    tracker, events = _tracker()
    tracker.start(Stage.INITIALIZING)
    tracker.start(Stage.GENERATING_VOICE)  # completes INITIALIZING and DOWNLOADING_ASSETS on the way
    assert tracker.percent() == 15
    tracker.update(0.5, "half the chunks")
    assert tracker.percent() == 30
    tracker.update(0.25)  # never backwards
    assert tracker.percent() == 30
    completed = [e.stage for e in events if e.kind == "stage_completed"]
    assert completed == [Stage.INITIALIZING, Stage.DOWNLOADING_ASSETS]
    assert events[-2].message == "half the chunks"


def test_reports_for_an_earlier_stage_are_ignored() -> None:
    tracker, _ = _tracker()
    tracker.start(Stage.NORMALIZING)
    before = tracker.percent()
    tracker.update(0.9, stage=Stage.MIXING_AUDIO)
    assert tracker.percent() == before
    tracker.update(0.5, stage=Stage.UPLOADING)
    assert tracker.current is Stage.UPLOADING


def test_finish_timings_and_failure() -> None:
    tracker, events = _tracker()
    tracker.start(Stage.INITIALIZING)
    tracker.finish()
    assert tracker.percent() == 100
    assert set(tracker.timings()) == {s.value for s in STAGES}
    assert all(v >= 0 for v in tracker.timings().values())
    assert events[-1].kind == "completed"

    failing, events = _tracker()
    failing.start(Stage.MIXING_AUDIO)
    failing.fail("encoder crashed")
    assert failing.errors() == {"MIXING_AUDIO": "encoder crashed"}
    assert events[-1].kind == "failed" and events[-1].stage is Stage.MIXING_AUDIO


def test_a_broken_sink_does_not_break_the_render() -> None:
    seen: list[ProgressEvent] = []

    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("UI is down")

    tracker = ProgressTracker(sinks=[broken, seen.append])
    tracker.start(Stage.INITIALIZING)
    assert seen


def test_throttle_passes_transitions_and_limits_updates() -> None:
    got: list[ProgressEvent] = []
    now = [0.0]
    sink = throttled(got.append, 1.0, clock=lambda: now[0])
    tracker = ProgressTracker(sinks=[sink])
    tracker.start(Stage.MIXING_AUDIO)
    for i in range(10):
        tracker.update(i / 10)
    assert [e.kind for e in got].count("progress") <= 1
    now[0] = 5.0
    tracker.update(0.95)
    assert got[-1].kind == "progress"


def test_stages_never_run_backwards_and_timings_stay_positive() -> None:
    tracker, _ = _tracker()
    tracker.start(Stage.INITIALIZING)
    tracker.update(0.5, stage=Stage.GENERATING_VOICE)  # a task reports ahead of the flow
    tracker.start(Stage.DOWNLOADING_ASSETS)  # the flow catches up with an earlier stage
    tracker.complete(Stage.DOWNLOADING_ASSETS)
    assert tracker.current is Stage.GENERATING_VOICE
    assert tracker.percent() == 30
    assert all(v >= 0 for v in tracker.timings().values())
