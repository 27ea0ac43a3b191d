"""The one place that chooses real or local implementations for an environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mindscript.errors import PermanentError
from mindscript.settings import Settings
from mindscript.storage.base import Storage
from mindscript.tts.base import TTSProvider


def _local_tts(settings: Settings) -> TTSProvider:
    from mindscript.tts.espeak import EspeakProvider

    return EspeakProvider(words_per_minute=settings.local_voice_wpm)


@dataclass
class Services:
    storage: Storage
    tts_factories: dict[str, Callable[[], TTSProvider]] = field(default_factory=dict)

    def tts(self, name: str) -> TTSProvider:
        try:
            return self.tts_factories[name]()
        except KeyError:
            raise PermanentError(f"TTS provider {name!r} is not configured on this worker") from None

    @property
    def tts_names(self) -> set[str]:
        return set(self.tts_factories)


def build_services(settings: Settings) -> Services:
    if settings.storage_backend == "local":
        from mindscript.storage.local import LocalStorage

        storage: Storage = LocalStorage(settings.storage_dir)
    else:
        raise PermanentError(f"STORAGE_BACKEND={settings.storage_backend!r} is not available in this build")
    return Services(storage=storage, tts_factories={"local": lambda: _local_tts(settings)})
