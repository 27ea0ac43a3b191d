"""The master stage: every layer mixed, limited and encoded block by block, then verified on the file.

Memory stays flat whatever the duration: each block reads its slice of the voice stem and of the (looped)
background, synthesizes its slice of the tones, applies gains, ducking and fades, goes through the
4x-oversampled true-peak limiter and straight into the encoder. The delivered file is then decoded and
measured (integrated loudness, speech loudness, true peak, LRA); if encoding moved loudness or true peak
out of tolerance the master runs again with the measured correction (MP3 encoding typically lowers
loudness by ~0.25 LU and raises true peak by a few tenths of a dB).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mindscript import allocator, audio_io
from mindscript import parts as mparts
from mindscript.dsp import _native, ducking, envelopes, limiter, loudness, tones
from mindscript.dsp.gain import db_to_gain
from mindscript.errors import DurationTooLong, QualityCheckFailed
from mindscript.job import RenderJob
from mindscript.layers import BackgroundBed, TonePlan
from mindscript.settings import Settings
from mindscript.voice import VoiceStem

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

# Headroom the limiter keeps below the ceiling so the encoded file still meets it (MP3 overshoots).
LIMITER_MARGIN_DB = {"mp3": 0.5, "wav": 0.05}
# MP3 (LAME, 128-192 kbps) delivers about 0.25 LU less than it is fed (its low-pass and quantization
# remove energy); the master feeds it that much more, and verification catches what differs.
ENCODER_LOUDNESS_COMP_DB = {"mp3": 0.25, "wav": 0.0}
LOUDNESS_TOLERANCE_LU = 0.2  # re-master when the delivered file is further than this from the aim
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class MasterPlan:
    """Everything the master needs, in numbers and paths (small, JSON-friendly)."""

    sample_rate: int
    total_frames: int
    block_frames: int
    fmt: Literal["mp3", "wav"]
    bitrate_kbps: int
    target_lufs: float
    aim_lufs: float  # what verification holds the delivered file to: its speech loudness, or the program's
    ceiling_dbtp: float
    limiter_margin_db: float
    program_gain_db: float
    voice: VoiceStem | None
    voice_start_frame: int
    voice_gain_db: float
    bed: BackgroundBed | None
    bed_gain_db: float
    bed_fade_in_frames: int
    loop_crossfade_frames: int
    tones: tuple[TonePlan, ...]
    tone_fade_frames: int
    fade_out_frames: int
    duck_depth_db: float
    dither_seed: int
    encode_segments: int = 1  # MP3 only: segments encoded in parallel and joined at frame boundaries

    @property
    def duration_s(self) -> float:
        return self.total_frames / self.sample_rate

    @property
    def program_mode(self) -> bool:
        """No voice: the whole program is normalized to the target instead of the voice stem."""
        return self.voice is None


@dataclass(frozen=True)
class Quality:
    """Measured on the delivered (decoded) file."""

    integrated_lufs: float
    speech_lufs: float | None
    true_peak_dbtp: float
    lra_lu: float
    duration_s: float
    sample_rate: int
    channels: int
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MasterOutcome:
    plan: MasterPlan
    quality: Quality
    attempts: int
    warnings: tuple[str, ...]
    render_s: float = 0.0  # mix + limiter + encode, all attempts
    verify_s: float = 0.0  # decoding and measuring the delivered file, all attempts


def plan_master(
    job: RenderJob,
    settings: Settings,
    *,
    voice: VoiceStem | None,
    bed: BackgroundBed | None,
    tone_plans: tuple[TonePlan, ...],
    sample_rate: int,
) -> MasterPlan:
    """Place the voice, size the program and set every gain (relative to the voice, or to the target)."""
    sr = sample_rate
    requested = int(round(job.project.duration_min * 60.0 * sr))
    start = 0
    total = requested
    if voice is not None:
        step = sr // 10  # on the 100 ms loudness-step grid (a multiple of the 10 ms activity hop)
        start = int(round(settings.voice_lead_in_s * 10)) * step
        total = max(requested, start + voice.frames + int(round(settings.voice_tail_s * sr)))
    limit = settings.max_duration_minutes * 60.0
    if total / sr > limit + 1e-9:
        raise DurationTooLong(
            f"payload.projectData.durationMin: the voice needs {total / sr / 60:.1f} minutes "
            f"(lead-in {settings.voice_lead_in_s:g} s + speech {voice.duration_s if voice else 0:.0f} s + tail "
            f"{settings.voice_tail_s:g} s), over MAX_DURATION_MINUTES={settings.max_duration_minutes:g}",
            stage="MIXING_AUDIO",
        )
    layers = job.project.layers
    voice_gain = 0.0
    if voice is not None:
        voice_gain = settings.target_lufs + (layers.voice.gain_db or 0.0) - voice.measured_lufs
    bed_gain = 0.0
    if bed is not None:
        rel = layers.background.gain_db if layers.background.gain_db is not None else settings.background_rel_lu
        bed_gain = settings.target_lufs + rel - bed.measured_lufs
    fmt = job.output.format
    return MasterPlan(
        sample_rate=sr,
        total_frames=total,
        block_frames=settings.block_frames,
        fmt=fmt,
        bitrate_kbps=job.output.bitrate_kbps,
        target_lufs=settings.target_lufs,
        aim_lufs=settings.target_lufs + ((layers.voice.gain_db or 0.0) if voice is not None else 0.0),
        ceiling_dbtp=settings.true_peak_ceiling_dbtp,
        limiter_margin_db=LIMITER_MARGIN_DB[fmt],
        program_gain_db=0.0,
        voice=voice,
        voice_start_frame=start,
        voice_gain_db=voice_gain,
        bed=bed,
        bed_gain_db=bed_gain,
        bed_fade_in_frames=int(settings.background_fade_in_s * sr),
        loop_crossfade_frames=int(settings.loop_crossfade_s * sr),
        tones=tone_plans,
        tone_fade_frames=int(settings.tone_fade_s * sr),
        fade_out_frames=int(settings.program_fade_out_s * sr),
        duck_depth_db=settings.duck_depth_db,
        dither_seed=zlib.crc32(job.id.encode()),
        encode_segments=settings.encode_segments or _usable_cores(),
    )


def _usable_cores(cap: int = 8) -> int:
    """CPUs this process may run on (a container's CPU set, not the host's count), at most ``cap``: past a few
    segments the pre-roll each one encodes twice costs more than the extra encoders gain."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cap, cores))


