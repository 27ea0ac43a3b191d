"""Build LAME 3.100's encoder library from native/lame for this machine's CPU (run by `make setup`).

    python tools/build_lame.py                 # mindscript/_native/libmp3lame.so, if missing or out of date
    python tools/build_lame.py --force         # rebuild
    LAME_MARCH=x86-64-v2 python tools/build_lame.py --out /opt/lame/libmp3lame.so   # for other machines

The lameenc wheel's LAME is built for any x86-64 CPU without LAME's SSE code; the same sources built with
``-O3``, -ffast-math's optimizations (not the flag: see flags()), ``-march=native`` and LAME's SSE paths (init_xrpow,
the FFT) encode the benchmark's 10 minutes in ~5.0 s of CPU instead of ~6.4 s here (bench/RESULTS.md), same
settings, same bitrate. mindscript/lame.py prefers this library and otherwise uses the wheel's, so a machine
without a C compiler still renders: the build then says why it was skipped and exits 0 (``--strict``: exit 1).

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


def fingerprint(cc: str, cflags: list[str]) -> str:
    h = hashlib.sha256(" ".join([cc, *cflags, platform.machine()]).encode())
    for path in [*sources(), *sorted(SOURCE.rglob("*.h"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def check(path: Path) -> str | None:
    """Why the library at ``path`` cannot be used, or None."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return f"it does not load: {exc}"
    missing = [name for name in REQUIRED if not hasattr(lib, name)]
    return f"it does not export {', '.join(missing)}" if missing else None


def build(out: Path, *, force: bool = False) -> tuple[bool, str]:
    """(built or up to date, what happened)."""
    cc = os.environ.get("CC") or "cc"
    march = os.environ.get("LAME_MARCH", "native")
    cflags = flags(march)
    stamp = out.with_name(out.name + ".build")
    want = fingerprint(cc, cflags)
    if not force and out.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return True, f"{out} is up to date"
    compiler = shlex.split(cc)
    if not compiler or shutil.which(compiler[0]) is None:
        return False, f"no C compiler (CC={cc!r}): MP3 uses the lameenc wheel's LAME"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        part = Path(tmp) / out.name
        # a compiler that does not take -march=<target> (some clang for arm64) builds for its default CPU
        for attempt in ([march, ""] if march else [""]):
            proc = subprocess.run([*compiler, *flags(attempt), *map(str, sources()), "-o", str(part), "-lm"],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                break
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            return False, f"{compiler[0]} failed (exit {proc.returncode}): {tail}\nMP3 uses the lameenc wheel's LAME"
        problem = check(part)
        if problem:
            return False, f"the built library is unusable ({problem}): MP3 uses the lameenc wheel's LAME"
        part.replace(out)
    stamp.write_text(want + "\n")
    return True, f"built {out} ({cc}, -march={attempt or 'default'})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the library")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the library cannot be built")
    args = ap.parse_args(argv)
    ok, message = build(args.out.resolve(), force=args.force)
    print(f"build_lame: {message}", file=sys.stderr if not ok else sys.stdout)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
