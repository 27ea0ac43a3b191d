"""The voice stem: script -> speech chunks -> provider audio -> one mono float32 WAV in the workspace.

Pauses from the script become exact digital silence written here, never sent to a provider. The stem is
measured once (BS.1770 integrated loudness, gated) so the master can normalize it to TARGET_LUFS, and a
speech-activity flag per 10 ms hop is saved beside it for ducking and for the "speech loudness" figure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mindscript import allocator, assets, audio_io, parts
from mindscript.dsp import ducking, limiter, loudness
from mindscript.errors import AssetNotFound, InvalidAudio, InvalidJob, RenderError, StorageError, StorageRejected
from mindscript.job import RenderJob
from mindscript.script import Pause, Speech, chunk_text, parse_script
from mindscript.settings import Settings
from mindscript.storage.base import StorageReader, check_object_key
from mindscript.tts.base import AudioFormat, TTSProvider, TTSRequest
from mindscript.tts.cache import AudioStore, ChunkRef, MemoryAudioStore, cache_key, fetch_or_synthesize

log = logging.getLogger(__name__)

CHUNK_GAP_S = 0.35  # breath between chunks of one paragraph (a sentence boundary)
EDGE_FADE_S = 0.005  # click-free chunk joins
TRIM_THRESHOLD_DB = -50.0  # provider lead/tail silence below this (relative to the chunk peak) is trimmed
TRIM_KEEP_S = 0.03
HOP_S = 0.01
# Speech is peaky (espeak-ng and many recordings peak 15-20 dB over their loudness). The stem is levelled on
# its own: normalized to the target and peak-limited this far below the true-peak ceiling, so the master's
# limiter rarely touches the voice and the delivered loudness lands on the target instead of being
# squashed below it. The rest of the headroom is for the beds and the MP3 encoder's overshoot.
VOICE_PEAK_HEADROOM_DB = 2.0
LEVEL_TOLERANCE_LU = 1.0  # the rest is master voice gain, which fits in the peak headroom
MAX_FIT_STEPS = 6
SAMPLE_S = 120  # excerpt length the levelling gain is fitted on
FIT_COARSE_EVERY = 4  # the search starts on every 4th 2 s piece of the excerpt (~30 s)
# Mono stems are analysed and limited in blocks this long (measured on a 9-minute stem: 10 s blocks were 30 %
# slower, their multi-MB temporaries page-faulting; 32k-frame blocks 10 % slower, per-block overhead).
STEM_BLOCK_FRAMES = 1 << 16


@dataclass(frozen=True)
class VoiceChoice:
    provider: str
    voice: str
    model: str | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class VoiceStem:
    """A small reference to the voice stem file and what the master needs to know about it."""

    path: str
    analysis_path: str  # .npz: "activity" (bool per hop) and "speech_blocks" (bool per 400 ms gating block)
    sample_rate: int
    frames: int
    hop_frames: int
    measured_lufs: float
    speech_s: float
    provider: str
    voice: str
    model: str | None
    characters: int
    chunks: int
    cache_hits: int = 0
    estimated_cost_usd: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_voice(job: RenderJob, settings: Settings, available: set[str]) -> VoiceChoice:
    """Which provider and voice read the script.

    Precedence: ``layers.voice.provider``/``voiceCode`` when given, else the ``voiceRef`` "provider:voice"
    string, else the local voice. A provider that is not available here falls back to the local voice, with
    a warning (the local espeak-ng voice needs no key and is the last fallback).
    """
    layer = job.project.layers.voice
    ref_provider, ref_voice = None, None
    if job.project.voice_ref:
        ref_provider, _, ref_voice = job.project.voice_ref.partition(":")
        ref_provider = ref_provider.strip().lower() or None
        ref_voice = ref_voice.strip() or None
    provider = layer.provider or ref_provider or "local"
    voice = layer.voice_code or (ref_voice if provider == ref_provider else None)
    notes: list[str] = []
    if provider not in available:
        notes.append(f"voice provider {provider!r} is not available on this worker; used the local voice instead")
        provider, voice = "local", None
    if provider == "local" and not voice:
        voice = settings.local_voice
    if not voice:
        raise InvalidJob(f"payload.projectData.layers.voice.voiceCode: required for provider {provider!r} (got None)")
    return VoiceChoice(provider=provider, voice=voice, model=layer.model, warnings=tuple(notes))


# ---- voice track: plan (chunks + exact pauses), synthesize through the cache, assemble ----
CONTEXT_CHARS = 1000  # previous/next text handed to providers that use it (ElevenLabs)


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk to synthesize: its position, the request, and its content-hash cache key."""

    index: int
    provider: str
    request: TTSRequest
    key: str
    audio_format: AudioFormat


