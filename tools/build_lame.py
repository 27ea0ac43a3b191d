"""Build LAME 3.100's encoder library from native/lame for this machine's CPU (run by `make setup`).

    python tools/build_lame.py                 # mindscript/_native/libmp3lame.so, if missing or out of date
    python tools/build_lame.py --force         # rebuild
    LAME_MARCH=x86-64-v2 python tools/build_lame.py --out /opt/lame/libmp3lame.so   # for other machines

The lameenc wheel's LAME is built for any x86-64 CPU without LAME's SSE code; the same sources built with
``-O3``, -ffast-math's optimizations (not the flag: see flags()), ``-march=native`` and LAME's SSE paths
(init_xrpow, the FFT) encode the benchmark's 10 minutes in ~5.0 s of CPU instead of ~6.4 s here
(bench/RESULTS.md), same settings, same bitrate. Where the CPU has AVX2, LAME's quantization loop and
Huffman bit counters (takehiro.c) run in AVX2 forms of ours that give the same bits. mindscript/lame.py
prefers this library and otherwise uses the wheel's, so a machine without a C compiler still renders: the
build then says why it was skipped and exits 0 (``--strict``: exit 1).

``CC`` (default ``cc``) is the compiler, ``LAME_MARCH`` (default ``native``) the ``-march`` target: a library
built with ``native`` may not run on an older CPU, so build on (or for) the machine that renders.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "native" / "lame"
DEFAULT_OUT = ROOT / "mindscript" / "_native" / "libmp3lame.so"
# what mindscript/lame.py calls; a library without one of these is not used
REQUIRED = ("lame_init", "lame_encode_buffer_interleaved_ieee_float", "lame_get_lametag_frame", "lame_close")


def sources() -> list[Path]:
    return sorted((SOURCE / "libmp3lame").glob("*.c")) + sorted((SOURCE / "libmp3lame" / "vector").glob("*.c"))


def flags(march: str) -> list[str]:
    x86 = platform.machine().lower() in {"x86_64", "amd64", "i686", "i386"}
    # -ffast-math's parts, not the flag: with -ffast-math (or -funsafe-math-optimizations) on its command line
    # gcc links crtfastmath.o, which turns on flush-to-zero for the whole process that loads the library
    # (numpy's subnormals become 0)
    out = ["-shared", "-fPIC", "-O3", "-fno-math-errno", "-ffinite-math-only", "-fno-signed-zeros",
           "-fno-trapping-math", "-fassociative-math", "-freciprocal-math", "-fomit-frame-pointer", "-w",
           "-DHAVE_CONFIG_H",
           f"-I{SOURCE}", f"-I{SOURCE / 'include'}", f"-I{SOURCE / 'libmp3lame'}"]
    if march:
        out.append(f"-march={march}")
    if x86:
        out.append("-DMIN_ARCH_SSE")  # SSE is in every x86-64 CPU: LAME's intrinsics paths are always safe there
    return out


def fingerprint(cc: str, cflags: list[str], files: list[Path]) -> str:
    h = hashlib.sha256(" ".join([cc, *cflags, platform.machine()]).encode())
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def check(path: Path, required: tuple[str, ...] = REQUIRED) -> str | None:
    """Why the library at ``path`` cannot be used, or None."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return f"it does not load: {exc}"
    missing = [name for name in required if not hasattr(lib, name)]
    return f"it does not export {', '.join(missing)}" if missing else None


def build(out: Path, *, force: bool = False, defines: tuple[str, ...] = ()) -> tuple[bool, str]:
    """(built or up to date, what happened). ``defines`` (``NAME`` or ``NAME=value``) are passed as ``-D``:
    ``MS_SCALAR`` builds the release's loops instead of their AVX2 forms (the tests compare the two)."""
    extra = [f"-D{d}" for d in defines]
    return build_library(out, files=sources(), headers=sorted(SOURCE.rglob("*.h")),
                         flags=lambda march: [*flags(march), *extra], required=REQUIRED,
                         march=os.environ.get("LAME_MARCH", "native"), fallback="MP3 uses the lameenc wheel's LAME",
                         force=force)


def build_library(out: Path, *, files: list[Path], headers: list[Path], flags: Callable[[str], list[str]],
                  required: tuple[str, ...], march: str, fallback: str, force: bool = False) -> tuple[bool, str]:
    """Compile ``files`` into the shared library ``out`` in one compiler call, unless a stamp beside it says it
    was built from the same sources with the same compiler and flags. ``fallback`` says what runs instead
    when it cannot be built. (built or up to date, what happened)."""
    cc = os.environ.get("CC") or "cc"
    cflags = flags(march)
    stamp = out.with_name(out.name + ".build")
    want = fingerprint(cc, cflags, [*files, *headers])
    if not force and out.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return True, f"{out} is up to date"
    compiler = shlex.split(cc)
    if not compiler or shutil.which(compiler[0]) is None:
        return False, f"no C compiler (CC={cc!r}): {fallback}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        part = Path(tmp) / out.name
        # a compiler that does not take -march=<target> (some clang for arm64) builds for its default CPU
        for attempt in ([march, ""] if march else [""]):
            proc = subprocess.run([*compiler, *flags(attempt), *map(str, files), "-o", str(part), "-lm"],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                break
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            return False, f"{compiler[0]} failed (exit {proc.returncode}): {tail}\n{fallback}"
        problem = check(part, required)
        if problem:
            return False, f"the built library is unusable ({problem}): {fallback}"
        part.replace(out)
    stamp.write_text(want + "\n")
    return True, f"built {out} ({cc}, -march={attempt or 'default'})"


def command(argv: list[str] | None, *, doc: str, default_out: Path, name: str,
            build_fn: Callable[..., tuple[bool, str]]) -> int:
    """The command line of a library build: ``--out``, ``--force``, ``--strict``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=default_out, help="where to write the library")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the library cannot be built")
    args = ap.parse_args(argv)
    ok, message = build_fn(args.out.resolve(), force=args.force)
    print(f"{name}: {message}", file=sys.stderr if not ok else sys.stdout)
    return 1 if args.strict and not ok else 0


def main(argv: list[str] | None = None) -> int:
    return command(argv, doc=__doc__ or "", default_out=DEFAULT_OUT, name="build_lame", build_fn=build)


if __name__ == "__main__":
    sys.exit(main())
