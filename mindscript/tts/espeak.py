"""The keyless local voice: espeak-ng through ctypes.

The library and its voice data come from the ``espeakng-loader`` wheel, so no system package is needed.
espeak-ng keeps its state in process globals and is not thread-safe, so one module-level lock covers
initialisation, voice selection and synthesis, and the library is initialised once per process.

Signatures and constants follow espeak-ng's ``speak_lib.h``:

* ``int espeak_Initialize(espeak_AUDIO_OUTPUT output, int buflength, const char *path, int options)``
  returns the sample rate (22050) or -1;
* ``void espeak_SetSynthCallback(t_espeak_callback *cb)`` with
  ``int t_espeak_callback(short *wav, int numsamples, espeak_EVENT *events)`` returning 0 to continue;
* ``espeak_ERROR espeak_SetVoiceByName(const char *name)``;
* ``espeak_ERROR espeak_SetParameter(espeak_PARAMETER parameter, int value, int relative)``;
* ``espeak_ERROR espeak_Synth(const void *text, size_t size, unsigned int position,
  espeak_POSITION_TYPE position_type, unsigned int end_position, unsigned int flags,
  unsigned int *unique_identifier, void *user_data)``.
"""

from __future__ import annotations

import array
import ctypes
import math
import sys
import threading
from pathlib import Path
from typing import Any

from mindscript.errors import InvalidJob, PermanentError, ProviderError, ProviderRejected
from mindscript.tts.base import AudioFormat, TTSAudio, TTSRequest

__all__ = ["DEFAULT_WPM", "EspeakProvider"]

# speak_lib.h values.
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # synthesize in the calling thread; audio goes to the callback
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when the data is missing
_EE_OK = 0
_ESPEAK_RATE = 1
_POS_CHARACTER = 1
_CHARS_UTF8 = 1  # and no espeakSSML (0x10): pause markers are handled by mindscript.script