@dataclass(frozen=True)
class VoicePlan:
    """The voice track as speech chunks and exact pauses (seconds), in order."""

    choice: VoiceChoice
    items: tuple[ChunkSpec | float, ...]

    @property
    def chunks(self) -> list[ChunkSpec]:
        return [item for item in self.items if isinstance(item, ChunkSpec)]

    @property
    def characters(self) -> int:
        return sum(len(c.request.text) for c in self.chunks)


def plan_voice(job: RenderJob, settings: Settings, tts: TTSProvider, choice: VoiceChoice) -> VoicePlan:
    """Split the script into chunks of at most min(TTS_CHUNK_SIZE, the model's limit) and exact pauses.

    Pauses are never sent to a provider. Each chunk's request carries the neighbouring chunks' text when the
    provider uses it (``uses_context``), and its cache key hashes everything that shapes the audio.
    """
    layer = job.project.layers.voice
    segments = parse_script(job.project.script_text, paragraph_pause_s=settings.paragraph_pause_s)
    limit = min(settings.tts_chunk_size, tts.max_chars(choice.model))
    raw: list[str | float] = []  # chunk text, or seconds of silence
    for seg in segments:
        if isinstance(seg, Pause):
            raw.append(seg.seconds)
        elif isinstance(seg, Speech):
            for i, piece in enumerate(chunk_text(seg.text, limit)):
                if i:
                    raw.append(CHUNK_GAP_S)
                raw.append(piece)
    texts = [p for p in raw if isinstance(p, str)]
    if not texts:
        raise InvalidJob(
            f"payload.projectData.scriptText: no speakable text for the enabled voice layer "
            f"(got {job.project.script_text[:60]!r})"
        )
    uses_context = bool(getattr(tts, "uses_context", False))
    fmt = tts.audio_format
    items: list[ChunkSpec | float] = []
    n = 0
    for item in raw:
        if isinstance(item, float):
            items.append(item)
            continue
        request = TTSRequest(
            text=item, voice=choice.voice, model=choice.model, speed=layer.speed, instructions=layer.instructions,
            previous_text=texts[n - 1][-CONTEXT_CHARS:] if uses_context and n > 0 else None,
            next_text=texts[n + 1][:CONTEXT_CHARS] if uses_context and n + 1 < len(texts) else None,
        )
        key = cache_key(provider=choice.provider, model=choice.model, voice=choice.voice,
                        output_format=f"{fmt.fmt}/{fmt.sample_rate}/{fmt.channels}", text=request.text,
                        speed=request.speed, instructions=request.instructions,
                        voice_settings=tts.key_params(request), previous_text=request.previous_text,
                        next_text=request.next_text)
        items.append(ChunkSpec(index=n, provider=choice.provider, request=request, key=key, audio_format=fmt))
        n += 1
    return VoicePlan(choice=choice, items=tuple(items))


