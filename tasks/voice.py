"""The voice track on Prefect: one task per TTS chunk, cached by content hash, bounded per provider.

* Cache: the chunk task's cache key is the chunk's content hash (``mindscript.tts.cache.cache_key``) plus the
  audio store's identity; its cached result is a small ``ChunkRef``, the audio lives in the content-addressed
  store (a local directory, or an S3 bucket from a prefect-aws ``S3Bucket`` block). The task also looks in the
  store before calling the provider, so audio that is already stored is never billed again even when
  Prefect's own record is gone.
* Two renders of one script at once: SERIALIZABLE isolation with a lock manager (file locks in the cache
  directory; Redis via prefect-redis when REDIS_URL is set, for workers on different hosts), so the second
  waits on the first's lock and then reads its record (or the shared store) instead of synthesizing again.
  Both kinds of lock expire, so a worker killed while holding one cannot block that chunk for ever: a file lock
  whose holder process on this host is gone is taken over at once, a Redis lock lapses within its renewed
  lease (REDIS_LOCK_LEASE_S).
* Concurrency: chunk tasks are submitted together; a provider request holds a slot of the Prefect global
  concurrency limit ``tts-<provider>`` (OpenAI, ElevenLabs), which this module creates or resizes to
  TTS_CONCURRENCY_<NAME> when a render starts, so the bound holds across every worker process on that
  Prefect API (the vendor's limit is per account, not per process). A per-process semaphore of the same size
  is taken first: waiting threads do not poll the API, and it is the whole bound when TTS_GLOBAL_LIMITS is
  off, when the API cannot create limits, or when an operator deleted or deactivated the limit. The local
  voice (CPU-bound, per machine) has only the semaphore. Results are collected in submission order.
* Retries: TTS_RETRIES (3) with exponential backoff and jitter, only for ``TransientError`` (the SDK clients
  never retry by themselves).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy, CachePolicy
from prefect.locking.filesystem import FileSystemLockManager
from prefect.tasks import exponential_backoff
from prefect.transactions import Transaction

from mindscript import voice as voice_mod
from mindscript.errors import RenderError
from mindscript.services import build_tts_factories, default_voice
from mindscript.settings import Settings, get_settings
from mindscript.tts.cache import AudioStore, ChunkRef, LocalAudioStore, S3AudioStore, fetch_or_synthesize
from mindscript.voice import ChunkSpec, VoiceChoice, VoiceStem

__all__ = ["audio_store", "ensure_provider_limit", "provider_slot", "synthesize_chunk", "synthesize_chunks",
           "voice_track"]

log = logging.getLogger(__name__)

_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


# Vendors whose concurrency is an account-wide quota: bounded across workers. espeak-ng runs on this CPU.
GLOBAL_LIMIT_PROVIDERS = ("openai", "elevenlabs")
# Prefect's minimum. The holder renews the lease while the request runs; a killed worker's slot comes back
# within this long.
LEASE_S = 60.0
# The slot of a killed worker comes back only when the server's repossessor revokes its expired lease, and an
# ephemeral server (the CLI's, the test harness) runs no repossessor: its slots stay taken for good. Waiting
# longer than this for a slot means that happened; the request then goes ahead under the per-process bound
# instead of hanging the render (the soak, bench/soak.py, saw four renders hang on two leaked slots).
SLOT_WAIT_S = 2 * LEASE_S
_LIMITS: dict[tuple[str, str], int] = {}  # (Prefect API, limit name) -> size this process made sure of
_LIMITS_FAILED: dict[tuple[str, str], float] = {}  # -> when the API last refused (asked again a minute later)
_LIMITS_LOCK = threading.Lock()


def _gate(provider: str, size: int) -> threading.BoundedSemaphore:
    with _SEMAPHORES_LOCK:
        return _SEMAPHORES.setdefault((provider, size), threading.BoundedSemaphore(size))


def limit_name(provider: str) -> str:
    """The Prefect global concurrency limit that bounds ``provider``'s requests across workers."""
    return f"tts-{provider}"


