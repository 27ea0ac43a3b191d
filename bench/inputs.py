"""The benchmark's deterministic inputs and the job every system renders.

    python bench/inputs.py          # generate what is missing in bench/.cache/ (run by the benchmarks)

Inputs: a 9-minute speech-like voice WAV (float32, mono), a 90-second music pad MP3 (looped by every system),
and ``levels.json``: the constant layer gains the peer pipelines use
(what an engineer would set once by ear), derived from this project's defaults so every system mixes the same
program: the voice as recorded (unity gain), music 14 LU under it, Solfeggio and binaural at their relative
levels; each peer then normalizes the whole mix to TARGET_LUFS.

A job shorter than the voice plus its lead-in and tail gets the voice's first seconds as its own file
(``voice_for()``), so every system, this render included, reads only the voice the program holds.
Generation runs in its own process (``ensure()``), so a render process's peak RSS never includes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
SAMPLE_RATE = 44100
VOICE_S = 540.0
MUSIC_S = 90.0
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Inputs:
    voice: Path
    music: Path
    levels: Path

    def all(self) -> tuple[Path, ...]:
        return (self.voice, self.music, self.levels)

    def read_levels(self) -> dict[str, Any]:
        return dict(json.loads(self.levels.read_text()))


def paths() -> Inputs:
    return Inputs(CACHE / "voice.wav", CACHE / "music.mp3", CACHE / "levels.json")


def voice_seconds(duration_s: float) -> float:
    """How much voice a ``duration_s`` job holds: all of it, or what fits between the lead-in and the tail."""
    from mindscript.settings import Settings

    s = Settings()
    return max(1.0, min(VOICE_S, duration_s - s.voice_lead_in_s - s.voice_tail_s))


def voice_for(duration_s: float) -> Path:
    seconds = voice_seconds(duration_s)
    return paths().voice if seconds >= VOICE_S else CACHE / f"voice-{seconds:g}s.wav"


def ensure(duration_s: float | None = None) -> Inputs:
    """The inputs (and the voice of a ``duration_s`` job), generated first in a separate process if missing."""
    inp = paths()
    wanted = [*inp.all(), *([voice_for(duration_s)] if duration_s else [])]
    if not all(p.exists() for p in wanted):
        cmd = [sys.executable, str(Path(__file__).resolve())]
        # its listing goes to stderr: a benchmark's stdout is its one JSON line
        subprocess.run(cmd + (["--duration", str(duration_s)] if duration_s else []), check=True, cwd=ROOT,
                       stdout=sys.stderr)
    return inp


def job_payload(duration_s: float, *, music: Path, voice_ref: str | None = None, job_id: str = "bench",
                fmt: str = "mp3") -> dict[str, Any]:
    """The benchmark job: voice, looped music, Solfeggio 528 Hz, binaural theta 7 Hz on a 200 Hz carrier."""
    voice: dict[str, Any] = {"enabled": True}
    project: dict[str, Any] = {"durationMin": duration_s / 60, "layers": {
        "voice": voice, "background": {"enabled": True, "trackUrl": str(music)},
        "solfeggio": {"enabled": True, "hz": 528},
        "binaural": {"enabled": True, "band": "theta", "beatHz": 7, "carrierHz": 200}}}
    if voice_ref is not None:
        project["voiceRef"] = voice_ref
        voice["provider"] = "upload"
    return {"id": job_id, "payload": {"type": "render", "projectData": project,
                                      "outputOptions": {"format": fmt, "quality": "high"}}}


def _levels(inp: Inputs) -> dict[str, Any]:
    """Constant gains for the peers: each layer at this project's default level relative to the voice."""
    import numpy as np
    import pyloudnorm
    import soundfile as sf

    from mindscript import layers
    from mindscript.job import parse_job
    from mindscript.settings import Settings

    settings = Settings(max_duration_minutes=240, allow_local_assets=True)
    job = parse_job(job_payload(600, music=inp.music), max_duration_minutes=240)
    meter = pyloudnorm.Meter(SAMPLE_RATE)
    voice, _ = sf.read(inp.voice, dtype="float64", always_2d=True)
    voice_lufs = meter.integrated_loudness(np.repeat(voice[:, :1], 2, axis=1))  # placed in both ears
    music, _ = sf.read(inp.music, dtype="float64", always_2d=True)
    music_lufs = meter.integrated_loudness(music)
    tones = {k: layers.plan_tone(k, job, settings, sample_rate=SAMPLE_RATE) for k in ("solfeggio", "binaural")}
    # plan_tone sets amplitudes for a voice at the target; the peers leave the voice at its recorded level
    shift = 10 ** ((voice_lufs - settings.target_lufs) / 20)
    return {
        "sample_rate": SAMPLE_RATE,
        "target_lufs": settings.target_lufs,
        "true_peak_dbtp": settings.true_peak_ceiling_dbtp,
        "voice_lufs": round(voice_lufs, 3),
        "music_lufs": round(music_lufs, 3),
        "music_gain_db": round(voice_lufs + settings.background_rel_lu - music_lufs, 3),
        "voice_lead_in_s": settings.voice_lead_in_s,
        "music_fade_in_s": settings.background_fade_in_s,
        "tone_fade_in_s": settings.tone_fade_s,
        "fade_out_s": max(settings.program_fade_out_s, settings.tone_fade_s),
        "tones": {k: {"left_hz": t.left_hz, "right_hz": t.right_hz, "amplitude": round(t.amplitude * shift, 6)}
                  for k, t in tones.items()},
    }


def generate(duration_s: float | None = None) -> list[Path]:
    from examples.make_assets import ambient_pad, speech_like, write_mp3
    from mindscript import audio_io

    inp = paths()
    CACHE.mkdir(parents=True, exist_ok=True)
    if not inp.voice.exists():
        audio_io.write_wav_f32(inp.voice, speech_like(VOICE_S, SAMPLE_RATE), SAMPLE_RATE)
    made = list(inp.all())
    if duration_s:
        voice = voice_for(duration_s)
        if not voice.exists():
            frames = int(voice_seconds(duration_s) * SAMPLE_RATE)
            audio_io.write_wav_f32(voice, next(audio_io.iter_blocks(inp.voice, frames, frames=frames)), SAMPLE_RATE)
        made.append(voice)
    if not inp.music.exists():
        write_mp3(inp.music, ambient_pad(MUSIC_S, SAMPLE_RATE), SAMPLE_RATE)
    if not inp.levels.exists():
        inp.levels.write_text(json.dumps(_levels(inp), indent=2) + "\n")
    return made


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, help="also cut the voice of a job of this many seconds")
    for path in generate(parser.parse_args().duration):
        print(path.relative_to(ROOT))