def assemble_voice(
    plan: VoicePlan, refs: Sequence[ChunkRef], store: AudioStore, workspace: Path, settings: Settings, *,
    sample_rate: int, price_per_million: float = 0.0, warnings: Sequence[str] = (),
) -> VoiceStem:
    """Write ``workspace/voice.wav`` from the chunks' stored audio (in plan order) and exact pauses; measure it.

    ``refs`` are the chunks' references in plan order. The estimated cost counts only the characters that
    were sent to the provider in this render (cache hits are free).
    """
    chunks = plan.chunks
    if len(refs) != len(chunks):
        raise ValueError(f"expected {len(chunks)} chunk refs, got {len(refs)}")
    by_index = dict(zip((c.index for c in chunks), refs, strict=True))
    stem_path = workspace / "voice.wav"
    with audio_io.open_stem_writer(stem_path, sample_rate=sample_rate, channels=1) as stem:
        for item in plan.items:
            if isinstance(item, float):
                stem.write(np.zeros((int(round(item * sample_rate)), 1), dtype=np.float32))
                continue
            ref = by_index[item.index]
            data = store.get(ref.key)
            if data is None:
                raise StorageError(f"TTS cache: audio for chunk {item.index} ({ref.key}) is missing from the store")
            samples = audio_io.decode_bytes(data, sample_rate=sample_rate, channels=1, fmt_hint=ref.fmt,
                                            pcm_rate=ref.sample_rate)
            stem.write(_trim_and_fade(samples, sample_rate))
    billed = sum(ref.characters for ref in refs if not ref.cached)
    stem_ref = _measure_stem(stem_path, plan.choice, sample_rate=sample_rate, characters=plan.characters,
                             chunks=len(chunks), warnings=tuple(plan.choice.warnings) + tuple(warnings),
                             target_lufs=settings.target_lufs,
                             peak_dbtp=settings.true_peak_ceiling_dbtp - VOICE_PEAK_HEADROOM_DB)
    return replace(stem_ref, cache_hits=sum(1 for ref in refs if ref.cached),
                   estimated_cost_usd=round(billed * price_per_million / 1e6, 6))


def render_voice(
    job: RenderJob,
    settings: Settings,
    workspace: Path,
    tts: TTSProvider,
    choice: VoiceChoice,
    *,
    sample_rate: int,
    on_progress: Callable[[float, str], None] | None = None,
    store: AudioStore | None = None,
) -> VoiceStem:
    """Synthesize the script into ``workspace/voice.wav`` one chunk after another, and measure it.

    The sequential path (no Prefect): the render flow fans chunks out as tasks instead (tasks/voice.py).
    Without a ``store``, chunk audio is kept in memory for this call only.
    """
    plan = plan_voice(job, settings, tts, choice)
    store = store if store is not None else MemoryAudioStore()
    refs = []
    for done, spec in enumerate(plan.chunks, start=1):
        refs.append(fetch_or_synthesize(store, spec.key, tts, spec.request, spec.audio_format))
        if on_progress:
            on_progress(done / len(plan.chunks), f"voice chunk {done}/{len(plan.chunks)}")
    return assemble_voice(plan, refs, store, workspace, settings, sample_rate=sample_rate,
                          price_per_million=settings.tts_price_per_million(choice.provider, choice.model))
# ---- end voice track ----


def prepare_recording(
    source: Path, workspace: Path, *, sample_rate: int, max_duration_s: float, target_lufs: float,
    peak_dbtp: float, label: str = "upload",
) -> VoiceStem:
    """An uploaded recording as the voice stem: decoded (any codec) to mono at the render rate, levelled.

    A mono lossless file already at the render rate (WAV, FLAC, AIFF...) is analysed and levelled where it
    is: the stem is written once, by the levelling (or copied when it needs none), instead of being copied
    first and rewritten after. The samples read are the same float32 values either way.
    """
    stem_path = workspace / "voice.wav"
    in_place = audio_io.reads_as_stem(source, sample_rate=sample_rate, max_duration_s=max_duration_s)
    if not in_place:
        audio_io.decode_to_wav(source, stem_path, sample_rate=sample_rate, channels=1,
                               max_duration_s=max_duration_s)
    choice = VoiceChoice(provider="upload", voice=label, model=None)
    return _measure_stem(stem_path, choice, sample_rate=sample_rate, characters=0, chunks=0, warnings=(),
                         target_lufs=target_lufs, peak_dbtp=peak_dbtp, source=source if in_place else None,
                         max_duration_s=max_duration_s)