def ensure_provider_limit(settings: Settings, provider: str) -> str | None:
    """Create the global concurrency limit ``tts-<provider>`` or resize it to TTS_CONCURRENCY_<PROVIDER>.

    Idempotent and cheap after the first call in a process (remembered per API and size). Returns the limit's
    name, or None when the provider is not bounded globally (local voice, TTS_GLOBAL_LIMITS off) or the API
    refused (the per-process semaphore is then the only bound, with a warning).
    """
    if not settings.tts_global_limits or provider not in GLOBAL_LIMIT_PROVIDERS:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL

    name, size = limit_name(provider), settings.tts_concurrency(provider)
    memo = (str(PREFECT_API_URL.value() or "ephemeral"), name)
    with _LIMITS_LOCK:
        if _LIMITS.get(memo) == size:
            return name
        if time.monotonic() - _LIMITS_FAILED.get(memo, -LEASE_S) < LEASE_S:
            return None
        try:
            with get_client(sync_client=True) as client:
                try:
                    client.upsert_global_concurrency_limit_by_name(name, size)
                except ObjectAlreadyExists:  # another worker created it between our read and create
                    client.upsert_global_concurrency_limit_by_name(name, size)
        except Exception as exc:  # noqa: BLE001 - an API without global limits, or unreachable: degrade, say so
            log.warning("could not create or resize the Prefect global concurrency limit %r (%s: %s); %s "
                        "requests are bounded per worker process only (TTS_CONCURRENCY_%s=%d)", name,
                        type(exc).__name__, exc, provider, provider.upper(), size)
            _LIMITS_FAILED[memo] = time.monotonic()
            return None
        _LIMITS[memo] = size
        log.info("Prefect global concurrency limit %r is %d (TTS_CONCURRENCY_%s)", name, size, provider.upper())
        return name


@contextmanager
def provider_slot(provider: str, settings: Settings) -> Iterator[None]:
    """Held around one provider request: this process's semaphore, then a slot of ``tts-<provider>``.

    Released in reverse order, so within one process the global slot is free again before the next local
    waiter asks for it (a single worker never waits on the API). If the slot cannot be had (API error), the
    request goes ahead under the semaphore alone rather than failing a billed render on bookkeeping.
    """
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    with _gate(provider, settings.tts_concurrency(provider)), ExitStack() as stack:
        name = ensure_provider_limit(settings, provider)
        if name is not None:
            try:
                stack.enter_context(concurrency(name, occupy=1, lease_duration=LEASE_S, holder=_holder(),
                                                timeout_seconds=SLOT_WAIT_S))
            except (ConcurrencySlotAcquisitionError, TimeoutError) as exc:
                log.warning("no slot of global concurrency limit %r (%s); sending under the per-process "
                            "bound only", name, str(exc) or f"none free within {SLOT_WAIT_S:g} s")
        yield


