"""The local espeak-ng voice and the deterministic fake provider."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mindscript.audio_io import decode_bytes
from mindscript.errors import InvalidJob, ProviderError, ProviderRejected
from mindscript.tts.base import TTSAudio, TTSProvider, TTSRequest
from mindscript.tts.espeak import EspeakProvider
from mindscript.tts.fake import FakeProvider


def band_energy_ratio(x: np.ndarray, sample_rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sample_rate)
    return float(spectrum[(freqs >= lo) & (freqs <= hi)].sum() / spectrum.sum())


def as_samples(audio: TTSAudio) -> np.ndarray:
    assert audio.fmt == "pcm_s16le" and audio.channels == 1
    return decode_bytes(audio.data, sample_rate=audio.sample_rate, channels=1, fmt_hint=audio.fmt,
                        pcm_rate=audio.sample_rate)[:, 0]  # fmt: skip


def test_espeak_speaks_a_plausible_sentence() -> None:
    provider: TTSProvider = EspeakProvider()
    assert provider.name == "local"
    assert provider.max_chars(None) >= 1000
    audio = provider.synthesize(TTSRequest(text="Breathe in slowly.", voice="en-us"))
    assert audio.sample_rate == 22050
    x = as_samples(audio)
    assert 0.5 <= len(x) / audio.sample_rate <= 4.0
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert rms > 0.01  # not silence
    assert band_energy_ratio(x, audio.sample_rate, 80.0, 4000.0) > 0.8  # speech band


def test_espeak_speed_changes_duration() -> None:
    provider = EspeakProvider()
    text = "Let your shoulders soften and your breath settle into an easy rhythm."
    slow = len(provider.synthesize(TTSRequest(text, "en-us", speed=0.8)).data)
    fast = len(provider.synthesize(TTSRequest(text, "en-us", speed=1.6)).data)
    assert fast < 0.75 * slow


def test_espeak_is_safe_from_several_threads() -> None:
    provider = EspeakProvider()
    results: dict[int, TTSAudio] = {}
    errors: list[BaseException] = []

    def speak(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = provider.synthesize(TTSRequest(f"Breathe in slowly, number {i}.", "en-us"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=speak, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(results) == [0, 1]
    for audio in results.values():
        x = as_samples(audio)
        assert 0.5 <= len(x) / audio.sample_rate <= 5.0
        assert np.max(np.abs(x)) > 0.05


@pytest.mark.parametrize("voice", ["en", "en-us", "en-gb", "EN-US"])
def test_espeak_accepts_voice_names_and_language_codes(voice: str) -> None:
    audio = EspeakProvider().synthesize(TTSRequest("Hello there.", voice))
    assert len(audio.data) > 0.3 * audio.sample_rate * 2


@pytest.mark.parametrize("voice", ["zz", "xx-nope", "martian", "", "en\0us"])
def test_espeak_unknown_voice_is_invalid_job(voice: str) -> None:
    with pytest.raises(InvalidJob) as err:
        EspeakProvider().synthesize(TTSRequest("Hello.", voice))
    assert "layers.voice.voiceCode" in err.value.message
    assert repr(voice) in err.value.message
    # The engine is still usable after a refused voice.
    assert EspeakProvider().synthesize(TTSRequest("Hello.", "en-us")).data


def test_espeak_does_not_interpret_ssml() -> None:
    provider = EspeakProvider()
    plain = provider.synthesize(TTSRequest("Rest here.", "en-us"))
    tagged = provider.synthesize(TTSRequest('Rest <break time="5s"/> here.', "en-us"))
    # With SSML on, the break would add 5 s of silence.
    assert len(tagged.data) / 2 / tagged.sample_rate < len(plain.data) / 2 / plain.sample_rate + 3.0


def test_espeak_text_over_limit_is_rejected() -> None:
    with pytest.raises(ProviderRejected, match="12"):
        EspeakProvider(max_chars_limit=10).synthesize(TTSRequest("twelve chars", "en-us"))


# ------------------------------------------------------------------------------------------------ fake


def test_fake_is_deterministic_speech_like_and_counts_calls() -> None:
    fake = FakeProvider()
    request = TTSRequest(text="Breathe in slowly and let the day go." * 2, voice="nova")
    a = fake.synthesize(request)
    b = FakeProvider().synthesize(request)
    assert a == b
    assert (a.fmt, a.sample_rate, a.channels) == ("pcm_s16le", 24000, 1)
    x = as_samples(a)
    assert len(x) / 24000 == pytest.approx(len(request.text) / 14.0, rel=0.01)
    assert 0.4 < np.max(np.abs(x)) <= 0.51
    assert band_energy_ratio(x, 24000, 80.0, 4000.0) > 0.9
    # Silence gaps between words: a good share of 10 ms frames is (near) silent, most are not.
    frames = x[: len(x) // 240 * 240].reshape(-1, 240)
    quiet = np.mean(np.sqrt(np.mean(frames**2, axis=1)) < 0.01)
    assert 0.05 < quiet < 0.6
    assert fake.synthesize(TTSRequest(text="Other words.", voice="nova")) != a
    assert [c.text for c in fake.calls] == [request.text, "Other words."]


def test_fake_counts_calls_from_threads_and_raises_queued_failures() -> None:
    fake = FakeProvider(failures=[ProviderError("try again")])
    with pytest.raises(ProviderError, match="try again"):
        fake.synthesize(TTSRequest("first", "v"))
    threads = [
        threading.Thread(target=lambda i=i: fake.synthesize(TTSRequest(f"call {i}", "v"))) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.calls) == 9
    with pytest.raises(ProviderRejected):
        FakeProvider(max_chars_limit=3).synthesize(TTSRequest("four", "v"))