# ---- uploaded recordings ----
def uses_recording(job: RenderJob) -> bool:
    """Whether the job's voice is an uploaded recording (it needs no script text)."""
    layer = job.project.layers.voice
    if layer.provider is not None:
        return layer.provider == "upload"
    return (job.project.voice_ref or "").strip().lower().startswith("upload:")


def recording_source(choice: VoiceChoice) -> str:
    """The source of an ``upload:`` voice: an https URL, a path in the configured storage, or (CLI) a file."""
    return choice.voice


def prepare_upload(
    source: str, workspace: Path, settings: Settings, *, sample_rate: int, storage: StorageReader | None = None,
) -> VoiceStem:
    """Fetch an uploaded recording once (size cap, timeout) and make it the voice stem, levelled like TTS.

    ``source`` is an ``https://`` URL; a key in the configured storage (``storage``: local directory, S3 or
    Supabase; e.g. ``uploads/abc.m4a``: it must be a plain key under RECORDINGS_PREFIX, read from
    RECORDINGS_BUCKET or else the private bucket, streamed by the storage adapter); or, only where
    ALLOW_LOCAL_ASSETS is set (CLI renders), a local file path. Any codec ffmpeg decodes is accepted.
    """
    field = "payload.projectData.voiceRef"
    parsed_scheme = source.split(":", 1)[0].lower() if "://" in source else ""
    fetched: Path | None = None
    if not parsed_scheme and storage is not None:
        try:
            key = check_object_key(source, settings.recordings_prefix)
        except StorageRejected as exc:
            if not settings.allow_local_assets:  # queue jobs: a storage key or a URL, nothing else
                raise InvalidJob(
                    f"{field}: {source!r} is not an https URL nor a key in the {storage.name} storage "
                    f"(RECORDINGS_PREFIX={settings.recordings_prefix!r}: {exc.message}); local files are not "
                    "allowed for queue jobs") from exc
        else:
            suffix = Path(key).suffix.lower()[:8]
            dest = workspace / f"recording{suffix if suffix.isascii() else ''}"
            try:
                storage.download(key, dest, bucket=settings.recordings_bucket, max_bytes=settings.max_asset_bytes,
                                 timeout_s=settings.download_timeout_s)
                fetched = dest
            except AssetNotFound:
                if not settings.allow_local_assets:
                    raise
                log.info("%r is not in the %s storage; trying it as a local file (ALLOW_LOCAL_ASSETS)", key,
                         storage.name)
    if fetched is None:  # https only (http with ALLOW_HTTP_ASSETS), network rules enforced by the fetch
        fetched = assets.fetch(source, workspace, name="recording", max_bytes=settings.max_asset_bytes,
                               timeout_s=settings.download_timeout_s, allow_local=settings.allow_local_assets,
                               base_dir=settings.asset_base_dir, field=field,
                               policy=assets.FetchPolicy.from_settings(settings))
    label = assets.shown(source) if parsed_scheme else Path(source).name
    try:
        return prepare_recording(fetched, workspace, sample_rate=sample_rate,
                                 max_duration_s=settings.max_duration_minutes * 60.0, target_lufs=settings.target_lufs,
                                 peak_dbtp=settings.true_peak_ceiling_dbtp - VOICE_PEAK_HEADROOM_DB, label=label)
    except RenderError as exc:  # decode errors name the job's field and source, not the workspace copy
        raise assets.for_field(exc, field=field, source=source, local=fetched) from exc
# ---- end uploaded recordings ----


