"""The soak's job mix (bench/soak.py): short jobs of every shape, and deliberately invalid payloads.

Deterministic for a seed. Scripts are paragraphs drawn from a small pool, so many chunks are shared by
several jobs (the TTS cache must synthesize each once) and each paragraph is a chunk of its own (a blank
line is a pause, and chunks never span a pause).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SENTENCES = (
    "Settle into a comfortable position and let your eyes close.",
    "Breathe in slowly through your nose.",
    "Let the breath leave you like a long, quiet sigh.",
    "Notice the weight of your hands resting in your lap.",
    "There is nowhere else you need to be right now.",
    "Feel your shoulders soften with every breath out.",
    "Let each sound around you come and go.",
    "Imagine warm light spreading slowly through your chest.",
    "If your mind wanders, gently return to the breath.",
    "Rest here for a moment in this stillness.",
    "When you are ready, let your eyes open again.",
    "Carry this calm with you into the rest of your day.",
)
OPENAI_VOICES = ("nova", "alloy", "sage")
ELEVENLABS_VOICE = "21m00Tcm4TlvDq8ikWAM"  # tests/servers/elevenlabs_server.py serves this id
SOLFEGGIO = (174, 285, 396, 417, 528, 639, 741, 852, 963)


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(payload: dict[str, Any]) -> None:
        node = payload
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return mutate


def _drop_project(payload: dict[str, Any]) -> None:
    del payload["projectData"]


# (field the failure message must name, how the payload is broken)
INVALID: tuple[tuple[str, Callable[[dict[str, Any]], None]], ...] = (
    ("durationMin", _set(("projectData", "durationMin"), -5)),
    ("durationMin", _set(("projectData", "durationMin"), "long")),
    ("solfeggio.hz", _set(("projectData", "layers", "solfeggio"), {"enabled": True, "hz": 25000})),
    ("beatHz", _set(("projectData", "layers", "binaural"), {"enabled": True, "band": "theta", "beatHz": 20})),
    ("outputOptions.format", _set(("outputOptions", "format"), "ogg")),
    ("voice.speed", _set(("projectData", "layers", "voice", "speed"), 9)),
    ("voice.provider", _set(("projectData", "layers", "voice", "provider"), "bogus")),
    ("projectData", _drop_project),
)


@dataclass(frozen=True)
class PlannedJob:
    """One queued job: its shape, its payload, and what must become of it."""

    shape: str  # local | openai | elevenlabs | tones | invalid
    payload: dict[str, Any]
    invalid_field: str | None = None  # for invalid payloads: the field the row's error must name
    provider: str | None = None
    voice: str | None = None
    paragraphs: tuple[str, ...] = ()
    background: bool = False

    @property
    def valid(self) -> bool:
        return self.invalid_field is None


def plan_jobs(n: int, seed: int, background_url: str, *, invalid_every: int = 10) -> list[PlannedJob]:
    """``n`` jobs: every ``invalid_every``-th one invalid, the rest local / OpenAI / ElevenLabs voices and
    tone-only programs, some with a background track, MP3 and WAV, public and private, 0.05-0.2 min."""
    rng = random.Random(seed)
    jobs: list[PlannedJob] = []
    for i in range(n):
        shape = rng.choices(("local", "openai", "elevenlabs", "tones"), weights=(30, 30, 25, 15))[0]
        paragraphs = tuple(rng.sample(SENTENCES, rng.randint(1, 3)))
        provider, voice = {"local": ("local", "en-us"), "openai": ("openai", rng.choice(OPENAI_VOICES)),
                           "elevenlabs": ("elevenlabs", ELEVENLABS_VOICE), "tones": (None, None)}[shape]
        layers: dict[str, Any] = {
            "voice": {"enabled": provider is not None, "provider": provider or "local", "voiceCode": voice or "en-us"},
            "solfeggio": {"enabled": shape == "tones" or rng.random() < 0.6, "hz": rng.choice(SOLFEGGIO)},
            "binaural": {"enabled": rng.random() < 0.5, "band": "alpha", "beatHz": 10},
        }
        background = rng.random() < 0.3
        if background:
            layers["background"] = {"enabled": True, "trackUrl": background_url}
        payload: dict[str, Any] = {
            "type": "render",
            "projectData": {"scriptText": "\n\n".join(paragraphs) if provider else "",
                            "durationMin": round(rng.uniform(0.05, 0.2), 3), "layers": layers},
            "outputOptions": {"format": "wav" if rng.random() < 0.15 else "mp3", "quality": "low",
                              "storageLocation": "public" if rng.random() < 0.4 else "private"},
        }
        if invalid_every and i % invalid_every == invalid_every - 1:
            field, mutate = INVALID[(i // invalid_every) % len(INVALID)]
            broken = copy.deepcopy(payload)
            mutate(broken)
            jobs.append(PlannedJob("invalid", broken, invalid_field=field))
            continue
        jobs.append(PlannedJob(shape, payload, provider=provider, voice=voice,
                               paragraphs=paragraphs if provider else (), background=background))
    return jobs