def _holder() -> Any:
    """This task run as the lease holder (shown by Prefect against the limit's active slots)."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return ConcurrencyLeaseHolder(type="task_run", id=ctx.task_run.id) if ctx is not None else None


def audio_store(settings: Settings) -> AudioStore:
    """The TTS audio store: the S3 bucket of TTS_CACHE_S3_BLOCK when set, else TTS_CACHE_DIR."""
    if settings.tts_cache_s3_block:
        from prefect_aws import S3Bucket

        block: Any = S3Bucket.load(settings.tts_cache_s3_block, _sync=True)
        client = block.credentials.get_s3_client()
        return S3AudioStore(client, block.bucket_name, block.bucket_folder or "tts-cache")
    return LocalAudioStore(settings.tts_cache_dir)


_HOST = socket.gethostname()


def _process_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the parenthesised command name


def _process_gone(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return started is not None and _process_started(pid) not in (None, started)


class _ExpiringFileLocks(FileSystemLockManager):
    """File locks that expire, and that a dead holder on this host gives up at once.

    A render killed while holding a chunk's lock (SIGKILL, OOM) would otherwise block every render of that chunk
    until the hold timeout (minutes). Each lock file also records the holder's host, pid and process start
    time; a waiter on the same host that finds that process gone removes the lock. Holders on other hosts
    (a TTS_CACHE_DIR shared over a network file system) are left to the expiry.
    """

    def __init__(self, lock_files_directory: Path, hold_timeout: float) -> None:
        super().__init__(lock_files_directory=lock_files_directory)
        self.default_hold_timeout = hold_timeout

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout or self.default_hold_timeout)
        if acquired:
            self._stamp(key)
        return acquired

    def _stamp(self, key: str) -> None:
        """Add this process to the lock file Prefect wrote (replaced whole: a reader never sees half of it)."""
        info = self._locks.get(key)
        if info is None:
            return
        path = Path(self._lock_path_for_key(key))
        expiration = info.get("expiration")
        data = {"holder": info["holder"], "expiration": str(expiration) if expiration is not None else None,
                "host": _HOST, "pid": os.getpid(), "started": _process_started(os.getpid())}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        info = self._get_lock_info(key, use_cache=use_cache)
        if info is None:
            return False
        if info.get("host") == _HOST and isinstance(info.get("pid"), int) and info["pid"] != os.getpid() \
                and _process_gone(info["pid"], info.get("started")):
            log.warning("TTS chunk lock %s: its holder (pid %s) has exited without releasing it; taking it over",
                        key, info["pid"])
            Path(info["path"]).unlink(missing_ok=True)
            self._locks.pop(key, None)
            return False
        return super().is_locked(key, use_cache=True)  # the expiry check, on the info just read (no second read)

    def _get_lock_info(self, key: str, use_cache: bool = True) -> Any:
        # Prefect creates the lock file and then writes it: a reader in between sees an empty file and the
        # JSON parse fails. Read again after a moment instead of failing the chunk.
        for _ in range(100):
            try:
                return super()._get_lock_info(key, use_cache)
            except ValueError:
                time.sleep(0.01)
        return super()._get_lock_info(key, use_cache)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        acquired = await super().aacquire_lock(key, holder, acquire_timeout,
                                               hold_timeout or self.default_hold_timeout)
        if acquired:
            self._stamp(key)
        return acquired


# A Redis chunk lock is taken for this long and renewed by its process while held: a holder that is killed
# (SIGKILL, OOM, a lost host) gives the lock up within it, not after the whole hold timeout.
REDIS_LOCK_LEASE_S = 15.0


class _LeaseRenewer:
    """One daemon thread per lock manager and process that renews the leases of the locks it holds.

    Each lock is renewed every lease/3 (Redis PEXPIRE, only while the key still holds this holder's token)
    until it is released or its hold deadline passes; after the deadline it lapses within one lease, so a holder
    that hangs cannot keep a chunk for longer than the hold timeout either.
    """

    def __init__(self, client: Any, lease_s: float) -> None:
        self._client, self._lease_s = client, lease_s
        self._held: dict[str, tuple[str, float]] = {}  # lock name -> (token, monotonic deadline)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, name: str, token: str, hold_s: float) -> None:
        with self._lock:
            self._held[name] = (token, time.monotonic() + hold_s)
            # the thread never ends, except in a forked child, where the parent's is not alive
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tts-lock-leases", daemon=True)
                self._thread.start()

    def discard(self, name: str) -> None:
        with self._lock:
            self._held.pop(name, None)

    def _run(self) -> None:
        from redis.exceptions import LockError, RedisError
        from redis.lock import Lock

        while True:
            time.sleep(self._lease_s / 3)
            with self._lock:
                held = list(self._held.items())
            now = time.monotonic()
            for name, (token, deadline) in held:
                if now >= deadline:
                    log.warning("TTS chunk lock %s: held past its hold timeout; no longer renewed", name)
                    self.discard(name)
                    continue
                lock = Lock(self._client, name, timeout=self._lease_s, thread_local=False)
                lock.local.token = token.encode()
                try:
                    lock.reacquire()
                except LockError:  # lapsed (the process stalled past a lease) and maybe taken by another
                    log.warning("TTS chunk lock %s: lost before it was released (lease lapsed)", name)
                    self.discard(name)
                except RedisError as exc:  # try again next round; the lease covers two more
                    log.warning("TTS chunk lock %s: renewing failed (%s)", name, type(exc).__name__)


def _expiring_redis_locks(connection_url: str, hold_timeout: float, lease_s: float = REDIS_LOCK_LEASE_S) -> Any:
    from prefect_redis import RedisLockManager

    class ExpiringRedisLocks(RedisLockManager):
        """prefect-redis locks that expire: taken for ``lease_s`` and renewed while held, for at most the hold
        timeout (Prefect passes none: a plain lock would never expire, and one taken for the whole hold timeout
        would outlive a killed holder by minutes)."""

        _leases: _LeaseRenewer | None = None

        def _renewer(self) -> _LeaseRenewer:
            if self._leases is None:
                self._leases = _LeaseRenewer(self.client, lease_s)
            return self._leases

        def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                         hold_timeout: float | None = None) -> bool:
            acquired = super().acquire_lock(key, holder, acquire_timeout, lease_s)
            if acquired:
                self._renewer().add(self._lock_name_for_key(key), holder, hold_timeout or hold_timeout_default)
            return acquired

        async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                                hold_timeout: float | None = None) -> bool:
            acquired = await super().aacquire_lock(key, holder, acquire_timeout, lease_s)
            if acquired:
                self._renewer().add(self._lock_name_for_key(key), holder, hold_timeout or hold_timeout_default)
            return acquired

        def release_lock(self, key: str, holder: str) -> None:
            self._renewer().discard(self._lock_name_for_key(key))
            super().release_lock(key, holder)

        def __reduce__(self) -> Any:  # a class made here: pickle it by how it is made
            return _expiring_redis_locks, (connection_url, hold_timeout, lease_s)

    hold_timeout_default = hold_timeout
    return ExpiringRedisLocks(connection_url=connection_url)


_REDIS_LOCKS: dict[tuple[str, float], Any] = {}


def _lock_manager(settings: Settings) -> Any:
    # Long enough for every attempt of one chunk, with their backoff.
    hold = (settings.tts_timeout_s + settings.tts_retry_delay_s * 8) * (settings.tts_retries + 1)
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        with _SEMAPHORES_LOCK:  # one manager (one connection pool) per Redis and hold time in this process
            if (url, hold) not in _REDIS_LOCKS:
                _REDIS_LOCKS[(url, hold)] = _expiring_redis_locks(url, hold)
            return _REDIS_LOCKS[(url, hold)]
    return _ExpiringFileLocks(settings.tts_cache_dir / ".locks", hold)


def chunk_cache_policy(settings: Settings, store: AudioStore) -> CachePolicy:
    """Key = chunk content hash + store identity; SERIALIZABLE, so concurrent renders synthesize a chunk once."""
    store_tag = hashlib.sha256(store.identity.encode()).hexdigest()[:12]

    def key_fn(context: Any, parameters: dict[str, Any]) -> str:
        return f"{parameters['spec'].key}-{store_tag}"

    return CacheKeyFnPolicy(cache_key_fn=key_fn).configure(
        key_storage=settings.tts_cache_dir / ".records", lock_manager=_lock_manager(settings),
        isolation_level="SERIALIZABLE",
    )


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    from tasks.render import retry_transient as condition

    return condition(task, task_run, state)


@task(name="tts-chunk", task_run_name="tts-{spec.provider}-{spec.index}", persist_result=True)
def synthesize_chunk(spec: ChunkSpec) -> ChunkRef:
    """One chunk: from the audio store if present, else one provider request (bounded per provider)."""
    settings = get_settings()
    store = audio_store(settings)
    factories = build_tts_factories(settings)
    provider = factories[spec.provider]()
    try:
        return fetch_or_synthesize(store, spec.key, provider, spec.request, spec.audio_format,
                                   gate=provider_slot(spec.provider, settings))
    finally:
        close = getattr(provider, "close", None)
        if close is not None:
            close()


def synthesize_chunks(specs: Sequence[ChunkSpec], settings: Settings, *,
                      on_done: Callable[[int, int], None] | None = None) -> list[ChunkRef]:
    """Submit every chunk at once; return their refs in plan order (cache hits marked ``cached``).

    Raises the first chunk's error (in plan order) after every chunk has finished, so no submitted task is
    left running when the caller falls back to another provider.
    """
    store = audio_store(settings)
    for provider in {spec.provider for spec in specs}:
        ensure_provider_limit(settings, provider)  # at render start, before any chunk waits for a slot
    configured = synthesize_chunk.with_options(
        cache_policy=chunk_cache_policy(settings, store),
        result_serializer="json",
        retries=settings.tts_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.tts_retry_delay_s)(settings.tts_retries)
        if settings.tts_retries else 0,
        retry_jitter_factor=0.5 if settings.tts_retry_delay_s else None,
        retry_condition_fn=retry_transient,
    )
    # Each chunk commits its own cache record and releases its own lock as soon as it finishes. Submitted
    # from inside generate-voice, the chunk transactions would otherwise become children of that task's
    # transaction: records and locks deferred to its end, and one failed chunk rolling back (and
    # unlocking) its running siblings. The task runner copies the context at submit time, so detaching
    # the active transaction around the submits is enough.
    # Chunks whose audio is already stored need no task at all (a re-render costs a few reads); the rest
    # go through the locked, cached task. A script that repeats itself has chunks with one key: one task.
    by_key: dict[str, ChunkRef] = {}
    for spec in specs:
        if spec.key not in by_key and (size := store.size(spec.key)) is not None:
            fmt = spec.audio_format
            by_key[spec.key] = ChunkRef(key=spec.key, fmt=fmt.fmt, sample_rate=fmt.sample_rate,
                                        channels=fmt.channels, characters=len(spec.request.text), size=size,
                                        cached=True)
    unique = list({spec.key: spec for spec in specs if spec.key not in by_key}.values())
    token = Transaction.__var__.set(None)  # type: ignore[arg-type]
    try:
        futures = [configured.submit(spec) for spec in unique]
    finally:
        Transaction.__var__.reset(token)
    error: BaseException | None = None
    for done, (spec, future) in enumerate(zip(unique, futures, strict=True), start=1):
        future.wait()
        state = future.state
        value = future.result(raise_on_failure=False)
        if isinstance(value, BaseException):
            error = error or value
            continue
        ref = value if isinstance(value, ChunkRef) else ChunkRef(**value)
        if state.name == "Cached" and not ref.cached:  # Prefect's record: no provider request this time
            ref = replace(ref, cached=True)
        by_key[spec.key] = ref
        if on_done:
            on_done(done, len(futures))
    if error is not None:
        raise error
    refs: list[ChunkRef] = []
    for spec in specs:  # plan order; a repeated chunk is a cache hit after its first use
        ref = by_key[spec.key]
        refs.append(ref)
        by_key[spec.key] = replace(ref, cached=True)
    return refs


def voice_track(job: Any, settings: Settings, workspace: Path, choice: VoiceChoice, *,
                on_progress: Callable[[float, str], None] | None = None) -> VoiceStem:
    """The whole voice track from ``choice``'s provider, or, if any chunk fails after its retries, from the
    first TTS_FALLBACK provider that succeeds (one voice per track: the fallback re-voices every chunk)."""
    factories = build_tts_factories(settings)
    chain = [choice] + [
        VoiceChoice(provider=name, voice=default_voice(settings, name), model=None, warnings=choice.warnings)
        for name in settings.tts_fallback_chain if name != choice.provider and name in factories
    ]
    notes: list[str] = []
    last_error: RenderError | None = None
    for attempt in chain:
        tts = factories[attempt.provider]()
        # Name the effective model (metadata, price); the audio does not change, the provider's default is it.
        attempt = replace(attempt, model=attempt.model or getattr(tts, "model", None))
        try:
            plan = voice_mod.plan_voice(job, settings, tts, attempt)
        finally:
            close = getattr(tts, "close", None)
            if close is not None:
                close()

        def done(n: int, total: int, name: str = attempt.provider) -> None:
            if on_progress:
                on_progress(0.9 * n / total, f"voice chunk {n}/{total} ({name})")

        try:
            refs = synthesize_chunks(plan.chunks, settings, on_done=done)
        except RenderError as exc:
            last_error = exc
            log.warning("voice provider %r failed: %s", attempt.provider, exc.message)
            notes.append(f"voice provider {attempt.provider!r} failed ({exc.code}: {exc.message})")
            continue
        if attempt.provider != choice.provider:
            notes.append(f"the whole voice track was re-voiced by fallback provider {attempt.provider!r} "
                         f"(voice {attempt.voice!r})")
        if on_progress:
            on_progress(0.95, "measuring the voice stem")
        return voice_mod.assemble_voice(
            plan, refs, audio_store(settings), workspace, settings, sample_rate=job.output.sample_rate,
            price_per_million=settings.tts_price_per_million(attempt.provider, attempt.model),
            warnings=notes,
        )
    assert last_error is not None
    if len(chain) > 1:
        last_error.message = "; ".join(notes)
        last_error.args = (last_error.message,)
    raise last_error