@dataclass(frozen=True)
class _StemAnalysis:
    frames: int
    lufs: float  # integrated, as heard (the mono stem in both channels)
    true_peak_db: float | None  # None when not measured (a levelled stem: its limiter bounds the peak)
    activity: np.ndarray  # bool per hop
    speech_blocks: np.ndarray  # bool per 400 ms gating block the integrated loudness counted


# The mono stem is heard in both channels: BS.1770-4 eq. 2 sums G_i z_i over channels, so one channel of
# weight 2 reads exactly what the stem duplicated into L and R reads (+3 dB over a mono reading).
_HEARD_WEIGHTS = (2.0,)
# A stem longer than 2 minutes is analysed and levelled as two stretches at once (mindscript.parts); a fixed
# count, not the core count, so a stem gives the same figures on every machine.
STEM_PARTS = 2
STEM_PART_MIN_S = 60
# Each later stretch starts its limiter this early: by the cut its gain equals a single pass's (the release
# is 80 ms; gain reductions of tens of dB have converged well within a few seconds).
LIMITER_PREROLL_S = 3
FIT_PART_MIN_S = 15  # the gain search measures excerpts of 30 s or more as two halves at once


class _Hops:
    """Speech activity per 10 ms hop of a stem fed in blocks of any length (frames carried to whole hops)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.hop = int(round(HOP_S * sample_rate))
        self.flags: list[np.ndarray] = []
        self.carry = np.zeros((0, 1), dtype=np.float32)

    def add(self, mono: np.ndarray) -> None:
        x = np.concatenate([self.carry, mono]) if len(self.carry) else mono
        whole = len(x) // self.hop * self.hop
        if whole:
            self.flags.append(ducking.speech_activity(x[:whole], self.sample_rate, self.hop))
        self.carry = np.array(x[whole:])

    def result(self) -> np.ndarray:
        if len(self.carry):  # the final partial hop is measured over the frames it has
            self.flags.append(ducking.speech_activity(self.carry, self.sample_rate, self.hop))
            self.carry = self.carry[:0]
        return np.concatenate(self.flags) if self.flags else np.zeros(0, dtype=bool)


def _stem_stretches(info: audio_io.AudioInfo) -> list[parts.Stretch]:
    if info.channels != 1:
        raise InvalidAudio(f"voice stem '{info.path}' must be mono, got {info.channels} channels")
    stretches = parts.plan_stretches(info.frames, info.sample_rate, parts=STEM_PARTS, min_s=STEM_PART_MIN_S)
    hop = int(round(HOP_S * info.sample_rate))
    if any(s.start % hop for s in stretches):  # a rate whose second is not whole hops: one pass
        return parts.plan_stretches(info.frames, info.sample_rate, parts=1, min_s=STEM_PART_MIN_S)
    return stretches


def _joined(stretches: list[parts.Stretch], measured: list[tuple[parts.Measured, np.ndarray]], sample_rate: int,
            *, true_peak: bool) -> _StemAnalysis:
    meter = parts.join_meters(stretches, [m.meter for m, _ in measured], sample_rate)
    peak = max(m.peak for m, _ in measured)
    return _StemAnalysis(
        frames=sum(m.frames for m, _ in measured),
        lufs=loudness.meter_result(meter).integrated_lufs,
        true_peak_db=(20 * math.log10(peak) if peak > 0 else -math.inf) if true_peak else None,
        activity=np.concatenate([flags for _, flags in measured]),
        speech_blocks=loudness.gated_blocks(meter),
    )


def _analyse(path: Path, sample_rate: int) -> _StemAnalysis:
    """Loudness (as heard in both channels), true peak and speech activity of a mono stem, in one pass
    (two stretches at once for stems over 2 minutes)."""
    info = audio_io.read_info(path)
    if info.sample_rate != sample_rate:
        raise InvalidAudio(f"voice stem '{path}' is at {info.sample_rate} Hz, expected {sample_rate} Hz")
    stretches = _stem_stretches(info)

    def one(stretch: parts.Stretch) -> tuple[parts.Measured, np.ndarray]:
        hops = _Hops(sample_rate)
        measured = parts.measure_stretch(path, info, stretch, weights=_HEARD_WEIGHTS, on_block=hops.add,
                                         blocksize=STEM_BLOCK_FRAMES)
        return measured, hops.result()

    return _joined(stretches, parts.run(one, stretches, name="stem"), sample_rate, true_peak=True)


def _limited_loudness(x: np.ndarray, gain_db: float, sample_rate: int, peak_dbtp: float) -> float:
    """Loudness (as heard in both channels) of ``x`` after the gain and the limiter, block by block.

    An excerpt of 30 s or more is measured as two halves at once, each with its own limiter (an excerpt is
    already a string of pieces whose joins the limiter meets cold).
    """
    params = limiter.LimiterParams(sample_rate=sample_rate, ceiling_dbtp=peak_dbtp)
    gain = np.float32(10 ** (gain_db / 20))

    def one(stretch: parts.Stretch) -> loudness.MeterState:
        state = limiter.limiter_init(params, 1)
        meter = loudness.meter_init(sample_rate, 1, weights=_HEARD_WEIGHTS)
        for start in range(stretch.start, stretch.stop, STEM_BLOCK_FRAMES):
            out, state = limiter.limiter_process(state, x[start:min(stretch.stop, start + STEM_BLOCK_FRAMES)] * gain)
            meter = loudness.meter_update(meter, out)
        out, state = limiter.limiter_flush(state)
        return loudness.meter_update(meter, out)

    stretches = parts.plan_stretches(len(x), sample_rate, parts=2, min_s=FIT_PART_MIN_S, preroll_s=0)
    meters = parts.run(one, stretches, name="fit")
    return loudness.meter_result(parts.join_meters(stretches, meters, sample_rate)).integrated_lufs


def _search_gain(x: np.ndarray, gain_db: float, *, sample_rate: int, target_lufs: float, peak_dbtp: float,
                 steps: int, slope: float = 1.0) -> tuple[float, float, bool]:
    """Secant steps on ``x`` towards the gain whose limited loudness is within a quarter tolerance of target.

    ``slope`` (LU per dB) sizes the first step. Returns the gain (the last tried one when it landed, else
    the next guess), the last slope and whether it landed.
    """
    tried: list[tuple[float, float]] = []
    for _ in range(steps):
        lufs = _limited_loudness(x, gain_db, sample_rate, peak_dbtp)
        if not math.isfinite(lufs) or abs(target_lufs - lufs) <= LEVEL_TOLERANCE_LU / 4:
            return gain_db, slope, True
        tried.append((gain_db, lufs))
        if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
            (g0, l0), (g1, l1) = tried[-2], tried[-1]
            slope = (l1 - l0) / (g1 - g0)
        # Limiting makes loudness grow slower than gain (and not always monotonically): never trust a
        # slope under 0.2 LU/dB, which would send the next try far away.
        gain_db += (target_lufs - lufs) / max(slope, 0.2)
    return gain_db, slope, False


def _fit_gain(path: Path, frames: int, gain_db: float, *, sample_rate: int, target_lufs: float,
              peak_dbtp: float) -> float:
    """The gain that lands the limited stem on the target, found on an excerpt (secant steps).

    Limiting makes loudness grow slower than gain, so the gain is searched for on at most ~2 minutes of
    excerpts (2 s out of every few seconds, spread over the whole stem), and a single full pass then
    writes the stem. The search runs first on every FIT_COARSE_EVERY-th piece of the excerpt (a few
    times cheaper per step); steps on the whole excerpt then only correct the small difference.
    """
    piece = 2 * sample_rate
    if frames <= SAMPLE_S * sample_rate:
        # A stem no longer than the excerpt is fitted on all of it (2 s pieces every 2 s would miss its tail,
        # and on a few seconds of speech one missing piece moves the loudness by more than a LU).
        parts = [block[:, :1] for block in audio_io.iter_blocks(path, piece)]
    else:
        stride = max(piece, frames * piece // (SAMPLE_S * sample_rate))
        parts = [next(audio_io.iter_blocks(path, piece, start=start, frames=piece))[:, :1]
                 for start in range(0, max(frames - piece, 1), stride)]
    excerpt = np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)
    fit = {"sample_rate": sample_rate, "target_lufs": target_lufs, "peak_dbtp": peak_dbtp}
    slope = 1.0
    if len(parts) >= 2 * FIT_COARSE_EVERY:
        coarse = np.concatenate(parts[FIT_COARSE_EVERY // 2 :: FIT_COARSE_EVERY])
        gain_db, slope, _ = _search_gain(coarse, gain_db, steps=MAX_FIT_STEPS, **fit)
    gain_db, _, _ = _search_gain(excerpt, gain_db, steps=MAX_FIT_STEPS, slope=slope, **fit)
    return gain_db


def level_stem(path: Path, analysis: _StemAnalysis, *, sample_rate: int, target_lufs: float,
               peak_dbtp: float, source: Path | None = None) -> _StemAnalysis:
    """Peak-limit a mono stem in place so that, normalized to ``target_lufs``, it peaks at ``peak_dbtp``.

    ``source`` (default ``path``) is read and the levelled stem written to ``path``. Nothing is written when
    the normalized stem already peaks below ``peak_dbtp``. The master applies
    the small remaining gain (target - measured), which fits in the headroom left above ``peak_dbtp``.
    Returns the analysis of the stem as it now is (measured on the limited blocks as they are written;
    stems over 2 minutes as two stretches at once, the later one's limiter started LIMITER_PREROLL_S early).
    """
    gain_db = target_lufs - analysis.lufs
    if analysis.true_peak_db is None:
        raise ValueError("level_stem needs an analysis with the true peak measured")
    if not math.isfinite(analysis.lufs) or analysis.true_peak_db + gain_db <= peak_dbtp:
        return analysis
    source = path if source is None else source
    gain_db = _fit_gain(source, analysis.frames, gain_db, sample_rate=sample_rate, target_lufs=target_lufs,
                        peak_dbtp=peak_dbtp)
    info = audio_io.read_info(source)
    stretches = _stem_stretches(info)
    params = limiter.LimiterParams(sample_rate=sample_rate, ceiling_dbtp=peak_dbtp)
    gain = np.float32(10 ** (gain_db / 20))
    leveled = path.with_name(f"{path.stem}.leveled.wav")
    with audio_io.StemCanvas(leveled, frames=info.frames, sample_rate=sample_rate) as canvas:
        measured = parts.run(lambda s: _level_stretch(source, info, s, canvas, params, gain), stretches,
                             name="level")
    leveled.replace(path)
    return _joined(stretches, measured, sample_rate, true_peak=False)


def _level_stretch(path: Path, info: audio_io.AudioInfo, stretch: parts.Stretch, canvas: audio_io.StemCanvas,
                   params: limiter.LimiterParams, gain: np.float32) -> tuple[parts.Measured, np.ndarray]:
    """Limit ``stretch`` of the stem into ``canvas``; meter it (from its pre-roll) and flag its speech."""
    sr, start, stop = info.sample_rate, stretch.start, stretch.stop
    first = start - min(start, LIMITER_PREROLL_S * sr)  # the limiter settles before the cut
    last = stop >= info.frames
    feed_end = info.frames if last else min(info.frames, stop + limiter.limiter_latency(params))
    meter_from = start - stretch.preroll
    state = limiter.limiter_init(params, 1)
    meter = loudness.meter_init(sr, 1, weights=_HEARD_WEIGHTS)
    hops = _Hops(sr)
    pos = first  # frame of the next output sample (the limiter's output keeps its input's timing)

    def emit(out: np.ndarray) -> None:
        nonlocal pos, meter
        lo, hi = max(pos, meter_from), min(pos + len(out), stop)
        if hi > lo:
            meter = loudness.meter_update(meter, out[lo - pos:hi - pos])
        lo = max(pos, start)
        if hi > lo:
            canvas.write_at(lo, out[lo - pos:hi - pos])
            hops.add(out[lo - pos:hi - pos])
        pos += len(out)

    for block in audio_io.iter_blocks(path, STEM_BLOCK_FRAMES, start=first, frames=feed_end - first):
        out, state = limiter.limiter_process(state, block[:, :1] * gain)
        emit(out)
    if last:
        out, state = limiter.limiter_flush(state)
        emit(out)
    return parts.Measured(meter, 0.0, max(0, min(pos, stop) - start)), hops.result()


def _trim_and_fade(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Trim provider lead/tail silence consistently and fade the edges so joins cannot click."""
    x = samples.reshape(len(samples), -1)[:, :1]
    if len(x) == 0:
        return x.astype(np.float32)
    peak = float(np.max(np.abs(x)))
    if peak > 0:
        loud = np.flatnonzero(np.abs(x[:, 0]) > peak * 10 ** (TRIM_THRESHOLD_DB / 20))
        keep = int(TRIM_KEEP_S * sample_rate)
        x = x[max(0, loud[0] - keep): min(len(x), loud[-1] + 1 + keep)]
    n = min(int(EDGE_FADE_S * sample_rate), len(x) // 2)
    if n:
        ramp = np.sin(np.linspace(0.0, np.pi / 2, n, dtype=np.float32)) ** 2
        x = x.copy()
        x[:n, 0] *= ramp
        x[-n:, 0] *= ramp[::-1]
    return x.astype(np.float32, copy=False)


def _measure_stem(
    path: Path, choice: VoiceChoice, *, sample_rate: int, characters: int, chunks: int, warnings: tuple[str, ...],
    target_lufs: float, peak_dbtp: float, source: Path | None = None, max_duration_s: float | None = None,
) -> VoiceStem:
    """Analyse the stem, level it (see :func:`level_stem`) and save what the master needs beside it.

    With ``source`` (a file that reads as the stem, see ``audio_io.reads_as_stem``) the stem at ``path`` is
    made from it: levelled, or copied when it needs no levelling.
    """
    allocator.keep_block_buffers()
    read = path if source is None else source
    analysis = level_stem(path, _analyse(read, sample_rate), sample_rate=sample_rate, target_lufs=target_lufs,
                          peak_dbtp=peak_dbtp, source=read)
    if not path.exists():  # ``source`` needed no levelling: the stem is a copy of it
        audio_io.decode_to_wav(read, path, sample_rate=sample_rate, channels=1, max_duration_s=max_duration_s)
    measured, activity, frames = analysis.lufs, analysis.activity, analysis.frames
    hop = int(round(HOP_S * sample_rate))
    if not math.isfinite(measured):
        raise InvalidAudio(f"the voice stem is silent ({choice.provider}:{choice.voice} returned no audible speech)")
    analysis_path = path.with_name("voice_analysis.npz")
    # The gating blocks the stem's own loudness counted: the delivered file's "speech loudness" is
    # measured over the same moments, so it compares like with like against the target.
    np.savez(analysis_path, activity=activity, speech_blocks=analysis.speech_blocks)
    return VoiceStem(
        path=str(path),
        analysis_path=str(analysis_path),
        sample_rate=sample_rate,
        frames=frames,
        hop_frames=hop,
        measured_lufs=round(measured, 3),
        speech_s=round(float(activity.sum()) * hop / sample_rate, 2),
        provider=choice.provider,
        voice=choice.voice,
        model=choice.model,
        characters=characters,
        chunks=chunks,
        warnings=warnings,
    )
