"""The bed layers: background music (fetched, decoded, measured) and tone plans (Solfeggio, binaural).

Tones are not written to files: a plan of a few numbers is enough, and the master synthesizes them block by
block faster than it could read them back from disk (a 15-minute stereo tone is 300 MB as float32).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mindscript import assets, audio_io
from mindscript.dsp import loudness, tones
from mindscript.errors import InvalidAudio, RenderError
from mindscript.job import RenderJob
from mindscript.settings import Settings

ToneKind = Literal["solfeggio", "binaural"]


@dataclass(frozen=True)
class BackgroundBed:
    path: str
    sample_rate: int
    frames: int
    measured_lufs: float
    source: str
    loop: bool

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TonePlan:
    kind: ToneKind
    left_hz: float
    right_hz: float
    amplitude: float  # linear peak per ear
    level_lufs: float  # the loudness this amplitude gives on its own

    @property
    def params(self) -> tones.ToneParams:
        return tones.ToneParams(left_hz=self.left_hz, right_hz=self.right_hz, amplitude=self.amplitude)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SkippedLayer:
    layer: str
    reason: str


def prepare_background(
    job: RenderJob, settings: Settings, workspace: Path, *, sample_rate: int, allow_local: bool,
    base_dir: Path | None = None,
) -> BackgroundBed:
    """Fetch the track, decode it to a float32 stereo WAV at the render rate, and measure its loudness."""
    layer = job.project.layers.background
    field = "payload.projectData.layers.background.trackUrl"
    if not layer.track_url:
        raise InvalidAudio(f"{field}: no track given (got None)")
    src = assets.fetch(layer.track_url, workspace, name="background-src", max_bytes=settings.max_asset_bytes,
                       timeout_s=settings.download_timeout_s, allow_local=allow_local, base_dir=base_dir,
                       field=field, policy=assets.FetchPolicy.from_settings(settings))
    max_s = settings.max_duration_minutes * 60.0 + 60.0  # a tiny file can decode to hours: stop past this
    try:
        info = audio_io.decode_to_wav(src, workspace / "background.wav", sample_rate=sample_rate, channels=2,
                                      max_duration_s=max_s)
    except RenderError as exc:  # InvalidAudio, AssetTooLarge: say which field and source, not a workspace path
        raise assets.for_field(exc, field=field, source=layer.track_url, local=src) from exc
    finally:
        src.unlink(missing_ok=True)
    meter = loudness.meter_init(sample_rate, 2)
    for block in audio_io.iter_blocks(info.path, 1 << 16):
        meter = loudness.meter_update(meter, block)
    measured = loudness.meter_result(meter).integrated_lufs
    if not math.isfinite(measured):
        raise InvalidAudio(f"{field}: the track {assets.redact_url(layer.track_url)!r} is silent")
    return BackgroundBed(path=str(info.path), sample_rate=sample_rate, frames=info.frames,
                         measured_lufs=round(measured, 3), source=assets.redact_url(layer.track_url), loop=layer.loop)


def plan_tone(kind: ToneKind, job: RenderJob, settings: Settings, *, sample_rate: int) -> TonePlan:
    """Frequencies and the amplitude that puts the tone at its level relative to the target loudness."""
    layers = job.project.layers
    if kind == "solfeggio":
        params = tones.solfeggio(layers.solfeggio.hz, 1.0)
        rel = layers.solfeggio.gain_db if layers.solfeggio.gain_db is not None else settings.solfeggio_rel_lu
    else:
        b = layers.binaural
        params = tones.binaural(b.carrier_hz, b.beat, 1.0)
        rel = b.gain_db if b.gain_db is not None else settings.binaural_rel_lu
    if max(params.left_hz, params.right_hz) >= sample_rate / 2:
        raise InvalidAudio(f"{kind} tone {max(params.left_hz, params.right_hz):g} Hz is above the Nyquist "
                           f"frequency of {sample_rate} Hz")
    level = settings.target_lufs + rel
    # A unit-amplitude tone's loudness depends on its frequency (K-weighting): measure it rather than guess.
    probe = tones.tone_block(params, sample_rate, 0, 3 * sample_rate)
    unit_lufs = loudness.integrated_loudness(probe, sample_rate)
    amplitude = float(10 ** ((level - unit_lufs) / 20.0))
    if amplitude > 0.5:
        amplitude = 0.5  # a tone bed never needs more than -6 dBFS; keeps headroom for the mix
        level = unit_lufs + 20 * math.log10(amplitude)
    return TonePlan(kind=kind, left_hz=params.left_hz, right_hz=params.right_hz, amplitude=amplitude,
                    level_lufs=round(level, 3))