# A calm meditation pace; espeak's own default is 175 words per minute.
DEFAULT_WPM = 140
_MIN_WPM, _MAX_WPM = 80, 450  # espeak-ng's accepted range for espeakRATE

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _EspeakVoice(ctypes.Structure):
    """``espeak_VOICE`` from speak_lib.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_LOCK = threading.Lock()
_engine: _Engine | None = None


class _Engine:
    """The process-wide espeak-ng instance. Only touched with ``_LOCK`` held."""

    def __init__(self) -> None:
        import espeakng_loader  # imported lazily: only the local voice needs it

        lib_path = espeakng_loader.get_library_path()
        data_path = Path(espeakng_loader.get_data_path())
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise PermanentError(f"cannot load espeak-ng from '{lib_path}': {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_EspeakVoice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_GetCurrentVoice.argtypes = []
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_EspeakVoice)

        # The path argument is the directory that *contains* espeak-ng-data.
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path.parent).encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise PermanentError(f"espeak-ng failed to initialise with data from '{data_path}'")
        self.lib = lib
        self.sample_rate = int(rate)
        self._chunks: list[bytes] = []
        # Keep a reference: ctypes frees the trampoline when the Python object dies, and the library
        # would then call into freed memory.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, numsamples: int, events: int | None) -> int:
        # wav is NULL once synthesis has finished; numsamples can be 0 for event-only calls.
        if wav and numsamples > 0:
            self._chunks.append(ctypes.string_at(wav, numsamples * ctypes.sizeof(ctypes.c_short)))
        return 0

    def _select_voice(self, voice: str) -> None:
        encoded = voice.encode("utf-8")
        if self.lib.espeak_SetVoiceByName(encoded) == _EE_OK:
            return
        # Voice files are named by their own identifiers ("en", "en-us", "en-gb-x-rp"), but callers often
        # pass a language code ("en-gb" is the language of the voice named "en"): try it as a language.
        # Only an exact language or language-region prefix counts, so unknown codes still fail.
        props = _EspeakVoice(name=None, languages=encoded, identifier=None)
        if self.lib.espeak_SetVoiceByProperties(ctypes.byref(props)) == _EE_OK and self._speaks(voice):
            return
        raise InvalidJob(f"layers.voice.voiceCode: unknown espeak-ng voice {voice!r}")

    def _speaks(self, voice: str) -> bool:
        """Whether the selected voice is for ``voice``'s primary language (guards against a fallback)."""
        current = self.lib.espeak_GetCurrentVoice()
        identifier = current.contents.identifier if current else None
        if not identifier:
            return False
        # The identifier is the voice file's path under voices/ or lang/, e.g. "gmw/en-GB-x-rp".
        language = identifier.decode("ascii", "replace").rsplit("/", 1)[-1]
        return language.lower().split("-")[0] == voice.lower().split("-")[0]

    def synthesize(self, text: str, voice: str, words_per_minute: int) -> bytes:
        """Mono s16 native-endian samples at ``self.sample_rate``."""
        self._select_voice(voice)
        status = self.lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
        if status != _EE_OK:
            raise ProviderError(f"espeak-ng rejected rate {words_per_minute!r} (status {status})")
        encoded = text.encode("utf-8")
        self._chunks = []
        try:
            status = self.lib.espeak_Synth(
                encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if status != _EE_OK:
                raise ProviderError(f"espeak-ng synthesis failed (status {status}) for {len(text)} chars")
            return b"".join(self._chunks)
        finally:
            self._chunks = []


def _get_engine() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


class EspeakProvider:
    """Local espeak-ng voice (provider name ``"local"``): no key, no network, robotic but reliable.

    Returns mono ``pcm_s16le`` at espeak-ng's native rate (22050 Hz). Safe to call from several threads:
    calls are serialised on a module-level lock because the library is process-global. The first call
    in a process is reproducible; later calls of the same text can differ by a few milliseconds because
    the synthesizer carries its glottal phase over from the previous call (only a re-initialisation
    would reset it, and the library does not support that cheaply).

    ``voice`` is an espeak-ng voice name (``"en-us"``, ``"en"``, ``"en-gb-x-rp"``, ``"en-us+f3"``) or a
    language code it has a voice for (``"en-gb"``, ``"fr"``).
    """

    name = "local"

    def __init__(self, *, words_per_minute: int = DEFAULT_WPM, max_chars_limit: int = 5000) -> None:
        self.words_per_minute = words_per_minute
        self.max_chars_limit = max_chars_limit

    # espeak-ng's native rate (espeak_Initialize returns it); checked against the engine on each call.
    audio_format = AudioFormat("pcm_s16le", 22050, 1)

    def key_params(self, request: TTSRequest) -> dict[str, object]:
        """The speaking rate shapes the audio beyond the request."""
        return {"wpm": self.words_per_minute}

    def max_chars(self, model: str | None) -> int:
        """espeak-ng has no request limit of its own; this keeps each synthesis call short."""
        return self.max_chars_limit

    def synthesize(self, request: TTSRequest) -> TTSAudio:
        """Synthesize ``request.text`` with espeak-ng voice ``request.voice`` (e.g. ``"en-us"``).

        Raises:
            InvalidJob: the voice is unknown (names ``layers.voice.voiceCode``).
            ProviderRejected: the text is longer than ``max_chars``.
        """
        voice = request.voice.strip()
        if not voice or "\0" in voice:
            raise InvalidJob(f"layers.voice.voiceCode: unknown espeak-ng voice {request.voice!r}")
        if len(request.text) > self.max_chars_limit:
            raise ProviderRejected(
                f"text of {len(request.text)} chars exceeds the local voice's limit of {self.max_chars_limit}"
            )
        if not (math.isfinite(request.speed) and request.speed > 0):
            raise ValueError(f"speed must be a positive number, got {request.speed!r}")
        wpm = min(_MAX_WPM, max(_MIN_WPM, round(self.words_per_minute * request.speed)))
        # espeak-ng stops at the first NUL; the text is plain text, nothing else needs escaping.
        text = request.text.replace("\0", " ")
        with _LOCK:
            engine = _get_engine()
            pcm = engine.synthesize(text, voice, wpm)
            rate = engine.sample_rate
        if sys.byteorder != "little":
            # The callback hands over native-endian shorts; the contract is little-endian.
            samples = array.array("h", pcm)
            samples.byteswap()
            pcm = samples.tobytes()
        return TTSAudio(data=pcm, fmt="pcm_s16le", sample_rate=rate, channels=1)