class Mixer:
    """Produces any block of the unmastered mix (before program gain and limiter)."""

    def __init__(self, plan: MasterPlan) -> None:
        self.plan = plan
        self.duck_curve: np.ndarray | None = None
        self.speech_blocks: np.ndarray | None = None  # per 400 ms gating block of the program
        if plan.voice is not None:
            v = plan.voice
            with np.load(v.analysis_path) as analysis:
                activity, blocks = analysis["activity"], analysis["speech_blocks"]
            lead_steps = plan.voice_start_frame // (plan.sample_rate // 10)
            self.speech_blocks = np.concatenate([np.zeros(lead_steps, dtype=bool), blocks])
            if plan.bed is not None and plan.duck_depth_db > 0:
                lead = np.zeros(plan.voice_start_frame // v.hop_frames, dtype=bool)
                params = ducking.DuckParams(depth_db=plan.duck_depth_db)
                self.duck_curve = ducking.duck_curve(np.concatenate([lead, activity]), params,
                                                     v.hop_frames / v.sample_rate)
        self._voice_gain = db_to_gain(plan.voice_gain_db)
        self._bed_gain = db_to_gain(plan.bed_gain_db)
        self._voice = audio_io.FrameReader(Path(plan.voice.path), 1) if plan.voice is not None else None
        self._bed = audio_io.FrameReader(Path(plan.bed.path), 2) if plan.bed is not None else None
        if plan.bed is not None:
            length = plan.bed.frames
            self._xfade = min(plan.loop_crossfade_frames, length // 4)
            self._fade_out_curve, self._fade_in_curve = envelopes.equal_power_crossfade(self._xfade)

    def close(self) -> None:
        for reader in (self._voice, self._bed):
            if reader is not None:
                reader.close()

    def block(self, start: int, n: int) -> np.ndarray:
        p = self.plan
        voice = self._voice_block(start, n) if p.voice is not None else None
        bed = self._bed_block(start, n) if p.bed is not None else None
        bed_gain = self._bed_gain_block(start, n) if p.bed is not None else None
        fade_in, fade_out = p.tone_fade_frames, max(p.tone_fade_frames, p.fade_out_frames)
        tone_gain = None
        if p.tones and (start < fade_in or start + n > p.total_frames - fade_out):  # one fade for every tone
            tone_gain = envelopes.fade_gain(start, n, p.total_frames, fade_in, fade_out)
        if _native.lib is not None and n <= tones.CHUNK_FRAMES:  # the same sums in one pass, in C
            pairs = [tones.tone_channels(t.params, p.sample_rate, start, n) for t in p.tones]
            return _native.mix(n, voice=voice, voice_gain=np.float32(self._voice_gain), bed=bed, bed_gain=bed_gain,
                               tones=pairs, tone_gain=tone_gain)
        mix = np.empty((n, 2), dtype=np.float32)  # set whole by the first layer
        if voice is not None:
            np.multiply(voice, np.float32(self._voice_gain), out=mix)  # mono into L and R
        else:
            mix.fill(0.0)
        if bed is not None:
            bed *= bed_gain[:, None]  # a fresh block (FrameReader.read / the loop), scaled in place
            mix += bed
        if p.tones:
            tone_sum = tones.tone_block(p.tones[0].params, p.sample_rate, start, n)
            for tone in p.tones[1:]:
                tone_sum += tones.tone_block(tone.params, p.sample_rate, start, n)
            if tone_gain is not None:
                tone_sum *= tone_gain[:, None]
            mix += tone_sum
        return mix

    def _bed_gain_block(self, start: int, n: int) -> np.ndarray:
        """The bed's gain per frame: its level, fades and ducking under the voice."""
        p = self.plan
        gain = envelopes.fade_gain(start, n, p.total_frames, p.bed_fade_in_frames, p.fade_out_frames)
        gain *= np.float32(self._bed_gain)
        if self.duck_curve is not None:
            hop = p.voice.hop_frames  # type: ignore[union-attr]
            # only the stretch of the curve this block spans (interpolating the whole curve per block
            # cost more than the mix itself on long programs)
            first = max(0, min(start // hop, len(self.duck_curve) - 1))
            part = self.duck_curve[first:(start + n) // hop + 2]
            gain *= ducking.duck_gain_block(part, hop, start - first * hop, n)
        return gain

    def _voice_block(self, start: int, n: int) -> np.ndarray:
        v = self.plan.voice
        assert v is not None
        offset = start - self.plan.voice_start_frame
        if offset >= 0:
            return self._voice.read(offset, n)  # type: ignore[union-attr]  # zero past the stem's end
        out = np.zeros((n, 1), dtype=np.float32)
        lo = max(0, -offset)
        hi = min(n, v.frames - offset)
        if hi > lo:
            out[lo:hi] = self._voice.read(offset + lo, hi - lo)  # type: ignore[union-attr]
        return out

    def _bed_block(self, start: int, n: int) -> np.ndarray:
        bed = self.plan.bed
        assert bed is not None
        length, xfade = bed.frames, self._xfade
        if not bed.loop or length - xfade <= 0 or start + n <= length:
            return self._bed.read(start, n)  # type: ignore[union-attr]
        # Looped timeline: period P = length - xfade; each new cycle's first `xfade` frames cross-fade
        # (equal power) from the previous cycle's tail, so the loop point is seamless.
        period = length - xfade
        out = np.empty((n, 2), dtype=np.float32)
        filled = 0
        while filled < n:
            cycle, offset = divmod(start + filled, period)
            seg = min(n - filled, period - offset)
            part = self._bed.read(offset, seg)  # type: ignore[union-attr]
            if cycle > 0 and offset < xfade:
                m = min(seg, xfade - offset)
                tail = self._bed.read(period + offset, m)  # type: ignore[union-attr]
                part[:m] = (part[:m] * self._fade_in_curve[offset:offset + m, None]
                            + tail * self._fade_out_curve[offset:offset + m, None])
            out[filled:filled + seg] = part
            filled += seg
        return out


def _blocks(plan: MasterPlan) -> range:
    return range(0, plan.total_frames, plan.block_frames)


def measure_mix(plan: MasterPlan, mixer: Mixer, on_progress: Progress | None = None) -> float:
    """Integrated loudness of the unmastered mix (program mode sets its gain from this)."""
    meter = loudness.meter_init(plan.sample_rate, 2)
    starts = _blocks(plan)
    for i, start in enumerate(starts):
        meter = loudness.meter_update(meter, mixer.block(start, min(plan.block_frames, plan.total_frames - start)))
        if on_progress and i % 8 == 0:
            on_progress((i + 1) / len(starts), "measuring the program loudness")
    return loudness.meter_result(meter).integrated_lufs


class _Producer:
    """Mixes and limits one stretch of the program, ``[start, stop)``, block by block.

    The limiter starts cold at ``start``; a segment's encoder pre-roll (see audio_io.plan_mp3_segments)
    is longer than the limiter's memory, so from the join on its output equals a single pass's.
    """

    def __init__(self, plan: MasterPlan, mixer: Mixer, start: int, stop: int) -> None:
        ceiling = plan.ceiling_dbtp - plan.limiter_margin_db
        params = limiter.LimiterParams(sample_rate=plan.sample_rate, ceiling_dbtp=ceiling)
        self._lim = limiter.limiter_init(params, 2)
        self._mixer, self._plan = mixer, plan
        self._gain = np.float32(db_to_gain(plan.program_gain_db))
        self.start, self.stop = start, stop
        # Input runs past ``stop`` by the limiter's latency so the output reaches ``stop`` without a flush
        # (a flush would fade into silence that is not in the program).
        self._feed_end = min(plan.total_frames, stop + limiter.limiter_latency(params))
        self._pos = start
        self._flushed = False
        self.emitted = 0

    @property
    def done(self) -> bool:
        return self.emitted >= self.stop - self.start or self._flushed

    def next_block(self) -> np.ndarray:
        """The next block of limited output (may be empty while the limiter fills its look-ahead)."""
        want = self.stop - self.start - self.emitted
        if self._pos < self._feed_end:
            n = min(self._plan.block_frames, self._feed_end - self._pos)
            block = self._mixer.block(self._pos, n)
            block *= self._gain
            out, self._lim = limiter.limiter_process(self._lim, block)
            self._pos += n
            if self._pos >= self._feed_end and self._feed_end == self._plan.total_frames:
                tail, self._lim = limiter.limiter_flush(self._lim)
                out = np.concatenate([out, tail]) if len(tail) else out
                self._flushed = True  # nothing more can come; the encoder checks the count
        out = out[:want]
        self.emitted += len(out)
        return out


def render_pass(plan: MasterPlan, mixer: Mixer, out_path: Path, on_progress: Progress | None = None) -> None:
    """Mix, limit and encode into ``out_path``; the encoders run in other processes as blocks arrive.

    MP3 is encoded as ``plan.encode_segments`` segments at once (LAME is single-threaded) and joined at
    frame boundaries; this thread mixes the segments' blocks in turn so every encoder stays busy.
    """
    total = plan.total_frames
    if plan.fmt == "mp3":
        enc = audio_io.open_segmented_mp3(out_path, sample_rate=plan.sample_rate, total_frames=total,
                                          segments=plan.encode_segments, bitrate_kbps=plan.bitrate_kbps)
        stretches = [(s.start, s.stop) for s in enc.segments]
    else:
        enc = audio_io.open_encoder(out_path, fmt=plan.fmt, sample_rate=plan.sample_rate, channels=2,
                                    bitrate_kbps=plan.bitrate_kbps, dither_seed=plan.dither_seed)
        stretches = [(0, total)]
    producers = [_Producer(plan, mixer, a, b) for a, b in stretches]
    work = sum(b - a for a, b in stretches)
    with enc:
        write = enc.write if isinstance(enc, audio_io.SegmentedMp3Encoder) else lambda _i, b: enc.write(b)
        steps = 0
        while active := [i for i, p in enumerate(producers) if not p.done]:
            for i in active:
                out = producers[i].next_block()
                if len(out):
                    write(i, out)
            steps += 1
            if on_progress and steps % 4 == 0:
                done = sum(p.emitted for p in producers)
                on_progress(min(1.0, done / work), f"mixed {done / plan.sample_rate:.0f} s")
        if on_progress:
            on_progress(1.0, f"mixed {total / plan.sample_rate:.0f} s")


# The delivered file is measured as two stretches at once (see mindscript.parts), each at least 30 s long.
_MEASURE_PART_MIN_S = 30


def measure_file(path: Path, speech_blocks: np.ndarray | None = None, *, parts: int = 2) -> Quality:
    """Loudness, speech loudness, true peak and LRA of an encoded file, decoded block by block.

    Speech loudness is the integrated loudness over the gating blocks in which the voice stem itself was
    measured (``speech_blocks``), i.e. the voice as delivered, beds under it included. A file longer than a
    minute is measured as ``parts`` stretches at once, with the same figures as one pass.
    """
    info = audio_io.read_info(path)
    sr = info.sample_rate
    stretches = mparts.plan_stretches(info.frames, sr, parts=parts, min_s=_MEASURE_PART_MIN_S)
    results = mparts.run(lambda s: mparts.measure_stretch(path, info, s), stretches, name="measure")
    meter = mparts.join_meters(stretches, [r.meter for r in results], sr)
    frames = sum(r.frames for r in results)
    peak = max(r.peak for r in results)
    stats = loudness.meter_result(meter)
    speech = None
    if speech_blocks is not None and speech_blocks.any():
        speech = loudness.meter_result(meter, block_mask=speech_blocks).integrated_lufs
    return Quality(
        integrated_lufs=round(stats.integrated_lufs, 2),
        speech_lufs=None if speech is None or not math.isfinite(speech) else round(speech, 2),
        true_peak_dbtp=round(20 * math.log10(peak) if peak > 0 else -math.inf, 2),
        lra_lu=round(stats.lra_lu, 2),
        duration_s=round(frames / sr, 3),
        sample_rate=sr,
        channels=info.channels,
        frames=frames,
    )


def master(plan: MasterPlan, out_path: Path, *, on_mix: Progress | None = None,
           on_verify: Progress | None = None) -> MasterOutcome:
    """Render, measure the delivered file, and re-render with the measured correction if needed."""
    allocator.keep_block_buffers()
    mixer = Mixer(plan)
    try:
        return _master(plan, mixer, out_path, on_mix=on_mix, on_verify=on_verify)
    finally:
        mixer.close()


def _master(plan: MasterPlan, mixer: Mixer, out_path: Path, *, on_mix: Progress | None,
            on_verify: Progress | None) -> MasterOutcome:
    notes: list[str] = []
    if plan.program_mode:
        measured = measure_mix(plan, mixer, on_verify)
        if not math.isfinite(measured):
            raise QualityCheckFailed("the program is silent: enable at least one audible layer", stage="NORMALIZING")
        plan = dataclasses.replace(plan, program_gain_db=plan.target_lufs - measured)
    comp = ENCODER_LOUDNESS_COMP_DB[plan.fmt]
    plan = dataclasses.replace(plan, program_gain_db=plan.program_gain_db + comp)
    render_s = verify_s = 0.0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        t0 = time.perf_counter()
        render_pass(plan, mixer, out_path, on_mix)
        t1 = time.perf_counter()
        if on_verify:
            on_verify(0.5, f"measuring the delivered file (attempt {attempt})")
        quality = measure_file(out_path, mixer.speech_blocks)
        render_s, verify_s = render_s + t1 - t0, verify_s + time.perf_counter() - t1
        # Voice-anchored: the voice as delivered (beds under it included) is held to the aim; the whole
        # file's integrated figure also counts bed-only stretches and is reported, not steered.
        measured = quality.integrated_lufs if plan.program_mode or quality.speech_lufs is None else quality.speech_lufs
        error = plan.aim_lufs - measured
        over = quality.true_peak_dbtp - plan.ceiling_dbtp
        log.info("master attempt %d: %.2f LUFS (aim %.2f), true peak %.2f dBTP (ceiling %.1f)", attempt,
                 measured, plan.aim_lufs, quality.true_peak_dbtp, plan.ceiling_dbtp)
        if over <= 0 and abs(error) <= LOUDNESS_TOLERANCE_LU:
            return MasterOutcome(plan, quality, attempt, tuple(notes), round(render_s, 3), round(verify_s, 3))
        if attempt == MAX_ATTEMPTS:
            break
        plan = dataclasses.replace(
            plan,
            program_gain_db=plan.program_gain_db + error,
            limiter_margin_db=plan.limiter_margin_db + max(0.0, over + 0.1),
        )
    if over > 0:
        raise QualityCheckFailed(
            f"true peak {quality.true_peak_dbtp:.2f} dBTP stays above the {plan.ceiling_dbtp:g} dBTP ceiling "
            f"after {MAX_ATTEMPTS} attempts", stage="NORMALIZING")
    notes.append(f"delivered loudness {measured:.2f} LUFS is {error:+.2f} LU from the aim "
                 f"after {MAX_ATTEMPTS} attempts")
    return MasterOutcome(plan, quality, MAX_ATTEMPTS, tuple(notes), round(render_s, 3), round(verify_s, 3))
