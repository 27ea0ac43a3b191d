"""Warm flow-run processes: a served render starts in an interpreter that has already imported everything.

Prefect's runner starts each flow run of an in-memory flow with ``run_flow_in_subprocess``: a fresh spawned
interpreter that imports Prefect, numpy, scipy and the flow before it can do anything (1.5-3 s of a short
render on this 2-core machine, longer under load). This module keeps ``size`` spawned interpreters that
have done those imports already and wait on a pipe. When the runner asks for a process, one of them receives
the call Prefect built (the same pickled payload, environment and control-channel bootstrap) and runs it;
a replacement starts warming at once, while the render runs. Where the platform has it (Linux, macOS), the
interpreters are forked from multiprocessing's fork server, which imports everything once when the pool
starts: a replacement then costs a fork instead of 3-5 s of imports on the cores the render is using (that
contention made a served render's stages 1.6x slower than the same render called directly). Elsewhere they
are spawned and import for themselves. Each process still runs exactly one flow run and
exits, so memory is returned and a SIGKILL of a render kills only that render, as before.

The hook is the ``spawn`` context Prefect asks ``multiprocessing`` for in ``prefect.flow_engine``: only that
module's reference is replaced, by a proxy whose ``get_context("spawn").Process`` hands out warm processes.
If a future Prefect no longer builds its flow-run processes that way, the proxy is simply not used and runs
start cold, as they would without this module.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.connection
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

log = logging.getLogger("mindscript.worker")

PRELOAD = ("prefect.flow_engine", "flows.render")


def _warm_main(conn: multiprocessing.connection.Connection, preload: Sequence[str]) -> None:
    """Child: import what a render needs, then wait for one call to run (or for the pool to close)."""
    for name in preload:
        importlib.import_module(name)
    try:
        msg = conn.recv()
    except (EOFError, OSError):  # the worker went away before handing over a run
        msg = None
    conn.close()
    if msg is None:
        return
    target, args, kwargs = msg
    target(*args, **kwargs)


class WarmProcess:
    """What Prefect's runner gets instead of a fresh ``SpawnProcess``: ``start`` hands the call to a warm one.

    It exposes what the runner uses of a process (``start``, ``pid``, ``exitcode``, ``join``, ``is_alive``,
    ``terminate``, ``kill``), all delegated to the real child once started.
    """

    def __init__(self, pool: WarmPool, target: Callable[..., Any], args: tuple[Any, ...] = (),
                 kwargs: dict[str, Any] | None = None, flow_run_id: str | None = None) -> None:
        self._pool = pool
        self._call = (target, tuple(args), dict(kwargs or {}))
        self._process: multiprocessing.process.BaseProcess | None = None
        self.flow_run_id = flow_run_id

    def start(self) -> None:
        self._process = self._pool.dispatch(*self._call, flow_run_id=self.flow_run_id)

    def _require(self) -> multiprocessing.process.BaseProcess:
        if self._process is None:
            raise RuntimeError("the warm process was not started")
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode if self._process is not None else None

    def join(self, timeout: float | None = None) -> None:
        self._require().join(timeout)

    def is_alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def terminate(self) -> None:
        self._require().terminate()

    def kill(self) -> None:
        self._require().kill()


class WarmPool:
    """``size`` interpreters that have imported ``preload`` and wait for one call each."""

    def __init__(self, size: int, preload: Sequence[str] = PRELOAD) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size!r}")
        self._preload = tuple(preload)
        if "forkserver" in multiprocessing.get_all_start_methods():
            # Replacements are forked from one server process that imported ``preload`` once: a new warm
            # process costs a fork, not seconds of imports competing with the render that is running.
            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(list(self._preload))  # no effect if the server already runs
        else:
            self._ctx = multiprocessing.get_context("spawn")
        self._size = size
        self._lock = threading.Lock()
        self._idle: list[tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]] = []
        self._closed = False
        self._running: dict[str, multiprocessing.process.BaseProcess] = {}
        self.dispatched = 0
        self.cold = 0  # dispatches that found no warm process alive and had to start one
        with self._lock:
            for _ in range(size):
                self._idle.append(self._spawn())

    def _spawn(self) -> tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_warm_main, args=(child, self._preload), name="mindscript-warm")
        proc.start()
        child.close()
        return proc, parent

    def dispatch(self, target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 flow_run_id: str | None = None) -> multiprocessing.process.BaseProcess:
        """Run ``target(*args, **kwargs)`` in a warm process (warming a replacement); returns that process."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the warm pool is closed")
            while self._idle:
                proc, conn = self._idle.pop(0)
                try:
                    if proc.is_alive():
                        conn.send((target, args, kwargs))
                        conn.close()
                        break
                except (BrokenPipeError, OSError):
                    pass
                conn.close()
                proc.join(0)
            else:
                self.cold += 1
                proc, conn = self._spawn()
                conn.send((target, args, kwargs))
                conn.close()
            self.dispatched += 1
            if flow_run_id:
                self._running[flow_run_id] = proc
            while len(self._idle) < self._size:
                self._idle.append(self._spawn())
        return proc

    def running(self) -> dict[str, int]:
        """Flow run id -> pid of the renders this pool's processes are running now (for /stats and ops)."""
        with self._lock:
            for run_id in [r for r, p in self._running.items() if not p.is_alive()]:
                proc = self._running.pop(run_id)
                proc.join(0)  # reap
            return {r: p.pid for r, p in self._running.items() if p.pid is not None}

    def close(self) -> None:
        """Stop the idle interpreters (running flow runs are not touched)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _proc, conn in idle:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            conn.close()
        for proc, _ in idle:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(1)


class _WarmSpawnContext:
    def __init__(self, pool: WarmPool) -> None:
        self._pool = pool

    def Process(self, *args: Any, **kwargs: Any) -> WarmProcess:  # noqa: N802 - multiprocessing's name
        target = kwargs.pop("target", None) if not args else args[1]
        call_args = kwargs.pop("args", ())
        call_kwargs = kwargs.pop("kwargs", None)
        # run_flow_in_subprocess holds the flow run it is starting in a local: remember which process runs
        # which flow run (the payload itself is opaque pickled bytes). Absent in other callers: None.
        flow_run = sys._getframe(1).f_locals.get("flow_run")
        run_id = str(flow_run.id) if getattr(flow_run, "id", None) is not None else None
        return WarmProcess(self._pool, target, call_args, call_kwargs, flow_run_id=run_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing.get_context("spawn"), name)


class _MultiprocessingProxy(ModuleType):
    """Stands in for ``multiprocessing`` inside ``prefect.flow_engine`` only."""

    def __init__(self, pool: WarmPool) -> None:
        super().__init__("multiprocessing")
        self._warm = _WarmSpawnContext(pool)

    def get_context(self, method: str | None = None) -> Any:
        if method == "spawn":
            return self._warm
        return multiprocessing.get_context(method)

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def install(size: int) -> WarmPool | None:
    """Start a pool of ``size`` warm interpreters and route Prefect's flow-run processes through it."""
    import prefect.flow_engine as engine

    if not isinstance(getattr(engine, "multiprocessing", None), ModuleType):
        log.warning("prefect.flow_engine has no multiprocessing reference: flow runs start cold")
        return None
    pool = WarmPool(size)
    engine.multiprocessing = _MultiprocessingProxy(pool)  # type: ignore[attr-defined]
    log.info("%d warm flow-run process(es) ready to take renders", size)
    return pool


def uninstall(pool: WarmPool | None) -> None:
    """Undo :func:`install` and stop the idle interpreters."""
    import prefect.flow_engine as engine

    if isinstance(getattr(engine, "multiprocessing", None), _MultiprocessingProxy):
        engine.multiprocessing = multiprocessing  # type: ignore[attr-defined]
    if pool is not None:
        pool.close()
