"""The job payload and the render result, as pydantic models with the app's camelCase JSON names.

The app writes the payload (see ARCHITECTURE.md); it is validated once, at the flow boundary. Every
validation message names the field by its JSON path and quotes the offending value, e.g.
``payload.projectData.durationMin: must be greater than 0 and at most 60 minutes (got -5)``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from mindscript.errors import InvalidJob

# Frequencies of the nine "classic" Solfeggio tones; others are allowed with a warning.
CLASSIC_SOLFEGGIO_HZ = (174.0, 285.0, 396.0, 417.0, 528.0, 639.0, 741.0, 852.0, 963.0)

# Brainwave bands for binaural beats, in Hz (inclusive bounds).
BINAURAL_BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 100.0),
}

# MP3 CBR bitrates (kbps) by quality. 128 kbps is the floor: lower rates use aggressive joint-stereo and
# low-pass settings that audibly smear a binaural beat's interaural difference.
MP3_BITRATES_KBPS: dict[str, int] = {"low": 128, "medium": 160, "high": 192}

# Matched with fullmatch: "$" would also accept a trailing newline ("job-1\n").
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# How much of an offending value a validation message quotes.
QUOTE_LIMIT = 120


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads true/false as 1/0; a boolean where a number belongs is a client bug.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
    )


class _Layer(_Model):
    enabled: bool = False
    gain_db: Number | None = Field(default=None, ge=-60.0, le=12.0)


class VoiceLayer(_Layer):
    enabled: bool = True
    provider: Literal["local", "openai", "elevenlabs", "upload"] | None = None
    voice_code: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=100)
    speed: Number = Field(default=1.0, ge=0.5, le=2.0)
    instructions: str | None = Field(default=None, max_length=4000)


class BackgroundLayer(_Layer):
    track_url: str | None = Field(default=None, max_length=4096)
    loop: bool = True


class SolfeggioLayer(_Layer):
    hz: Number = 528.0

    @field_validator("hz")
    @classmethod
    def _hz_audible(cls, value: float) -> float:
        if not 0.0 < value < 20000.0:
            raise ValueError("must be above 0 and below 20000 Hz")
        return value


class BinauralLayer(_Layer):
    band: Literal["delta", "theta", "alpha", "beta", "gamma"] = "theta"
    beat_hz: Number | None = None
    carrier_hz: Number = 200.0

    @field_validator("carrier_hz")
    @classmethod
    def _carrier_range(cls, value: float) -> float:
        if not 40.0 <= value <= 1000.0:
            raise ValueError("must be between 40 and 1000 Hz")
        return value

    @model_validator(mode="after")
    def _beat_in_band(self) -> BinauralLayer:
        lo, hi = BINAURAL_BANDS[self.band]
        if self.beat_hz is None:
            object.__setattr__(self, "beat_hz", (lo + hi) / 2.0)
        elif not lo <= self.beat_hz <= hi:
            raise ValueError(
                f"beatHz must lie inside the {self.band} band ({lo:g}-{hi:g} Hz) (got {self.beat_hz!r})"
            )
        return self

    @property
    def beat(self) -> float:
        assert self.beat_hz is not None  # set by the validator
        return self.beat_hz


class Layers(_Model):
    voice: VoiceLayer = VoiceLayer()
    background: BackgroundLayer = BackgroundLayer()
    solfeggio: SolfeggioLayer = SolfeggioLayer()
    binaural: BinauralLayer = BinauralLayer()


class ProjectData(_Model):
    script_text: str = Field(default="", max_length=200_000)
    voice_ref: str | None = Field(default=None, max_length=4096)
    duration_min: Number
    layers: Layers = Layers()

    @field_validator("duration_min")
    @classmethod
    def _duration_range(cls, value: float, info: ValidationInfo) -> float:
        limit = _max_duration(info)
        if not 0.0 < value <= limit:
            raise ValueError(f"must be greater than 0 and at most {limit:g} minutes")
        return value


class OutputOptions(_Model):
    format: Literal["mp3", "wav"] = "mp3"
    quality: Literal["low", "medium", "high"] = "high"
    storage_location: Literal["public", "private"] = "private"
    sample_rate: Literal[44100, 48000] = 44100

    @property
    def bitrate_kbps(self) -> int:
        return MP3_BITRATES_KBPS[self.quality]


class Payload(_Model):
    type: Literal["render"] = "render"
    project_data: ProjectData
    output_options: OutputOptions = OutputOptions()


class RenderJob(_Model):
    """One render job: ``{"id": ..., "payload": {...}}``."""

    id: str
    payload: Payload

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        # The id becomes part of workspace paths and storage keys: keep it to a safe alphabet.
        if not JOB_ID_PATTERN.fullmatch(value):
            raise ValueError("must be 1-128 characters of letters, digits, '.', '_' or '-', not starting with a symbol")
        return value

    @property
    def project(self) -> ProjectData:
        return self.payload.project_data

    @property
    def output(self) -> OutputOptions:
        return self.payload.output_options

    def warnings(self) -> list[str]:
        """Advisory notes about valid but unusual choices (they go into the result's warnings)."""
        notes = []
        sol = self.project.layers.solfeggio
        if sol.enabled and not any(abs(sol.hz - f) < 1e-6 for f in CLASSIC_SOLFEGGIO_HZ):
            classic = ", ".join(f"{f:g}" for f in CLASSIC_SOLFEGGIO_HZ)
            notes.append(
                f"payload.projectData.layers.solfeggio.hz {sol.hz:g} Hz is not one of the classic "
                f"Solfeggio frequencies ({classic})"
            )
        return notes


def _max_duration(info: ValidationInfo) -> float:
    context = info.context or {}
    if "max_duration_minutes" in context:
        return float(context["max_duration_minutes"])
    from mindscript.settings import get_settings

    return get_settings().max_duration_minutes


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: JSON path, what is wrong, and the value that was given."""
    lines = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "(job)"
        msg = err["msg"].removeprefix("Value error, ")
        if "(got " in msg:
            lines.append(f"{path}: {msg}")
        elif err["type"] == "missing":
            lines.append(f"{path}: field required")
        else:
            lines.append(f"{path}: {msg} (got {_quote(err.get('input'))})")
    return "; ".join(lines)


def _quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """The offending value for a message: JSON for objects and arrays, ``repr`` otherwise, at most ``limit``
    characters. Bounded work for any input: huge strings are cut before ``repr``, containers are encoded
    lazily and only up to the limit (deeply nested input never reaches the recursion limit)."""
    try:
        if isinstance(value, dict | list):
            text = ""
            for chunk in json.JSONEncoder(skipkeys=True, default=repr).iterencode(value):
                text += chunk
                if len(text) > limit:
                    break
        elif isinstance(value, str | bytes):
            text = repr(value[: limit + 1])
        elif isinstance(value, int) and value.bit_length() > 10_000:  # repr refuses past 4300 digits
            text = f"<an integer of about {math.floor(value.bit_length() * math.log10(2)) + 1} digits>"
        else:
            text = repr(value)
    except (ValueError, TypeError, RecursionError):  # e.g. an int past the int-to-str digit limit
        text = f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_job(data: Any, *, max_duration_minutes: float | None = None) -> RenderJob:
    """Validate a job from a dict (or a JSON string); raise ``InvalidJob`` naming each bad field."""
    context = {} if max_duration_minutes is None else {"max_duration_minutes": max_duration_minutes}
    try:
        if isinstance(data, str | bytes):
            return RenderJob.model_validate_json(data, context=context)
        return RenderJob.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidJob(format_validation_error(exc), stage="INITIALIZING") from exc
