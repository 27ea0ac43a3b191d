"""Command line for ad-hoc renders: ``python flows/render.py [JOB.json] [--output-dir DIR] [--json]``."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

DEFAULT_JOB = Path(__file__).resolve().parent.parent / "examples" / "jobs" / "sample.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python flows/render.py", description="Render a MindScript job locally.")
    p.add_argument("job", nargs="?", type=Path, default=DEFAULT_JOB, help="job JSON file (default: the sample)")
    p.add_argument("--output-dir", type=Path, help="where the local storage writes (default: STORAGE_DIR or ./output)")
    p.add_argument("--json", action="store_true", help="print the result object as the last line of stdout")
    p.add_argument("--verbose", action="store_true", help="show Prefect's run logs")
    return p


def configure_environment(argv: list[str]) -> None:
    """Environment for a local CLI render; must run before settings or Prefect are first imported."""
    args, _ = _parser().parse_known_args(argv)
    _configure(args)


def _configure(args: argparse.Namespace) -> None:
    os.environ["ALLOW_LOCAL_ASSETS"] = "true"  # local files are fine for the person at this terminal
    os.environ["ASSET_BASE_DIR"] = str(args.job.resolve().parent)
    if args.output_dir:
        os.environ["STORAGE_DIR"] = str(args.output_dir)
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Without PREFECT_API_URL Prefect starts a temporary server; its first start migrates a database.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds the flow like Ctrl-C does, so the workspace is removed on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _configure(args)
    signal.signal(signal.SIGTERM, _on_sigterm)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mindscript import result as result_mod
    from mindscript.errors import InvalidJob
    from mindscript.job import parse_job
    from mindscript.settings import get_settings

    get_settings.cache_clear()
    err = Console(stderr=True)
    out = Console(highlight=False, soft_wrap=True)

    def finish(result: dict[str, Any], code: int) -> int:
        if args.json:
            print(json.dumps(result, separators=(",", ":")), flush=True)
        return code

    try:
        raw = json.loads(args.job.read_text())
        job = parse_job(raw)
    except (OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/] cannot read job file {str(args.job)!r}: {exc}")
        return finish(result_mod.failure(InvalidJob(f"job file {str(args.job)!r}: {exc}"), stage="INITIALIZING"), 2)
    except InvalidJob as exc:
        err.print(f"[red]invalid job:[/] {exc.message}")
        return finish(result_mod.failure(exc, stage="INITIALIZING"), 2)

    from flows import render as render_mod

    bar = Progress(TextColumn("{task.description:<40}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                   TimeElapsedColumn(), console=err, transient=False)
    bar_task = bar.add_task("Starting", total=100)

    def bar_sink(event: Any) -> None:
        label = "done" if event.kind == "completed" else event.stage.value.replace("_", " ").lower()
        bar.update(bar_task, completed=event.percent, description=label)

    render_mod.EXTRA_SINKS.append(bar_sink)
    try:
        with bar:
            result = render_mod.render_job(job)
    except (Exception, KeyboardInterrupt, SystemExit) as exc:
        stage = getattr(exc, "stage", None)
        failed = result_mod.failure(exc, stage=stage)
        err.print(f"[red]render failed[/] ({failed['error']['code']} at {failed['error']['stage']}): "
                  f"{failed['error']['message']}")
        if isinstance(exc, SystemExit) and isinstance(exc.code, int):
            return finish(failed, exc.code)
        return finish(failed, 130 if isinstance(exc, KeyboardInterrupt) else 1)
    finally:
        render_mod.EXTRA_SINKS.remove(bar_sink)

    _print_summary(out, result)
    return finish(result, 0)


def _print_summary(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    data = result["data"]
    meta = data["metadata"]
    loud = meta["loudness"]
    path = data["outputUrl"].removeprefix("file://")
    t = Table(title="Render complete", show_header=False, title_justify="left")
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("output", path)
    t.add_row("duration", f"{meta['durationSeconds']:.1f} s ({meta['format']}, {meta['sampleRate']} Hz, "
                          f"{meta['channels']} ch, {meta['sizeBytes'] / 1e6:.2f} MB)")
    if loud["mode"] == "voice":
        t.add_row("loudness", f"voice {loud['speechLufs']:.1f} LUFS (target {loud['targetLufs']:g}, voice-anchored); "
                              f"whole file {loud['integratedLufs']:.1f} LUFS integrated, LRA {loud['lraLu']:.1f} LU")
    else:
        t.add_row("loudness", f"{loud['integratedLufs']:.1f} LUFS integrated (target {loud['targetLufs']:g}), "
                              f"LRA {loud['lraLu']:.1f} LU")
    t.add_row("true peak", f"{loud['truePeakDbtp']:.2f} dBTP (ceiling {loud['ceilingDbtp']:g})")
    t.add_row("layers used", ", ".join(meta["layers"]["used"]) or "-")
    t.add_row("layers skipped", "; ".join(f"{s['layer']} ({s['reason']})" for s in meta["layers"]["skipped"]) or "-")
    if meta["warnings"]:
        t.add_row("warnings", "\n".join(meta["warnings"]))
    t.add_row("timings", ", ".join(f"{k.lower()} {v:.2f}s" for k, v in meta["timings"].items()))
    console.print(t)
    console.print(f"Output: {path}")
